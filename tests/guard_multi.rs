//! Several devices, processes, threads: accounting per physical card, fork, 8 threads at once,
//! and a process killed while it waits.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::time::Duration;

use guard_support::{
    CLIENT_DEADLINE, GIB, MIB, assert_card_safe, charged, run, sim_uuid, snapshot, wait_for_ledger,
};
use support::{ClientPath, Sandbox};
use vramguard_core::ledger::ProcessState;

const CONTEXT: u64 = 300 * MIB;

#[test]
fn accounting_is_per_physical_device_whatever_the_visible_order() {
    let sandbox = Sandbox::new("size=4GiB,name=Small;size=8GiB,name=Big");
    sandbox.init();
    let report = sandbox.sim_report();
    let (small, big) = (sim_uuid(&report, 0), sim_uuid(&report, 1));

    // A sees the cards in order, B reversed; both use their device 0. Both hold until looked at.
    let release = sandbox.go_file("release");
    let mut a = sandbox.command(ClientPath::Direct, true);
    a.args([
        "--chunk",
        "1GiB",
        "--count",
        "1",
        "--hold-until",
        release.arg(),
    ])
    .env("CUDA_VISIBLE_DEVICES", "0,1");
    let mut b = sandbox.command(ClientPath::Procaddr, true);
    b.args([
        "--chunk",
        "2GiB",
        "--count",
        "1",
        "--hold-until",
        release.arg(),
    ])
    .env("CUDA_VISIBLE_DEVICES", "1,0");
    let mut a = support::spawn(a);
    let mut b = support::spawn(b);
    a.wait_for_line("holding", CLIENT_DEADLINE);
    b.wait_for_line("holding", CLIENT_DEADLINE);
    let snap = snapshot(&sandbox);
    assert_eq!(charged(&snap, a.pid(), small), GIB + CONTEXT, "{snap:?}");
    assert_eq!(charged(&snap, a.pid(), big), 0, "{snap:?}");
    assert_eq!(charged(&snap, b.pid(), big), 2 * GIB + CONTEXT, "{snap:?}");
    assert_eq!(charged(&snap, b.pid(), small), 0, "{snap:?}");
    let budget = |uuid: [u8; 16]| {
        snap.devices
            .iter()
            .find(|d| d.uuid == uuid)
            .map(|d| d.budget)
    };
    assert_eq!(budget(small), Some(4 * GIB - 256 * MIB));
    assert_eq!(budget(big), Some(8 * GIB - 256 * MIB));
    release.go();
    for running in [a, b] {
        let finished = running.finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    }

    // The small card's budget holds for a process that sees it as device 1.
    let mut c = sandbox.command(ClientPath::Dlsym, true);
    c.args(["--device", "1", "--chunk", "100MiB", "--count", "40"])
        .env("CUDA_VISIBLE_DEVICES", "1,0");
    let summary = run(c).summary();
    assert_eq!(summary.ok, (4096 - 256 - 300) / 100, "{summary:?}");
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
    assert_card_safe(&report, 1);
}

#[test]
fn a_forked_child_joins_the_ledger_as_itself() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    for path in [ClientPath::Direct, ClientPath::Procaddr] {
        let release = sandbox.go_file(path.name());
        let mut command = sandbox.command(path, true);
        command.args([
            "--fork",
            "--chunk",
            "100MiB",
            "--count",
            "5",
            "--hold-until",
            release.arg(),
        ]);
        let running = support::spawn(command);
        let parent = running.pid();
        let snap = wait_for_ledger(&sandbox, CLIENT_DEADLINE, "parent and child holding", |s| {
            s.processes
                .iter()
                .filter(|p| {
                    p.alive
                        && p.devices
                            .iter()
                            .any(|d| d.uuid == uuid && d.charged == 500 * MIB + CONTEXT)
                })
                .count()
                == 2
        });
        assert_eq!(
            charged(&snap, parent, uuid),
            500 * MIB + CONTEXT,
            "{snap:?}"
        );
        release.go();
        let finished = running.finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(0), "{finished:?}");
        let summary = finished.summary();
        assert_eq!((summary.ok, summary.failed), (10, 0), "{summary:?}");
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn eight_threads_allocating_at_once_never_overcommit() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    for path in [ClientPath::Direct, ClientPath::Procaddr] {
        let mut command = sandbox.command(path, true);
        command.args([
            "--threads",
            "8",
            "--chunk",
            "100MiB",
            "--count",
            "10",
            "--keep-going",
        ]);
        let summary = run(command).summary();
        // 80 requests of 100 MiB; exactly as many fit as the budget allows after the context.
        assert_eq!(summary.ok, (4096 - 256 - 300) / 100, "{summary:?}");
        assert_eq!(summary.ok + summary.failed, 80, "{summary:?}");
        assert_eq!(
            summary.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY")
        );
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

/// Waits until the ledger shows process `pid` waiting.
fn wait_until_waiting(sandbox: &Sandbox, pid: u32) {
    wait_for_ledger(sandbox, CLIENT_DEADLINE, "a process waiting", |s| {
        guard_support::process(s, pid)
            .is_some_and(|p| matches!(p.state, ProcessState::Waiting { .. }))
    });
}

#[test]
fn a_process_killed_while_waiting_frees_its_place() {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.init();
    sandbox.set_env("VRAMGUARD_POLICY", "wait").set_env(
        "VRAMGUARD_WAIT_TIMEOUT",
        &guard_support::hang_wait_timeout(),
    );
    // A holds most of the card until C waits.
    let release = sandbox.go_file("release");
    let holder = sandbox.start_holder(ClientPath::Direct, true, "3GiB", &release);
    // B queues for 1 GiB, and is killed while it waits.
    let mut victim = sandbox.command(ClientPath::Procaddr, true);
    victim.args(["--chunk", "1GiB", "--count", "1"]);
    let victim = support::spawn(victim);
    let victim_pid = victim.pid();
    wait_until_waiting(&sandbox, victim_pid);
    let victim = victim.kill();
    // While it waited it said, once, what for and who holds the memory.
    let waiting: Vec<&str> = victim
        .stderr
        .lines()
        .filter(|l| l.starts_with("vramguard: waiting for 1.00 GiB"))
        .collect();
    assert_eq!(waiting.len(), 1, "{victim:?}");
    assert!(
        waiting[0].contains(&format!("pid {}", holder.pid())),
        "{waiting:?}"
    );
    // C queues behind where B was, and gets its memory as soon as A is done.
    let mut next = sandbox.command(ClientPath::Dlsym, true);
    next.args(["--chunk", "1GiB", "--count", "1"]);
    let next = support::spawn(next);
    wait_until_waiting(&sandbox, next.pid());
    release.go();
    let holder = holder.finish(CLIENT_DEADLINE);
    assert_eq!(holder.status.code(), Some(0), "{holder:?}");
    let next = next.finish(CLIENT_DEADLINE);
    assert_eq!(next.status.code(), Some(0), "{next:?}");
    assert_eq!(next.summary().ok, 1);
    let snap = snapshot(&sandbox);
    assert!(
        guard_support::process(&snap, victim_pid).is_none(),
        "the killed process is still a member: {snap:?}"
    );
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn a_wait_ends_at_its_timeout_with_out_of_memory() {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.init();
    sandbox
        .set_env("VRAMGUARD_POLICY", "wait")
        .set_env("VRAMGUARD_WAIT_TIMEOUT", "1s");
    let release = sandbox.go_file("release");
    let holder = sandbox.start_holder(ClientPath::Direct, true, "3GiB", &release);
    let mut late = sandbox.command(ClientPath::Procaddr, true);
    late.args(["--chunk", "1GiB", "--count", "1"]);
    let started = std::time::Instant::now();
    let late = run(late);
    let waited = started.elapsed();
    assert_eq!(
        late.summary().first_error.as_deref(),
        Some("CUDA_ERROR_OUT_OF_MEMORY"),
        "{late:?}"
    );
    // It waited its timeout (the holder held all along, so only the timeout can have ended it).
    assert!(waited >= Duration::from_secs(1), "waited {waited:?}");
    assert!(
        late.stderr.contains("vramguard: waiting for 1.00 GiB"),
        "{late:?}"
    );
    release.go();
    let holder = holder.finish(CLIENT_DEADLINE);
    assert_eq!(holder.status.code(), Some(0), "{holder:?}");
}
