//! How long a test waits for something that must happen (a process to start, print, hold, exit;
//! a file to appear; the ledger to show a state) before it calls it a hang. Shared by `support`
//! (`mod.rs`), the command line's `support/cli.rs` and the ledger tests' `ledger_support`, which
//! are included by different tests.
//!
//! The figure is generous on purpose: a busy machine (two cores, other builds, the rest of the
//! suite) never reaches it, so it only ends a test that would otherwise never end. No test
//! asserts how fast anything happens; the speed of the guard is measured by the benchmarks
//! (`benches/`, docs/benchmarks.md).

use std::time::Duration;

/// Past this, a wait is a hang and the test fails saying what it waited for.
pub const HANG_GUARD: Duration = Duration::from_secs(300);
