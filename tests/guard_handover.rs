//! Turns are handed over, never left lying: on a simulated 4 GiB card, a waiter that is stopped
//! (`kill -STOP`, as Ctrl-Z, `docker pause` or a debugger do) once its turn came holds what it
//! was granted and nothing more; everyone else goes on with the rest, and the stopped one, once
//! continued, finds its memory granted and finishes.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use guard_support::{CLIENT_DEADLINE, GIB, MIB, assert_card_safe, snapshot};
use support::{ClientPath, Sandbox};
use vramguard_core::ledger::ProcessState;

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child this test started and has not reaped; no memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Waits (until the hang guard) for `pid` to be stopped: `kill` returns before the signal is
/// taken.
fn wait_until_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + CLIENT_DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name in parentheses.
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hang guard: {pid} did not stop"
        );
        std::thread::yield_now();
    }
}

/// The waiter's standing as the ledger shows it.
fn waiter_state(sandbox: &Sandbox, pid: u32) -> Option<ProcessState> {
    guard_support::process(&snapshot(sandbox), pid).map(|p| p.state.clone())
}

#[test]
fn a_stopped_waiter_holds_only_its_grant_and_blocks_nobody() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let release = sandbox.go_file("holder");
    // The holder: 3 GiB (and its context) until the go file.
    let holder = sandbox.start_holder(ClientPath::Direct, true, "3GiB", &release);

    // The waiter: 1 GiB under `wait`, which does not fit beside the holder.
    let mut waiter = sandbox.command(ClientPath::Direct, true);
    waiter
        .args(["--chunk", "1GiB", "--count", "1"])
        .env("VRAMGUARD_POLICY", "wait")
        .env("VRAMGUARD_WAIT_TIMEOUT", guard_support::hang_wait_timeout());
    let mut waiter = support::spawn(waiter);
    waiter.wait_for_stderr_line("vramguard: waiting for 1.00 GiB", CLIENT_DEADLINE);
    let waiter_pid = waiter.pid();
    assert!(
        matches!(
            waiter_state(&sandbox, waiter_pid),
            Some(ProcessState::Waiting { bytes, .. }) if bytes == GIB
        ),
        "{:?}",
        snapshot(&sandbox)
    );

    // Stopped, then the holder leaves: its release hands the waiter's turn over in the ledger.
    signal(waiter_pid, libc::SIGSTOP);
    wait_until_stopped(waiter_pid);
    assert!(
        matches!(
            waiter_state(&sandbox, waiter_pid),
            Some(ProcessState::Waiting { bytes, .. }) if bytes == GIB
        ),
        "stopped while it waits: {:?}",
        snapshot(&sandbox)
    );
    release.go();
    let holder = holder.finish(CLIENT_DEADLINE);
    assert_eq!(holder.status.code(), Some(0), "{holder:?}");
    let ledger = snapshot(&sandbox);
    let stopped = guard_support::process(&ledger, waiter_pid).expect("the waiter is a member");
    assert_eq!(stopped.state, ProcessState::Running, "{ledger:?}");
    assert!(
        stopped.devices.iter().any(|d| d.reserved == GIB),
        "the stopped waiter was granted its 1 GiB: {ledger:?}"
    );
    assert_eq!(ledger.devices[0].waiting, 0, "{ledger:?}");

    // A newcomer under `deny` fits beside it: admitted, although the waiter has not run.
    let mut newcomer = sandbox.command(ClientPath::Direct, true);
    newcomer
        .args(["--chunk", "500MiB", "--count", "1"])
        .env("VRAMGUARD_POLICY", "deny");
    let newcomer = support::spawn(newcomer).finish(CLIENT_DEADLINE);
    assert_eq!(newcomer.status.code(), Some(0), "{newcomer:?}");
    assert_eq!(newcomer.summary().ok, 1, "{newcomer:?}");

    // Continued, the waiter finds its 1 GiB granted, takes it from the driver and finishes.
    signal(waiter_pid, libc::SIGCONT);
    let waiter = waiter.finish(CLIENT_DEADLINE);
    assert_eq!(waiter.status.code(), Some(0), "{waiter:?}");
    assert_eq!(waiter.summary().ok, 1, "{waiter:?}");
    let ledger = snapshot(&sandbox);
    assert!(
        ledger.devices.iter().all(|d| d.used == 0 && d.waiting == 0),
        "nothing stays charged: {ledger:?}"
    );
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
    assert!(report["devices"][0]["peak_bytes"].as_u64().unwrap() <= 4 * GIB - 256 * MIB);
}

/// A waiter that waits only for the driver is no party to a deadlock: its request fits the
/// ledger, but the card is short because of memory the ledger does not hold (here an unguarded
/// program's; a dead process's memory that the driver has not freed yet looks the same). Behind
/// another waiter whose need does not fit, every holder of the card is queued; the line is stuck
/// for good, and the request that fits goes first instead of being refused as the latest waiter
/// of a deadlock. Once the card has the memory, it finishes, and the other one after it.
#[test]
fn a_waiter_that_waits_only_for_the_driver_is_not_taken_for_a_deadlock_party() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    // 1 GiB (and a context) on the card that the ledger does not know of.
    let outside = sandbox.go_file("outside");
    let unguarded = sandbox.start_holder(ClientPath::Direct, false, "1GiB", &outside);

    // The first waiter holds 1 GiB and pauses before its second 1 GiB.
    let resume = sandbox.go_file("resume");
    let mut first = sandbox.command(ClientPath::Direct, true);
    first
        .args([
            "--chunk",
            "1GiB",
            "--count",
            "2",
            "--pause-before-chunk",
            "2",
        ])
        .args(["--resume-file", resume.arg()])
        .env("VRAMGUARD_POLICY", "wait")
        .env("VRAMGUARD_WAIT_TIMEOUT", guard_support::hang_wait_timeout());
    let mut first = support::spawn(first);
    first.wait_for_line("paused", CLIENT_DEADLINE);

    // The second waits in the ledger for 2.5 GiB: it does not fit beside the first.
    let mut second = sandbox.command(ClientPath::Direct, true);
    second
        .args(["--chunk", "2.5GiB", "--count", "1"])
        .env("VRAMGUARD_POLICY", "wait")
        .env("VRAMGUARD_WAIT_TIMEOUT", guard_support::hang_wait_timeout());
    let mut second = support::spawn(second);
    second.wait_for_stderr_line("vramguard: waiting for 2.50 GiB", CLIENT_DEADLINE);

    // The first asks its second 1 GiB: the ledger has it (2.15 GiB free under the budget), the
    // card does not (0.85 GiB beyond the reserve): it waits for the driver.
    resume.go();
    first.wait_for_stderr_line("the driver reports only", CLIENT_DEADLINE);
    outside.go();
    let unguarded = unguarded.finish(CLIENT_DEADLINE);
    assert_eq!(unguarded.status.code(), Some(0), "{unguarded:?}");

    let first = first.finish(CLIENT_DEADLINE);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(first.summary().ok, 2, "{first:?}");
    assert!(!first.stderr.contains("refused"), "{first:?}");
    let second = second.finish(CLIENT_DEADLINE);
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert_eq!(second.summary().ok, 1, "{second:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}
