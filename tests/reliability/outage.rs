//! Store outage.
