//! The shared-memory ledger (under construction).
