//! The runtime's path (`cuGetProcAddress_v2`, then every entry point through the lookup that came
//! back) under both ways a driver may answer lookups: with its exported symbols, or with
//! internal functions that `dlsym` cannot find (`SIMCUDA_PROCADDR=internal`), as real drivers do
//! for `"cuGetProcAddress"` itself. The guard must see the same allocations either way: a clean
//! out-of-memory under a limit and under a budget shared with another process, a killed
//! process's memory given back, and sixteen processes racing for one card.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::os::unix::process::ExitStatusExt;

use guard_support::{CLIENT_DEADLINE, MIB, assert_card_safe, charged, run, sim_uuid, snapshot};
use support::{ANSWER_MODES, ClientPath, Sandbox};

/// A 4 GiB card whose driver answers lookups in `mode`.
fn card(mode: &str) -> Sandbox {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.answering(mode).init();
    sandbox
}

/// How many calls `pid` made through internal lookup answers (the simulator counts them).
fn internal_calls(sandbox: &Sandbox, pid: u32) -> u64 {
    let report = sandbox.sim_report();
    report["processes"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        })
        .and_then(|p| p["internal_calls"].as_u64())
        .unwrap_or_else(|| panic!("no process {pid} in {report}"))
}

/// A guarded holder on the runtime's path with `gib` x 1 GiB, checked to be in the ledger with
/// its allocations and its 300 MiB context.
fn runtime_holder(sandbox: &Sandbox, mode: &str, gib: u64) -> support::Running {
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    let count = gib.to_string();
    let holder = sandbox.start_holding(
        ClientPath::Procaddr,
        true,
        &[
            "--chunk",
            "1GiB",
            "--count",
            &count,
            "--hold-until",
            sandbox.until_killed(),
        ],
        CLIENT_DEADLINE,
    );
    assert_eq!(
        charged(&snapshot(sandbox), holder.pid(), uuid),
        gib * 1024 * MIB + 300 * MIB,
        "{mode}: the holder's allocations are not in the ledger"
    );
    holder
}

#[test]
fn the_simulated_driver_really_answers_with_internal_functions() {
    // The premise of every other test here: without the guard, the runtime's path calls the
    // internal answers in `internal` mode, and never in `exported` mode.
    for mode in ANSWER_MODES {
        let sandbox = card(mode);
        let (finished, pid) = sandbox.run_client(
            ClientPath::Procaddr,
            false,
            &["--chunk", "100MiB", "--count", "2"],
        );
        assert_eq!(finished.status.code(), Some(0), "{mode}: {finished:?}");
        let calls = internal_calls(&sandbox, pid);
        match mode {
            "internal" => assert!(calls >= 4, "{mode}: {calls} internal calls"),
            _ => assert_eq!(calls, 0, "{mode}"),
        }
    }
}

#[test]
fn a_limit_gives_a_clean_out_of_memory_whatever_the_driver_answers() {
    for mode in ANSWER_MODES {
        let sandbox = card(mode);
        let mut command = sandbox.command(ClientPath::Procaddr, true);
        command
            .args(["--chunk", "100MiB", "--count", "5"])
            .env("VRAMGUARD_LIMIT", "550MiB");
        let finished = run(command);
        assert_eq!(finished.status.code(), Some(2), "{mode}: {finished:?}");
        let summary = finished.summary();
        // The context (300 MiB) and two chunks fit the limit; the third is refused by the guard.
        assert_eq!((summary.ok, summary.failed), (2, 1), "{mode}: {summary:?}");
        assert_eq!(
            summary.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY")
        );
        let report = sandbox.sim_report();
        assert_card_safe(&report, 0);
        assert!(
            report["devices"][0]["peak_bytes"].as_u64().unwrap() <= 550 * MIB,
            "{mode}: the card held more than the limit: {report}"
        );
    }
}

#[test]
fn a_budget_shared_with_another_process_is_respected_whatever_the_driver_answers() {
    for mode in ANSWER_MODES {
        let sandbox = card(mode);
        // The holder reaches the driver the runtime's way too: 2 GiB + its context.
        let holder = runtime_holder(&sandbox, mode, 2);
        // Budget 3.75 GiB less 2.3 GiB held: 1.45 GiB, of which the newcomer's context takes
        // 300 MiB, so 11 chunks of 100 MiB fit and the 12th is refused by the guard.
        let mut newcomer = sandbox.command(ClientPath::Procaddr, true);
        newcomer.args(["--chunk", "100MiB", "--count", "20"]);
        let finished = run(newcomer);
        let summary = finished.summary();
        assert_eq!(
            summary.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY"),
            "{mode}: {finished:?}"
        );
        assert_eq!(summary.ok, 11, "{mode}: {summary:?}");
        assert_card_safe(&sandbox.sim_report(), 0);
        holder.kill();
    }
}

#[test]
fn a_killed_process_gives_its_memory_back_whatever_the_driver_answers() {
    for mode in ANSWER_MODES {
        let sandbox = card(mode);
        let holder = runtime_holder(&sandbox, mode, 3);
        // While it holds, a 1 GiB request cannot fit the 3.75 GiB budget...
        let mut blocked = sandbox.command(ClientPath::Procaddr, true);
        blocked.args(["--chunk", "1GiB", "--count", "1"]);
        let finished = run(blocked);
        assert_eq!(finished.status.code(), Some(2), "{mode}: {finished:?}");
        // ... and once it is SIGKILLed (no exit handler runs), its memory is the next one's.
        let killed = holder.kill();
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "{mode}: {killed:?}"
        );
        let mut after = sandbox.command(ClientPath::Procaddr, true);
        after.args(["--chunk", "1GiB", "--count", "3"]);
        let finished = run(after);
        assert_eq!(finished.status.code(), Some(0), "{mode}: {finished:?}");
        assert_card_safe(&sandbox.sim_report(), 0);
    }
}

#[test]
fn sixteen_processes_racing_for_one_card_never_overcommit_it_whatever_the_driver_answers() {
    const PROCESSES: usize = 16;
    for mode in ANSWER_MODES {
        // A 2 GiB card with small contexts: 16 x (16 MiB + 20 x 50 MiB) is eight times the card.
        let mut sandbox = Sandbox::new("2GiB");
        sandbox
            .answering(mode)
            .set_env("SIMCUDA_CONTEXT_COST", "16MiB")
            .set_env("VRAMGUARD_CONTEXT_SIZE", "16MiB")
            .set_env("VRAMGUARD_RESERVE", "0");
        sandbox.init();
        let racers: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let mut command = sandbox.command(ClientPath::Procaddr, true);
                command.args([
                    "--chunk",
                    "50MiB",
                    "--count",
                    "20",
                    "--keep-going",
                    "--hold-ms",
                    "200",
                ]);
                command
            })
            .collect();
        let finished = guard_support::run_together(racers);
        let mut granted = 0;
        for f in &finished {
            let summary = f.summary();
            // Done (0), refused mid-way (2), or refused its context before it started (1).
            match &summary.first_error {
                None => assert_eq!(f.status.code(), Some(0), "{mode}: {f:?}"),
                Some(error) => {
                    assert_eq!(error, "CUDA_ERROR_OUT_OF_MEMORY", "{mode}: {f:?}");
                    assert!(matches!(f.status.code(), Some(1 | 2)), "{mode}: {f:?}");
                }
            }
            granted += summary.ok;
        }
        let report = sandbox.sim_report();
        assert_card_safe(&report, 0);
        let peak = report["devices"][0]["peak_bytes"].as_u64().unwrap();
        assert!(peak <= 2048 * MIB, "{mode}: peak {peak}");
        // The guard refused what did not fit, not everything: the card was well used.
        assert!(granted >= 20, "{mode}: only {granted} chunks granted");
    }
}
