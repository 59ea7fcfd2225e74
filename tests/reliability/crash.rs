//! Crash recovery.
