//! The test clients reach the simulated driver each by its own path, and the simulator's call
//! counters prove which: client-direct through link-time symbols (`NEEDED libcuda.so.1`, no
//! lookups), client-dlsym through `dlopen`/`dlsym` (no `NEEDED`, no lookups), client-procaddr
//! through `cuGetProcAddress_v2` exactly as cudart does (every function fetched by lookup), and
//! the Python client through ctypes. Threads and fork work on every path.

mod support;

use std::process::Command;
use std::time::Duration;

use support::report::{calls, calls_with_prefix, device_u64, process};
use support::{ClientPath, Sandbox, clients, run_with_deadline};

const MIB: u64 = 1 << 20;

fn sandbox() -> Sandbox {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "200MiB");
    sandbox.init();
    sandbox
}

/// The `NEEDED` entries of an ELF file (via `readelf -d`).
fn needed(path: &std::path::Path) -> Vec<String> {
    let mut command = Command::new("readelf");
    command.arg("-d").arg(path);
    let output = run_with_deadline(command, support::HANG_GUARD);
    assert!(output.status.success(), "readelf -d {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect()
}

/// The undefined dynamic symbols of an ELF file (via `nm -D --undefined-only`).
fn undefined_symbols(path: &std::path::Path) -> Vec<String> {
    let mut command = Command::new("nm");
    command.args(["-D", "--undefined-only"]).arg(path);
    let output = run_with_deadline(command, support::HANG_GUARD);
    assert!(output.status.success(), "nm -D {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

/// How many entry points client-procaddr fetches through `cuGetProcAddress` (its FETCH lines).
fn procaddr_fetches() -> u64 {
    let source = std::fs::read_to_string(support::repo().join("tests/clients/bind_procaddr.c"))
        .expect("read bind_procaddr.c");
    source
        .lines()
        .filter(|l| l.trim_start().starts_with("FETCH("))
        .count() as u64
}

#[test]
fn each_client_reaches_the_driver_by_its_own_path() {
    let clients = clients();
    let direct_needed = needed(&clients.direct);
    assert!(
        direct_needed.iter().any(|n| n == "libcuda.so.1"),
        "{direct_needed:?}"
    );
    let direct_symbols = undefined_symbols(&clients.direct);
    for symbol in [
        "cuInit",
        "cuMemAlloc_v2",
        "cuMemFree_v2",
        "cuDevicePrimaryCtxRetain",
    ] {
        assert!(
            direct_symbols.iter().any(|s| s == symbol),
            "client-direct does not import {symbol}"
        );
    }
    for path in [&clients.dlsym, &clients.procaddr] {
        let list = needed(path);
        assert!(
            !list.iter().any(|n| n.starts_with("libcuda")),
            "{} links libcuda: {list:?}",
            path.display()
        );
        assert!(
            !undefined_symbols(path).iter().any(|s| s.starts_with("cu")),
            "{} imports driver symbols",
            path.display()
        );
    }

    let sandbox = sandbox();
    let fetches = procaddr_fetches();
    assert!(fetches >= 30, "client-procaddr fetches {fetches} functions");
    for path in ClientPath::ALL {
        let (run, pid) = sandbox.run_client(path, false, &["--chunk", "16MiB", "--count", "5"]);
        assert_eq!(run.status.code(), Some(0), "{path:?}: {run:?}");
        let summary = run.summary();
        assert_eq!(summary.path, path.name());
        assert_eq!(
            (summary.ok, summary.failed, summary.bytes),
            (5, 0, 80 * MIB),
            "{path:?}"
        );
        assert_eq!(summary.first_error, None);

        let report = sandbox.sim_report();
        assert_eq!(
            calls(&report, pid, "cuMemAlloc_v2"),
            5,
            "{path:?}: {}",
            process(&report, pid).unwrap()
        );
        assert_eq!(calls(&report, pid, "cuMemFree_v2"), 5, "{path:?}");
        assert_eq!(calls(&report, pid, "cuInit"), 1, "{path:?}");
        let lookups = calls_with_prefix(&report, pid, "cuGetProcAddress");
        match path {
            // The "" probe and "cuGetProcAddress" itself, then one lookup per function.
            ClientPath::Procaddr => {
                assert_eq!(lookups, fetches + 2, "client-procaddr's lookups");
                assert_eq!(calls(&report, pid, "cuGetProcAddress_v2"), fetches + 2);
            }
            _ => assert_eq!(lookups, 0, "{path:?} must not use cuGetProcAddress"),
        }
        assert_eq!(device_u64(&report, 0, "used_bytes"), 0);
    }
}

#[test]
fn the_procaddr_client_fetches_stream_functions_per_thread() {
    let sandbox = sandbox();
    let args = ["--api", "async", "--chunk", "8MiB", "--count", "3"];
    let (run, pid) = sandbox.run_client(ClientPath::Procaddr, false, &args);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let report = sandbox.sim_report();
    assert_eq!(calls(&report, pid, "cuMemAllocAsync_ptsz"), 3);
    assert_eq!(calls(&report, pid, "cuMemFreeAsync_ptsz"), 3);
    assert!(calls(&report, pid, "cuStreamSynchronize_ptsz") >= 1);
    assert_eq!(calls(&report, pid, "cuMemAllocAsync"), 0);

    let (direct, direct_pid) = sandbox.run_client(ClientPath::Direct, false, &args);
    assert_eq!(direct.status.code(), Some(0), "{direct:?}");
    let report = sandbox.sim_report();
    assert_eq!(calls(&report, direct_pid, "cuMemAllocAsync"), 3);
    assert_eq!(calls(&report, direct_pid, "cuMemAllocAsync_ptsz"), 0);
}

#[test]
fn threads_allocate_concurrently_on_every_path() {
    let sandbox = sandbox();
    for path in ClientPath::ALL {
        let (run, pid) = sandbox.run_client(
            path,
            false,
            &["--threads", "4", "--chunk", "8MiB", "--count", "6"],
        );
        assert_eq!(run.status.code(), Some(0), "{path:?}: {run:?}");
        let summary = run.summary();
        assert_eq!((summary.ok, summary.bytes), (24, 24 * 8 * MIB), "{path:?}");
        let report = sandbox.sim_report();
        assert_eq!(calls(&report, pid, "cuMemAlloc_v2"), 24, "{path:?}");
        assert_eq!(
            calls(&report, pid, "cuCtxSetCurrent"),
            5,
            "{path:?}: the main thread and each worker"
        );
    }
}

#[test]
fn a_forked_child_allocates_as_its_own_process() {
    let sandbox = sandbox();
    for path in ClientPath::ALL {
        let mut holder = sandbox.start_client(
            path,
            false,
            &[
                "--fork",
                "--chunk",
                "64MiB",
                "--count",
                "2",
                "--hold-until",
                sandbox.until_killed(),
            ],
        );
        holder.wait_for_line("holding", support::HANG_GUARD);
        holder.wait_for_line("holding", support::HANG_GUARD);
        let pid = holder.pid();
        let report = sandbox.sim_report();
        // Parent and child: a context and 2 x 64 MiB each, in two process records.
        assert_eq!(
            device_u64(&report, 0, "used_bytes"),
            2 * (200 + 128) * MIB,
            "{path:?}: {report}"
        );
        let children: Vec<&serde_json::Value> = report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["alive"].as_bool() == Some(true) && p["pid"].as_u64() != Some(u64::from(pid))
            })
            .collect();
        assert_eq!(children.len(), 1, "{path:?}: one live child: {report}");
        assert_eq!(
            children[0]["devices"][0]["used_bytes"].as_u64(),
            Some((200 + 128) * MIB)
        );
        assert_eq!(
            process(&report, pid).unwrap()["devices"][0]["used_bytes"].as_u64(),
            Some((200 + 128) * MIB)
        );
        holder.kill();
        // The orphaned child still holds until it finishes; killing it returns its memory too.
        let child_pid = children[0]["pid"].as_i64().unwrap() as i32;
        // SAFETY: kill(2) on a pid we just read from the report of our own sandbox.
        unsafe { libc::kill(child_pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + support::HANG_GUARD;
        while device_u64(&sandbox.sim_report(), 0, "used_bytes") != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "hang guard: {path:?}: memory not returned after the kills"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let (run, _) =
            sandbox.run_client(path, false, &["--fork", "--chunk", "64MiB", "--count", "2"]);
        assert_eq!(run.status.code(), Some(0), "{path:?}: {run:?}");
        assert_eq!(
            run.summary().ok,
            4,
            "{path:?}: parent and child each allocate"
        );
    }
}

#[test]
fn allocation_failures_give_the_documented_exit_codes() {
    let sandbox = sandbox();
    for path in ClientPath::ALL {
        let (run, _) = sandbox.run_client(
            path,
            false,
            &["--chunk", "1GiB", "--count", "5", "--keep-going"],
        );
        assert_eq!(run.status.code(), Some(2), "{path:?}: {run:?}");
        let summary = run.summary();
        // 4 GiB - 200 MiB context: three 1 GiB chunks fit.
        assert_eq!((summary.ok, summary.failed), (3, 2), "{path:?}");
        assert_eq!(
            summary.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY")
        );
    }
}
