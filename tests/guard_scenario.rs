//! The user's story on a simulated 4 GiB card: three loaders started together, with and without
//! the guard, under each policy; the context counted; memory of unguarded programs respected.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::process::Command;

use guard_support::{CLIENT_DEADLINE, GIB, MIB, assert_card_safe, run};
use support::{ANSWER_MODES, ClientPath, GoFile, Sandbox, Summary};

/// A fragile 4 GiB card (an over-commit poisons it, as on the user's laptop) whose driver answers
/// `cuGetProcAddress` in `mode` (see [`ANSWER_MODES`]).
fn fragile_card(mode: &str) -> Sandbox {
    let mut sandbox = Sandbox::new("size=4GiB,name=NVIDIA GeForce GTX 1650");
    sandbox.set_env("SIMCUDA_FRAGILE", "1").answering(mode);
    sandbox.init();
    sandbox
}

/// How long a loader that got all its memory holds it, as a model that finished loading does.
#[derive(Clone, Copy)]
enum Hold {
    /// Until every loader has finished trying (got all its memory, or gave up): the loads
    /// overlap however late one of them starts, as on a machine where they really start at once.
    UntilAllTried,
    /// A second, then it frees (under `wait`, the others need its memory to go on).
    ASecond,
}

/// A loader: 3 GiB in 100 MiB chunks, through `path`. Each path keeps its own pace, as real
/// loaders do (three loaders in lockstep would reach a full card within microseconds of each
/// other); `hold` says how long a complete load holds its memory (`release`: the go file of
/// [`Hold::UntilAllTried`]).
fn loader(
    sandbox: &Sandbox,
    path: ClientPath,
    guarded: bool,
    env: &[(&str, &str)],
    release: Option<&GoFile>,
) -> Command {
    let pace_ms = match path {
        ClientPath::Direct => "10",
        ClientPath::Procaddr => "13",
        _ => "17",
    };
    let mut command = sandbox.command(path, guarded);
    command.args([
        "--chunk",
        "100MiB",
        "--count",
        "30",
        "--sleep-between-ms",
        pace_ms,
    ]);
    match release {
        Some(release) => command.args(["--hold-if-complete-until", release.arg()]),
        None => command.args(["--hold-if-complete-ms", "1000"]),
    };
    command.envs(env.iter().copied());
    command
}

/// Three loaders through three different paths, started together.
fn three_loaders(
    sandbox: &Sandbox,
    guarded: bool,
    env: &[(&str, &str)],
    hold: Hold,
) -> Vec<Summary> {
    let paths = [ClientPath::Direct, ClientPath::Procaddr, ClientPath::Python];
    let release = matches!(hold, Hold::UntilAllTried).then(|| sandbox.go_file("all-tried"));
    let mut running: Vec<_> = paths
        .iter()
        .map(|p| support::spawn(loader(sandbox, *p, guarded, env, release.as_ref())))
        .collect();
    if let Some(release) = &release {
        // A complete load says it holds; one that gave up ends.
        for load in &mut running {
            load.wait_for_line_or_end("holding", CLIENT_DEADLINE);
        }
        release.go();
    }
    let finished: Vec<_> = running
        .into_iter()
        .map(|r| r.finish(CLIENT_DEADLINE))
        .collect();
    if !guarded {
        return finished.iter().map(|f| f.summary()).collect();
    }
    finished
        .iter()
        .map(|f| {
            let summary = f.summary();
            let code = f.status.code();
            match &summary.first_error {
                None => assert_eq!(code, Some(0), "{f:?}"),
                // Refused mid-load (exit 2), or refused its context before it started (exit 1).
                Some(e) if e == "CUDA_ERROR_OUT_OF_MEMORY" => {
                    assert!(matches!(code, Some(1 | 2)), "{f:?}")
                }
                Some(other) => panic!("unexpected error {other}: {f:?}"),
            }
            summary
        })
        .collect()
}

fn completed(summaries: &[Summary]) -> usize {
    summaries
        .iter()
        .filter(|s| s.first_error.is_none() && s.ok == 30)
        .count()
}

#[test]
fn unguarded_loaders_poison_the_card() {
    let sandbox = fragile_card("exported");
    let _ = three_loaders(&sandbox, false, &[], Hold::UntilAllTried);
    let report = sandbox.sim_report();
    assert_eq!(
        report["devices"][0]["poisoned"].as_bool(),
        Some(true),
        "{report}"
    );
    // ... and from then on every CUDA program fails at start.
    let after = run(sandbox.command(ClientPath::Direct, false));
    assert_eq!(after.status.code(), Some(3), "{after:?}");
}

/// Checks what deny promises whatever the timing: every failure is a clean out-of-memory
/// before the load was complete, and the card was never over-committed nor poisoned.
fn assert_denied_cleanly(sandbox: &Sandbox, summaries: &[Summary]) {
    for s in summaries.iter().filter(|s| s.first_error.is_some()) {
        assert_eq!(
            s.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY"),
            "{s:?}"
        );
        assert!(s.ok < 30 && s.failed <= 1, "{s:?}");
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn deny_with_expect_lets_exactly_one_load_complete_and_refuses_the_others_cleanly() {
    for mode in ANSWER_MODES {
        // Each loader says up front what it needs, so the guard answers before anything is loaded:
        // exactly one gets its share, the others are refused at once.
        let sandbox = fragile_card(mode);
        let summaries = three_loaders(
            &sandbox,
            true,
            &[("VRAMGUARD_POLICY", "deny"), ("VRAMGUARD_EXPECT", "3GiB")],
            Hold::UntilAllTried,
        );
        assert_eq!(
            completed(&summaries),
            1,
            "lookups answered {mode}: {summaries:?}"
        );
        assert_denied_cleanly(&sandbox, &summaries);
    }
}

#[test]
fn plain_deny_refuses_cleanly_at_the_chunk_that_does_not_fit() {
    for mode in ANSWER_MODES {
        // Without an up-front reservation each chunk is decided on its own: loaders are refused at
        // the first chunk that does not fit, and a refused loader gives its memory back, so usually
        // one load completes. When two loaders hit the full card within the moment it takes the
        // first refused one to free its memory, both are refused (docs/limitations.md): what is
        // guaranteed is a clean error and a card never over-committed, and never two complete loads
        // (3 GiB twice does not fit in the 3.75 GiB budget while the first is held).
        let sandbox = fragile_card(mode);
        let summaries = three_loaders(
            &sandbox,
            true,
            &[("VRAMGUARD_POLICY", "deny")],
            Hold::UntilAllTried,
        );
        assert!(
            completed(&summaries) <= 1,
            "lookups answered {mode}: {summaries:?}"
        );
        assert!(
            summaries.iter().any(|s| s.first_error.is_some()),
            "three 3 GiB loads cannot all fit: {summaries:?}"
        );
        assert_denied_cleanly(&sandbox, &summaries);
    }
}

#[test]
fn wait_with_expect_runs_all_three_one_after_another() {
    for mode in ANSWER_MODES {
        let sandbox = fragile_card(mode);
        let summaries = three_loaders(
            &sandbox,
            true,
            &[
                ("VRAMGUARD_POLICY", "wait"),
                ("VRAMGUARD_EXPECT", "3GiB"),
                (
                    "VRAMGUARD_WAIT_TIMEOUT",
                    &guard_support::hang_wait_timeout(),
                ),
            ],
            Hold::ASecond,
        );
        assert_eq!(
            completed(&summaries),
            3,
            "lookups answered {mode}: {summaries:?}"
        );
        let report = sandbox.sim_report();
        assert_card_safe(&report, 0);
        // One after another: never two loads on the card at once.
        let peak = report["devices"][0]["peak_bytes"].as_u64().unwrap();
        assert!(peak < 2 * 3 * GIB, "two loads overlapped: peak {peak}");
    }
}

#[test]
fn plain_wait_never_overcommits_and_lets_at_least_one_finish() {
    for mode in ANSWER_MODES {
        let sandbox = fragile_card(mode);
        let summaries = three_loaders(
            &sandbox,
            true,
            &[
                ("VRAMGUARD_POLICY", "wait"),
                (
                    "VRAMGUARD_WAIT_TIMEOUT",
                    &guard_support::hang_wait_timeout(),
                ),
            ],
            Hold::ASecond,
        );
        assert!(
            completed(&summaries) >= 1,
            "lookups answered {mode}: {summaries:?}"
        );
        assert_card_safe(&sandbox.sim_report(), 0);
    }
}

#[test]
fn a_load_larger_than_the_card_fails_at_once_under_both_policies() {
    for mode in ANSWER_MODES {
        let sandbox = fragile_card(mode);
        for policy in ["deny", "wait"] {
            for path in [
                ClientPath::Direct,
                ClientPath::Dlsym,
                ClientPath::Procaddr,
                ClientPath::Python,
            ] {
                let mut command = sandbox.command(path, true);
                command
                    .args(["--chunk", "4.2GiB", "--count", "1"])
                    .env("VRAMGUARD_POLICY", policy);
                let finished = run(command);
                let summary = finished.summary();
                assert_eq!(
                    summary.first_error.as_deref(),
                    Some("CUDA_ERROR_OUT_OF_MEMORY"),
                    "{policy} {path:?}, lookups answered {mode}: {finished:?}"
                );
                assert_eq!(summary.ok, 0);
                // At once: it never started waiting (a waiting request says so on stderr).
                assert!(
                    !finished.stderr.contains("vramguard: waiting"),
                    "{policy} {path:?} did not fail at once: {finished:?}"
                );
            }
        }
        assert_card_safe(&sandbox.sim_report(), 0);
    }
}

#[test]
fn context_memory_is_counted() {
    // Three processes of 1.2 GiB each fit a 4 GiB card only if their 300 MiB contexts are
    // forgotten: 3 x 1.5 GiB > 4 GiB. With the guard one of them is refused, by the guard. Each
    // holds what it got until all three have tried, however late one of them starts.
    let sandbox = Sandbox::new("4GiB");
    let release = sandbox.go_file("all-tried");
    let mut running: Vec<_> = [ClientPath::Direct, ClientPath::Dlsym, ClientPath::Procaddr]
        .iter()
        .map(|p| {
            let mut c = sandbox.command(*p, true);
            c.args([
                "--chunk",
                "1200MiB",
                "--count",
                "1",
                "--hold-until",
                release.arg(),
            ])
            .env("VRAMGUARD_RESERVE", "0");
            support::spawn(c)
        })
        .collect();
    for process in &mut running {
        process.wait_for_line_or_end("holding", CLIENT_DEADLINE);
    }
    release.go();
    let summaries: Vec<Summary> = running
        .into_iter()
        .map(|r| r.finish(CLIENT_DEADLINE).summary())
        .collect();
    let ok = summaries.iter().filter(|s| s.ok == 1).count();
    assert_eq!(ok, 2, "{summaries:?}");
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
    assert!(report["devices"][0]["peak_bytes"].as_u64().unwrap() <= 4 * GIB);
}

#[test]
fn memory_held_by_an_unguarded_program_is_respected() {
    for mode in ANSWER_MODES {
        let mut sandbox = Sandbox::new("4GiB");
        sandbox.answering(mode);
        let release = sandbox.go_file("release");
        let holder = sandbox.start_holder(ClientPath::Direct, false, "1GiB", &release);
        // Budget 3.75 GiB: the ledger alone would admit 3.3 GiB, but only 4 - 1.3 - 0.3 = 2.4 GiB
        // are free on the card (less the 256 MiB reserve).
        for path in [ClientPath::Direct, ClientPath::Procaddr] {
            let mut guarded = sandbox.command(path, true);
            guarded.args(["--chunk", "100MiB", "--count", "33"]);
            let summary = run(guarded).summary();
            assert_eq!(
                summary.first_error.as_deref(),
                Some("CUDA_ERROR_OUT_OF_MEMORY"),
                "lookups answered {mode}: {summary:?}"
            );
            let room = 4 * GIB - GIB - 2 * 300 * MIB - 256 * MIB;
            assert_eq!(
                summary.ok,
                room / (100 * MIB),
                "lookups answered {mode}: {summary:?}"
            );
        }
        let report = sandbox.sim_report();
        assert_card_safe(&report, 0);
        release.go();
        let holder = holder.finish(guard_support::CLIENT_DEADLINE);
        assert_eq!(holder.status.code(), Some(0), "{holder:?}");
    }
}

#[test]
fn under_wait_memory_of_an_unguarded_program_is_waited_for() {
    // The ledger has room (the holder is not guarded), the card does not: the guarded request
    // waits, re-checking the driver, and proceeds once the holder is gone.
    let sandbox = Sandbox::new("4GiB");
    let release = sandbox.go_file("release");
    let holder = sandbox.start_holder(ClientPath::Direct, false, "3GiB", &release);
    let mut guarded = sandbox.command(ClientPath::Dlsym, true);
    guarded
        .args(["--chunk", "1GiB", "--count", "1"])
        .env("VRAMGUARD_POLICY", "wait")
        .env("VRAMGUARD_WAIT_TIMEOUT", guard_support::hang_wait_timeout());
    let mut guarded = support::spawn(guarded);
    guarded.wait_for_stderr_line("vramguard: waiting for 1.00 GiB", CLIENT_DEADLINE);
    release.go();
    let finished = guarded.finish(CLIENT_DEADLINE);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_eq!(finished.summary().ok, 1, "{finished:?}");
    let holder = holder.finish(guard_support::CLIENT_DEADLINE);
    assert_eq!(holder.status.code(), Some(0), "{holder:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn a_refusal_says_whether_the_card_or_the_process_limit_stands_in_the_way() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let uuid = vramguard_core::cuda::CuUuid(guard_support::sim_uuid(&sandbox.sim_report(), 0));
    // The guard's one refusal line of a client run with `args` (and `VRAMGUARD_LIMIT=limit`).
    let refusal = |limit: Option<&str>, args: &[&str]| {
        let mut command = sandbox.command(ClientPath::Direct, true);
        command.args(args);
        if let Some(limit) = limit {
            command.env("VRAMGUARD_LIMIT", limit);
        }
        let finished = run(command);
        assert_eq!(finished.status.code(), Some(2), "{finished:?}");
        let lines = guard_support::guard_lines(&finished.stderr);
        let refused: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("vramguard: refused"))
            .collect();
        assert_eq!(refused.len(), 1, "{finished:?}");
        refused[0].to_owned()
    };

    // Larger than the card's budget (4 GiB less the 256 MiB reserve).
    let line = refusal(None, &["--chunk", "5GiB"]);
    assert!(
        line.ends_with(&format!(
            "5.00 GiB can never fit on this card at all (its budget is 3.75 GiB on {uuid})"
        )),
        "{line}"
    );

    // The process reached its limit: 300 MiB of context and 7 x 100 MiB held, 100 MiB more asked.
    let line = refusal(Some("1GiB"), &["--chunk", "100MiB", "--count", "12"]);
    assert!(
        line.ends_with(&format!(
            "this process has reached its per-process limit (VRAMGUARD_LIMIT) on {uuid}: it \
             holds 1000 MiB of its 1.00 GiB limit, and asks 100 MiB more"
        )),
        "{line}"
    );
    assert!(!line.contains("never fit"), "{line}");

    // One request larger than the limit itself, though it would fit on the card.
    let line = refusal(Some("1GiB"), &["--chunk", "2GiB"]);
    assert!(
        line.ends_with(&format!(
            "2.00 GiB can never fit within this process's per-process limit (VRAMGUARD_LIMIT) of \
             1.00 GiB on {uuid}"
        )),
        "{line}"
    );
}
