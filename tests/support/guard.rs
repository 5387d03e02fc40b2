//! Helpers of the interposer's integration tests (`tests/guard_*.rs`), on top of `support`:
//! running several clients at once, reading the ledger while they hold memory, and building the
//! second `LD_PRELOAD` interposer of `tests/interposers/`.
#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vramguard_core::ledger::{Ledger, ProcessSnapshot, Snapshot};

use super::support::{self, ClientPath, Finished, Running, Sandbox};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// How long any single client may take before the test fails: only catches a hang.
pub const CLIENT_DEADLINE: Duration = support::HANG_GUARD;

/// The `VRAMGUARD_WAIT_TIMEOUT` of a program that must get its memory once the test makes room:
/// a wait that only ends at a hang, as long as [`CLIENT_DEADLINE`].
pub fn hang_wait_timeout() -> String {
    format!("{}s", CLIENT_DEADLINE.as_secs())
}

/// 5 x 100 MiB under a 550 MiB limit: the context and two chunks fit, the third is refused by the
/// guard (the driver never sees it).
pub fn limited_client(sandbox: &Sandbox, path: ClientPath) -> Command {
    let mut command = sandbox.command(path, true);
    command
        .args(["--chunk", "100MiB", "--count", "5"])
        .env("VRAMGUARD_LIMIT", "550MiB");
    command
}

/// Runs a guarded [`limited_client`] with `dir` as `VRAMGUARD_DIR` through the direct, procaddr
/// and Python paths under each `VRAMGUARD_ON_ERROR`: see [`check_unusable_ledger_with`].
pub fn check_unusable_ledger(sandbox: &Sandbox, dir: &std::path::Path, what: &str) -> Vec<String> {
    check_unusable_ledger_with(
        sandbox,
        what,
        &[ClientPath::Direct, ClientPath::Procaddr, ClientPath::Python],
        |mut command| {
            command.env("VRAMGUARD_DIR", dir);
            command
        },
    )
}

/// Runs a guarded [`limited_client`] of each of `paths` under each `VRAMGUARD_ON_ERROR`, its
/// command made by `prepare` (which points it at the unusable ledger, or runs it in a private
/// mount), and checks that the program exits by itself, never by a signal, after exactly one
/// message of the guard: under `open` the five allocations pass through (the limit is not
/// applied), under `closed` they are refused with `CUDA_ERROR_OUT_OF_MEMORY`. Returns the
/// message of every run.
pub fn check_unusable_ledger_with(
    sandbox: &Sandbox,
    what: &str,
    paths: &[ClientPath],
    prepare: impl Fn(Command) -> Command,
) -> Vec<String> {
    let mut messages = Vec::new();
    for &path in paths {
        for on_error in ["open", "closed"] {
            let mut command = limited_client(sandbox, path);
            command.env("VRAMGUARD_ON_ERROR", on_error);
            let finished = run(prepare(command));
            let context = format!("{what}, {on_error}, {path:?}: {finished:?}");
            assert!(finished.status.code().is_some(), "killed: {context}");
            let summary = finished.summary();
            if on_error == "open" {
                assert_eq!(finished.status.code(), Some(0), "{context}");
                assert_eq!(summary.ok, 5, "open: calls pass through: {context}");
            } else {
                assert_eq!(
                    summary.first_error.as_deref(),
                    Some("CUDA_ERROR_OUT_OF_MEMORY"),
                    "{context}"
                );
                assert_eq!(summary.ok, 0, "{context}");
            }
            let lines = guard_lines(&finished.stderr);
            assert_eq!(lines.len(), 1, "one message: {context}");
            assert!(
                lines[0].contains("ledger")
                    && lines[0].contains(&format!("VRAMGUARD_ON_ERROR={on_error}")),
                "{context}"
            );
            messages.push(lines[0].to_string());
        }
    }
    messages
}

/// Starts every command, then waits for each (each with its deadline).
pub fn run_together(commands: Vec<Command>) -> Vec<Finished> {
    let running: Vec<Running> = commands.into_iter().map(support::spawn).collect();
    running
        .into_iter()
        .map(|r| r.finish(CLIENT_DEADLINE))
        .collect()
}

/// Runs one command to completion with the client deadline.
pub fn run(command: Command) -> Finished {
    support::spawn(command).finish(CLIENT_DEADLINE)
}

/// A snapshot of the sandbox's ledger (which must exist).
pub fn snapshot(sandbox: &support::Sandbox) -> Snapshot {
    let ledger = Ledger::open_existing(&sandbox.ledger_dir).unwrap_or_else(|e| {
        panic!(
            "the ledger in {} cannot be read: {e}",
            sandbox.ledger_dir.display()
        )
    });
    ledger.snapshot()
}

/// The ledger record of process `pid`.
pub fn process(snapshot: &Snapshot, pid: u32) -> Option<&ProcessSnapshot> {
    snapshot
        .processes
        .iter()
        .find(|p| p.pid == pid as i32 && p.alive)
}

/// What `pid` is charged on the device of `uuid` (0 if nothing).
pub fn charged(snapshot: &Snapshot, pid: u32, uuid: [u8; 16]) -> u64 {
    process(snapshot, pid)
        .and_then(|p| p.devices.iter().find(|d| d.uuid == uuid))
        .map_or(0, |d| d.charged)
}

/// Polls the ledger until `ready` holds; panics after `timeout`.
pub fn wait_for_ledger(
    sandbox: &support::Sandbox,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(ledger) = Ledger::open_existing(&sandbox.ledger_dir) {
            let snapshot = ledger.snapshot();
            if ready(&snapshot) {
                return snapshot;
            }
            if Instant::now() > deadline {
                panic!("ledger never showed {what} within {timeout:?}: {snapshot:?}");
            }
        } else if Instant::now() > deadline {
            panic!(
                "no ledger in {} within {timeout:?}",
                sandbox.ledger_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The UUID (16 bytes) of simulated device `index` from the simulator's report.
pub fn sim_uuid(report: &serde_json::Value, index: usize) -> [u8; 16] {
    let text = report["devices"][index]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("device {index} has no uuid: {report}"));
    vramguard_core::cuda::CuUuid::parse(text)
        .unwrap_or_else(|| panic!("bad uuid {text}"))
        .0
}

/// Checks the card was never over-committed, never refused a request and is not poisoned.
pub fn assert_card_safe(report: &serde_json::Value, index: usize) {
    let device = &report["devices"][index];
    let peak = device["peak_bytes"].as_u64().expect("peak_bytes");
    let capacity = device["capacity_bytes"].as_u64().expect("capacity_bytes");
    assert!(
        peak <= capacity,
        "over-committed: peak {peak} > capacity {capacity}: {report}"
    );
    assert_eq!(
        device["refused"].as_u64(),
        Some(0),
        "the driver saw requests it could not hold: {report}"
    );
    assert_eq!(
        device["poisoned"].as_bool(),
        Some(false),
        "the card was poisoned: {report}"
    );
}

/// Lines of stderr that come from the guard.
pub fn guard_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("vramguard: "))
        .collect()
}

/// Builds `tests/interposers/<source>` (which may include `tests/clients/cuda_min.h`) into
/// `<target>/clients/<output>` with `cc` and `args`, and returns its path.
fn build_c(source: &str, output: &str, args: &[&str]) -> PathBuf {
    let source = support::repo().join("tests/interposers").join(source);
    let header = support::repo().join("tests/clients/cuda_min.h");
    let steps = support::repo().join("tests/interposers/steps.h");
    let go_file = support::repo().join("tests/clients/go_file.h");
    let mut cc_args: Vec<&OsStr> = ["-O1", "-Wall", "-Werror"].map(OsStr::new).to_vec();
    cc_args.push(source.as_os_str());
    cc_args.extend(args.iter().map(OsStr::new));
    support::build_c(output, &[source.clone(), header, steps, go_file], &cc_args)
}

/// The second `LD_PRELOAD` interposer (`tests/interposers/second.c`).
pub fn second_interposer() -> PathBuf {
    build_c(
        "second.c",
        "libsecond-interposer.so",
        &["-shared", "-fPIC", "-ldl"],
    )
}

/// The step-by-step lifecycle program (`tests/interposers/lifecycles.c`), linked with `-lcuda`.
pub fn lifecycles_program() -> PathBuf {
    build_with_driver("lifecycles")
}

/// `tests/interposers/reused_context.c`, linked with `-lcuda` against the simulator.
pub fn reused_context_program() -> PathBuf {
    build_with_driver("reused_context")
}

/// `tests/interposers/threads_devices.c`, linked with `-lcuda` against the simulator.
pub fn threads_devices_program() -> PathBuf {
    build_with_driver("threads_devices")
}

/// `tests/interposers/<name>.c`, linked with `-lcuda` (and `-lpthread`) against the simulator.
fn build_with_driver(name: &str) -> PathBuf {
    let simulator = support::artifacts().simulator;
    let dir = format!(
        "-L{}",
        simulator
            .parent()
            .expect("the simulator's directory")
            .display()
    );
    build_c(&format!("{name}.c"), name, &[&dir, "-lcuda", "-lpthread"])
}
