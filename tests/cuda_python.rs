//! A real third-party client under the guard: NVIDIA's cuda-python driver bindings (PyPI
//! `cuda-bindings`, pinned in `tests/clients/requirements.txt`, installed into `.venv-test` by
//! `scripts/setup.sh`). They load `libcuda.so.1` themselves and fetch every entry point through
//! `cuGetProcAddress` (about 480 lookups, each at the version that introduced the function), and
//! need no GPU and no CUDA runtime. `tests/clients/cuda_python_client.py` allocates with
//! `cuMemAlloc` and reads `cuMemGetInfo`: the guard must hold it to `VRAMGUARD_LIMIT`, to what
//! another guarded process leaves of the card's budget, and tell it its own view of the card.
//! Unguarded runs of the same client show that it is the guard that refuses.
//!
//! Each test runs once per way the simulated driver answers `cuGetProcAddress`
//! (`SIMCUDA_PROCADDR`, [`ANSWER_MODES`]).

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::path::PathBuf;
use std::process::Command;

use guard_support::{CLIENT_DEADLINE, GIB, MIB, charged, sim_uuid, snapshot};
use support::report::{device_u64, process};
use support::{ANSWER_MODES, ClientPath, Finished, GoFile, Running, Sandbox};

/// What the guard charges for a context (`VRAMGUARD_CONTEXT_SIZE`), which is also what the
/// simulated 4 GiB card's contexts cost.
const CONTEXT: u64 = 300 * MIB;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
const OUT_OF_MEMORY: &str = "CUDA_ERROR_OUT_OF_MEMORY 2";

/// The interpreter of the tests' virtualenv, which must have `cuda-bindings`: the test fails
/// (it does not skip) when it is missing.
fn python() -> PathBuf {
    let python = support::repo().join(".venv-test/bin/python");
    let usable = Command::new(&python)
        .args(["-c", "import cuda.bindings.driver"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        usable,
        "cuda-bindings is not installed in {}: run ./scripts/setup.sh (the README's setup \
         command), which creates that virtualenv and installs tests/clients/requirements.txt",
        python.display()
    );
    python
}

/// A 4 GiB simulated card answering `cuGetProcAddress` the `mode` way.
fn card(mode: &str) -> Sandbox {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.answering(mode);
    sandbox.init();
    sandbox
}

/// The cuda-python client with `args`, under the guard when `guarded`.
fn client(sandbox: &Sandbox, guarded: bool, args: &[&str]) -> Command {
    let mut command = sandbox.program(python());
    command
        .arg(support::repo().join("tests/clients/cuda_python_client.py"))
        .args(args);
    if guarded {
        command.env("LD_PRELOAD", support::artifacts().preload);
    }
    command
}

/// Starts the client and waits until it holds what it got (`--hold-until release`).
fn start_holding(sandbox: &Sandbox, guarded: bool, release: &GoFile, args: &[&str]) -> Running {
    let mut command = client(sandbox, guarded, args);
    command.args(["--hold-until", release.arg()]);
    let mut running = support::spawn(command);
    running.wait_for_line("holding until", CLIENT_DEADLINE);
    running
}

/// The `alloc ok` and `alloc fail` lines of a run.
fn allocations(finished: &Finished) -> (usize, Vec<&str>) {
    let ok = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with("alloc ok "))
        .count();
    let failed = finished
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("alloc fail "))
        .collect();
    (ok, failed)
}

/// The `meminfo <when>` line of a run: (free, total).
fn meminfo(stdout: &str, when: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("meminfo {when} ")))
        .unwrap_or_else(|| panic!("no meminfo {when} in:\n{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("free="), field("total="))
}

/// What the simulated card holds for process `pid`.
fn card_holds(sandbox: &Sandbox, pid: u32) -> u64 {
    let report = sandbox.sim_report();
    process(&report, pid).expect("the client is on the card")["devices"][0]["used_bytes"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn allocations_past_the_limit_are_refused_with_out_of_memory() {
    for mode in ANSWER_MODES {
        // 1 GiB per process, context included: 300 MiB + 7 x 100 MiB fit, the eighth does not.
        let mut sandbox = card(mode);
        sandbox.set_env("VRAMGUARD_LIMIT", "1GiB");
        let fitting = (GIB - CONTEXT) / (100 * MIB);
        let release = sandbox.go_file(&format!("limit-{mode}"));
        let args = ["--chunk", "100MiB", "--count", "12"];
        let running = start_holding(&sandbox, true, &release, &args);
        let pid = running.pid();
        assert_eq!(
            card_holds(&sandbox, pid),
            CONTEXT + fitting * 100 * MIB,
            "{mode}: what the card holds for it"
        );
        release.go();
        let finished = running.finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(2), "{mode}: {finished:?}");
        let (ok, failed) = allocations(&finished);
        assert_eq!(ok as u64, fitting, "{mode}: {finished:?}");
        assert_eq!(failed, [format!("{} {OUT_OF_MEMORY}", 100 * MIB)], "{mode}");
        assert!(
            finished.stderr.contains("vramguard: refused"),
            "{mode}: the guard refused it: {finished:?}"
        );
        let report = sandbox.sim_report();
        assert_eq!(device_u64(&report, 0, "refused"), 0, "{mode}: {report}");
        assert_eq!(device_u64(&report, 0, "used_bytes"), 0, "{mode}: all freed");

        // The control: without the guard the same twelve allocations all succeed.
        let finished = support::spawn(client(&sandbox, false, &args)).finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(0), "{mode}: {finished:?}");
        assert_eq!(allocations(&finished), (12, vec![]), "{mode}");
    }
}

#[test]
fn a_budget_held_by_another_guarded_process_is_respected() {
    for mode in ANSWER_MODES {
        // Budget 3.75 GiB (4 GiB less the 256 MiB reserve). A guarded C client holds 3 GiB and
        // its context: 468 MiB are left, enough for cuda-python's context and one 100 MiB chunk.
        let sandbox = card(mode);
        let uuid = sim_uuid(&sandbox.sim_report(), 0);
        let release = sandbox.go_file(&format!("budget-{mode}"));
        let holder = sandbox.start_holder(ClientPath::Direct, true, "3GiB", &release);
        let snap = snapshot(&sandbox);
        let budget = snap.devices[0].budget;
        let held = charged(&snap, holder.pid(), uuid);
        assert_eq!((budget, held), (4 * GIB - 256 * MIB, 3 * GIB + CONTEXT));
        let fitting = (budget - held - CONTEXT) / (100 * MIB);
        assert_eq!(fitting, 1);

        let args = ["--chunk", "100MiB", "--count", "5"];
        let finished = support::spawn(client(&sandbox, true, &args)).finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(2), "{mode}: {finished:?}");
        let (ok, failed) = allocations(&finished);
        assert_eq!(ok as u64, fitting, "{mode}: {finished:?}");
        assert_eq!(failed, [format!("{} {OUT_OF_MEMORY}", 100 * MIB)], "{mode}");
        let report = sandbox.sim_report();
        assert!(
            device_u64(&report, 0, "peak_bytes") <= budget,
            "{mode}: the card held more than the budget: {report}"
        );
        assert_eq!(device_u64(&report, 0, "refused"), 0, "{mode}: {report}");

        // The control: unguarded, the same client takes more than the guard left it (only the
        // card's capacity stops it).
        let finished = support::spawn(client(&sandbox, false, &args)).finish(CLIENT_DEADLINE);
        let (ok, _) = allocations(&finished);
        assert!(ok as u64 > fitting, "{mode}: {finished:?}");
        release.go();
        let holder = holder.finish(CLIENT_DEADLINE);
        assert_eq!(holder.status.code(), Some(0), "{mode}: {holder:?}");
    }
}

#[test]
fn mem_get_info_reports_the_guards_view() {
    for mode in ANSWER_MODES {
        // With a 1 GiB limit: the limit is the total, and free is what is left of it.
        let mut sandbox = card(mode);
        sandbox.set_env("VRAMGUARD_LIMIT", "1GiB");
        let args = ["--chunk", "100MiB", "--count", "2"];
        let finished = support::spawn(client(&sandbox, true, &args)).finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(0), "{mode}: {finished:?}");
        assert_eq!(
            meminfo(&finished.stdout, "before"),
            (GIB - CONTEXT, GIB),
            "{mode}: {finished:?}"
        );
        assert_eq!(
            meminfo(&finished.stdout, "after"),
            (GIB - CONTEXT - 200 * MIB, GIB),
            "{mode}"
        );

        // Without a limit, beside another guarded process: what `vramguard status` says of the
        // card's budget and its use, not the raw card's 4 GiB.
        sandbox.unset_env("VRAMGUARD_LIMIT");
        let release = sandbox.go_file(&format!("meminfo-{mode}"));
        let holder = sandbox.start_holder(ClientPath::Direct, true, "1GiB", &release);
        let client_release = sandbox.go_file(&format!("meminfo-client-{mode}"));
        let running = start_holding(&sandbox, true, &client_release, &args);
        let status = status_json(&sandbox);
        let device = &status["devices"][0];
        let budget = device["budget_bytes"].as_u64().expect("budget_bytes");
        let used = device["used_bytes"].as_u64().expect("used_bytes");
        assert_eq!(budget, 4 * GIB - 256 * MIB, "{status}");
        assert_eq!(used, (GIB + CONTEXT) + (CONTEXT + 200 * MIB), "{status}");
        client_release.go();
        let finished = running.finish(CLIENT_DEADLINE);
        assert_eq!(
            meminfo(&finished.stdout, "after"),
            (budget - used, budget),
            "{mode}: {finished:?}"
        );
        release.go();
        holder.finish(CLIENT_DEADLINE);

        // The control: the raw card, as cuda-python sees it without the guard.
        let finished = support::spawn(client(&sandbox, false, &args)).finish(CLIENT_DEADLINE);
        assert_eq!(
            meminfo(&finished.stdout, "before"),
            (4 * GIB - CONTEXT, 4 * GIB),
            "{mode}: {finished:?}"
        );
    }
}

/// `vramguard status --json` on the sandbox's ledger.
fn status_json(sandbox: &Sandbox) -> serde_json::Value {
    let mut command = sandbox.program(support::artifacts().cli);
    command.args(["status", "--json"]);
    let output = support::run_with_deadline(command, CLIENT_DEADLINE);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("status --json is JSON")
}
