//! Every accounted entry point, through every client path: while a client holds its memory the
//! ledger charges it exactly what it took (plus its context), and frees give it back.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use guard_support::{CLIENT_DEADLINE, MIB, assert_card_safe, charged, run, sim_uuid, snapshot};
use support::{ANSWER_MODES, ClientPath, Sandbox};

const CONTEXT: u64 = 300 * MIB;

/// (api, chunk, count): sizes chosen so that each path takes a few hundred MiB.
const APIS: &[(&str, &str, &str)] = &[
    ("default", "64MiB", "3"),
    ("pitch", "10MiB", "3"),
    ("managed", "64MiB", "2"),
    ("async", "48MiB", "3"),
    ("pool", "48MiB", "3"),
    ("vmm", "100MiB", "3"),
    ("array", "16MiB", "2"),
    ("array3d", "16MiB", "2"),
    ("mipmapped", "16MiB", "2"),
    ("ctx", "1MiB", "2"),
];

/// Runs `api` through `path`, reads the ledger while the client holds, and returns
/// (charged while holding, bytes the client says it got).
fn charged_while_holding(
    sandbox: &Sandbox,
    path: ClientPath,
    api: &str,
    chunk: &str,
    count: &str,
    free_each: bool,
) -> (u64, u64) {
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    let release = sandbox.go_file(&format!("{api}-{}", path.name()));
    let mut command = sandbox.command(path, true);
    command.args([
        "--api",
        api,
        "--chunk",
        chunk,
        "--count",
        count,
        "--hold-until",
        release.arg(),
    ]);
    if free_each {
        command.arg("--free-each");
    }
    let mut running = support::spawn(command);
    let pid = running.pid();
    running.wait_for_line("holding", CLIENT_DEADLINE);
    let held = charged(&snapshot(sandbox), pid, uuid);
    release.go();
    let finished = running.finish(CLIENT_DEADLINE);
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{api} via {path:?}: {finished:?}"
    );
    let summary = finished.summary();
    assert_eq!(summary.path, path.name());
    assert_eq!(summary.failed, 0, "{summary:?}");
    // After exit the process is gone from the ledger.
    assert_eq!(
        charged(&snapshot(sandbox), pid, uuid),
        0,
        "{api} via {path:?} still charged after exit"
    );
    (held, summary.bytes)
}

/// Every API through `paths`, the driver answering lookups in `mode`.
fn every_entry_point_is_charged_exactly(mode: &str, paths: &[ClientPath]) {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.answering(mode).init();
    for &path in paths {
        for (api, chunk, count) in APIS {
            let (held, taken) = charged_while_holding(&sandbox, path, api, chunk, count, false);
            assert!(taken > 0, "{api} via {path:?} took nothing");
            assert_eq!(
                held,
                taken + CONTEXT,
                "{api} via {path:?}, lookups answered {mode}: charged {held}, the client took {taken} + context"
            );
        }
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn every_entry_point_is_charged_exactly_through_every_path() {
    every_entry_point_is_charged_exactly("exported", &ClientPath::ALL);
}

#[test]
fn every_entry_point_is_charged_exactly_when_lookups_answer_internal_functions() {
    // Only the runtime's path meets the driver's lookup answers.
    every_entry_point_is_charged_exactly("internal", &[ClientPath::Procaddr]);
}

#[test]
fn frees_give_the_memory_back() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    for path in [ClientPath::Direct, ClientPath::Procaddr] {
        for (api, chunk, count) in APIS {
            let (held, _) = charged_while_holding(&sandbox, path, api, chunk, count, true);
            assert_eq!(
                held, CONTEXT,
                "{api} via {path:?} with --free-each: still charged {held}"
            );
        }
    }
}

#[test]
fn versioned_lookups_keep_each_abi_and_are_accounted() {
    for mode in ANSWER_MODES {
        versioned_lookups_in(mode);
    }
}

/// [`versioned_lookups_keep_each_abi_and_are_accounted`], the driver answering in `mode`.
fn versioned_lookups_in(mode: &str) {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.answering(mode).init();
    let mut command = sandbox.command(ClientPath::Procaddr, true);
    command.arg("--check-abi");
    let finished = run(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert!(
        finished.stdout.contains("abi-summary failures=0"),
        "{}",
        finished.stdout
    );
    assert!(
        !finished.stdout.contains("CLOBBERED"),
        "{}",
        finished.stdout
    );
    // The guard's figures show through each ABI: totals are the budget (3.75 GiB), not 4 GiB.
    let budget = 4096 * MIB - 256 * MIB;
    assert!(
        finished.stdout.contains(&format!("total={budget}")),
        "{}",
        finished.stdout
    );
    let legacy_info = finished
        .stdout
        .lines()
        .find(|l| l.contains("cuMemGetInfo(legacy)"))
        .expect("legacy cuMemGetInfo line");
    assert!(
        legacy_info.contains(&format!("total={budget}")),
        "{legacy_info}"
    );

    // Each variant is guarded: with a limit that leaves no room after the context, every
    // allocation variant is refused by the guard (the driver never sees a request).
    let mut limited = sandbox.command(ClientPath::Procaddr, true);
    limited.arg("--check-abi").env("VRAMGUARD_LIMIT", "300MiB");
    let finished = run(limited);
    for call in [
        "cuMemAlloc(legacy)",
        "cuMemAlloc(v2)",
        "cuMemAllocPitch(legacy)",
        "cuCtxCreate(legacy)",
        "cuCtxCreate(v2)",
        "cuCtxCreate(v3)",
        "cuCtxCreate(v4)",
    ] {
        let line = finished
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("abi-call {call} ")))
            .unwrap_or_else(|| panic!("no {call} line: {}", finished.stdout));
        assert!(line.contains("result=CUDA_ERROR_OUT_OF_MEMORY"), "{line}");
    }
    let async_refusals = finished
        .stdout
        .lines()
        .filter(|l| {
            (l.starts_with("abi-call cuMemAllocAsync ")
                || l.starts_with("abi-call cuMemAllocFromPoolAsync "))
                && l.contains("OUT_OF_MEMORY")
        })
        .count();
    assert_eq!(
        async_refusals, 4,
        "default and per-thread-stream variants: {}",
        finished.stdout
    );
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
}
