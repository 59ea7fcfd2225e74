//! 99digital simulator (placeholder).
