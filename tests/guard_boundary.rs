//! The panic boundary: a hook that panics after the driver's call has returned gives the program
//! the driver's answer and never calls the driver a second time (a second allocation, or a second
//! free of a pointer another thread may already hold). The panic is made on purpose with the
//! test-only setting `VRAMGUARD_TEST_FAULT=panic-after-call:NAME`; the simulated card counts
//! every driver call the program made.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use guard_support::{CLIENT_DEADLINE, MIB, guard_lines};
use support::report::{calls, device_u64};
use support::{ClientPath, Sandbox};

const COUNT: u64 = 3;

/// Runs the directly linked client guarded, with the hook of `function` panicking after each of
/// its driver calls; returns its outcome and the card's report.
fn run_with_panic_after(function: &str) -> (support::Finished, u32, serde_json::Value) {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env(
        "VRAMGUARD_TEST_FAULT",
        &format!("panic-after-call:{function}"),
    );
    let mut command = sandbox.command(ClientPath::Direct, true);
    command.args(["--chunk", "16MiB", "--count", &COUNT.to_string()]);
    let running = support::spawn(command);
    let pid = running.pid();
    let finished = running.finish(CLIENT_DEADLINE);
    let report = sandbox.sim_report();
    (finished, pid, report)
}

/// The guard's lines about the internal error.
fn internal_errors(stderr: &str) -> Vec<&str> {
    guard_lines(stderr)
        .into_iter()
        .filter(|l| l.contains("internal error"))
        .collect()
}

#[test]
fn a_panic_after_the_allocation_returns_the_pointer_and_allocates_once() {
    let (finished, pid, report) = run_with_panic_after("cuMemAlloc_v2");
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    let summary = finished.summary();
    assert_eq!(
        (summary.ok, summary.failed, summary.bytes),
        (COUNT, 0, COUNT * 16 * MIB),
        "the program did not get its pointers: {finished:?}"
    );
    assert_eq!(
        calls(&report, pid, "cuMemAlloc_v2"),
        COUNT,
        "the driver allocated more often than the program asked: {report}"
    );
    assert_eq!(calls(&report, pid, "cuMemFree_v2"), COUNT, "{report}");
    // Every pointer the driver made was the program's, so its frees left the card empty.
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0, "{report}");
    let said = internal_errors(&finished.stderr);
    assert_eq!(said.len(), 1, "said once: {finished:?}");
    assert!(
        said[0].contains("cuMemAlloc_v2") && said[0].contains("after the driver's call"),
        "{said:?}"
    );
}

#[test]
fn a_panic_after_the_free_frees_once() {
    let (finished, pid, report) = run_with_panic_after("cuMemFree_v2");
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    let summary = finished.summary();
    assert_eq!((summary.ok, summary.failed), (COUNT, 0), "{finished:?}");
    assert_eq!(calls(&report, pid, "cuMemAlloc_v2"), COUNT, "{report}");
    assert_eq!(
        calls(&report, pid, "cuMemFree_v2"),
        COUNT,
        "the driver was asked to free a pointer twice: {report}"
    );
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0, "{report}");
    let said = internal_errors(&finished.stderr);
    assert_eq!(said.len(), 1, "said once: {finished:?}");
    assert!(
        said[0].contains("cuMemFree_v2") && said[0].contains("after the driver's call"),
        "{said:?}"
    );
}
