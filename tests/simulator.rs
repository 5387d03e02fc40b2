//! The simulated driver's own behaviour, which every other test relies on: physical memory
//! shared by all processes and bounded by the card, memory of killed processes given back,
//! context cost, fragile mode and reset, `CUDA_VISIBLE_DEVICES`, versioned `cuGetProcAddress`
//! lookups, and every allocation family charged as the real driver charges it.

mod support;

use std::time::Duration;

use support::report::{calls, device_u64, process};
use support::{ClientPath, Sandbox, allocations};

const MIB: u64 = 1 << 20;
/// How long a client may take to hold its memory, or to finish: only catches a hang.
const HOLD_TIMEOUT: Duration = support::HANG_GUARD;
const FINISH_TIMEOUT: Duration = support::HANG_GUARD;

fn card(devices: &str, context_cost: &str) -> Sandbox {
    let mut sandbox = Sandbox::new(devices);
    sandbox.set_env("SIMCUDA_CONTEXT_COST", context_cost);
    sandbox.init();
    sandbox
}

#[test]
fn physical_memory_is_shared_and_bounded_across_processes() {
    let sandbox = card("1GiB", "100MiB");
    let holder = sandbox.start_holding(
        ClientPath::Direct,
        false,
        &[
            "--chunk",
            "200MiB",
            "--count",
            "3",
            "--hold-until",
            sandbox.until_killed(),
        ],
        HOLD_TIMEOUT,
    );
    let report = sandbox.sim_report();
    assert_eq!(
        device_u64(&report, 0, "used_bytes"),
        700 * MIB,
        "3 x 200 MiB + one context"
    );
    let holder_record = process(&report, holder.pid()).expect("the holder is in the report");
    assert_eq!(
        holder_record["devices"][0]["used_bytes"].as_u64(),
        Some(700 * MIB)
    );
    assert_eq!(holder_record["devices"][0]["contexts"].as_u64(), Some(1));

    // 1024 - 700 - 100 (second context) = 224 MiB left: one 200 MiB chunk fits, the next does not.
    let (second, second_pid) = sandbox.run_client(
        ClientPath::Dlsym,
        false,
        &["--chunk", "200MiB", "--count", "3"],
    );
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let summary = second.summary();
    assert_eq!((summary.ok, summary.failed), (1, 1));
    assert_eq!(
        summary.first_error.as_deref(),
        Some("CUDA_ERROR_OUT_OF_MEMORY")
    );

    let report = sandbox.sim_report();
    assert_eq!(device_u64(&report, 0, "peak_bytes"), 1000 * MIB);
    assert!(device_u64(&report, 0, "peak_bytes") <= device_u64(&report, 0, "capacity_bytes"));
    assert_eq!(device_u64(&report, 0, "refused"), 1);
    let refusal = &report["devices"][0]["refusals"][0];
    assert_eq!(refusal["pid"].as_u64(), Some(u64::from(second_pid)));
    assert_eq!(refusal["bytes"].as_u64(), Some(200 * MIB));
    assert_eq!(
        device_u64(&report, 0, "used_bytes"),
        700 * MIB,
        "the second process's memory went back at exit"
    );

    let finished = holder.kill();
    assert!(!finished.status.success());
    assert_eq!(device_u64(&sandbox.sim_report(), 0, "used_bytes"), 0);
}

#[test]
fn memory_of_a_killed_process_returns_to_the_card() {
    let sandbox = card("2GiB", "100MiB");
    let holder = sandbox.start_holding(
        ClientPath::Procaddr,
        false,
        &[
            "--chunk",
            "500MiB",
            "--count",
            "3",
            "--hold-until",
            sandbox.until_killed(),
            "--threads",
            "1",
        ],
        HOLD_TIMEOUT,
    );
    let pid = holder.pid();
    assert_eq!(
        device_u64(&sandbox.sim_report(), 0, "used_bytes"),
        1600 * MIB
    );

    // While it holds, another process cannot get 1 GiB.
    let (refused, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "1GiB"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    holder.kill();
    let report = sandbox.sim_report();
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0, "{report}");
    let record = process(&report, pid).expect("the killed process is remembered");
    assert_eq!(record["alive"].as_bool(), Some(false));
    assert!(
        record["devices"].as_array().is_some_and(|d| d.is_empty()),
        "{record}"
    );

    let (after, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "1GiB"]);
    assert_eq!(after.status.code(), Some(0), "{after:?}");
}

#[test]
fn a_killed_process_is_reclaimed_when_a_request_would_not_fit() {
    // No report in between: the allocation that does not fit reclaims the dead holder itself.
    let sandbox = card("1GiB", "100MiB");
    let holder = sandbox.start_holding(
        ClientPath::Direct,
        false,
        &["--chunk", "700MiB", "--hold-until", sandbox.until_killed()],
        HOLD_TIMEOUT,
    );
    holder.kill();
    let (after, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "800MiB"]);
    assert_eq!(after.status.code(), Some(0), "{after:?}");
    assert_eq!(device_u64(&sandbox.sim_report(), 0, "refused"), 0);
}

#[test]
fn every_context_costs_device_memory() {
    let sandbox = card("4GiB", "256MiB");
    let (run, pid) =
        sandbox.run_client(ClientPath::Direct, false, &["--api", "ctx", "--count", "3"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(
        allocations(&run.stdout),
        vec![256 * MIB; 3],
        "each cuCtxCreate shows in cuMemGetInfo"
    );
    let report = sandbox.sim_report();
    assert_eq!(
        device_u64(&report, 0, "peak_bytes"),
        4 * 256 * MIB,
        "primary + 3 created contexts"
    );
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0);
    assert_eq!(calls(&report, pid, "cuCtxCreate_v2"), 3);
    assert_eq!(calls(&report, pid, "cuCtxDestroy_v2"), 3);

    // A context that does not fit is refused like any allocation.
    let small = card("600MiB", "256MiB");
    let (run, _) = small.run_client(ClientPath::Direct, false, &["--api", "ctx", "--count", "3"]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(run.summary().ok, 1);
}

#[test]
fn fragile_mode_poisons_the_card_until_reset() {
    let mut sandbox = Sandbox::new("1GiB");
    sandbox
        .set_env("SIMCUDA_FRAGILE", "1")
        .set_env("SIMCUDA_CONTEXT_COST", "100MiB");
    sandbox.init();
    let (fits, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "500MiB"]);
    assert_eq!(fits.status.code(), Some(0), "{fits:?}");
    assert!(
        !sandbox.sim_report()["devices"][0]["poisoned"]
            .as_bool()
            .unwrap()
    );

    let (too_big, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "2GiB"]);
    assert_eq!(too_big.status.code(), Some(2), "{too_big:?}");
    assert_eq!(
        sandbox.sim_report()["devices"][0]["poisoned"].as_bool(),
        Some(true)
    );

    for path in [ClientPath::Direct, ClientPath::Python] {
        let (after, _) = sandbox.run_client(path, false, &["--chunk", "1MiB"]);
        assert_eq!(
            after.status.code(),
            Some(3),
            "cuInit fails after the poisoning: {after:?}"
        );
        assert!(
            after.stdout.contains("init fail CUDA_ERROR_UNKNOWN"),
            "{after:?}"
        );
    }

    sandbox.reset();
    let report = sandbox.sim_report();
    assert_eq!(report["devices"][0]["poisoned"].as_bool(), Some(false));
    assert_eq!(device_u64(&report, 0, "peak_bytes"), 0);
    assert_eq!(device_u64(&report, 0, "refused"), 0);
    let (recovered, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "500MiB"]);
    assert_eq!(recovered.status.code(), Some(0), "{recovered:?}");
}

#[test]
fn cuda_visible_devices_selects_and_orders_devices() {
    let mut sandbox = card("1GiB;size=2GiB,name=Big;3GiB", "0");
    let report = sandbox.sim_report();
    let uuid_of = |i: usize| report["devices"][i]["uuid"].as_str().unwrap().to_string();
    assert_eq!(report["devices"][1]["name"].as_str(), Some("Big"));

    // (CUDA_VISIBLE_DEVICES, --device, chunk, expected exit code)
    let prefix = uuid_of(1)[..12].to_string();
    let cases: Vec<(String, &str, &str, i32)> = vec![
        ("2,0".into(), "0", "2500MiB", 0), // ordinal 0 is the 3 GiB card
        ("2,0".into(), "1", "1500MiB", 2), // ordinal 1 is the 1 GiB card
        ("0".into(), "0", "2500MiB", 2),
        (uuid_of(2), "0", "2500MiB", 0),
        (prefix.clone(), "0", "1500MiB", 0), // a unique uuid prefix names the 2 GiB card
        (format!("{prefix},5,2"), "1", "1MiB", 1), // an invalid entry ends the list: no ordinal 1
        ("1,1".into(), "1", "1MiB", 1),      // a repeat ends the list too
    ];
    for (visible, device, chunk, expected) in cases {
        sandbox.set_env("CUDA_VISIBLE_DEVICES", &visible);
        let (run, _) = sandbox.run_client(
            ClientPath::Direct,
            false,
            &["--device", device, "--chunk", chunk],
        );
        assert_eq!(
            run.status.code(),
            Some(expected),
            "CUDA_VISIBLE_DEVICES={visible} --device {device} --chunk {chunk}: {run:?}"
        );
    }
    sandbox.set_env("CUDA_VISIBLE_DEVICES", "");
    let (none, _) = sandbox.run_client(ClientPath::Direct, false, &[]);
    assert_eq!(none.status.code(), Some(3), "{none:?}");
    assert!(none.stdout.contains("CUDA_ERROR_NO_DEVICE"), "{none:?}");
}

#[test]
fn versioned_lookups_keep_the_abi_that_was_asked_for() {
    let sandbox = card("4GiB", "300MiB");
    let (run, pid) = sandbox.run_client(ClientPath::Procaddr, false, &["--check-abi"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(
        run.stdout.contains("abi-summary failures=0"),
        "{}",
        run.stdout
    );
    for line in [
        "abi cuMemAllocAsync version=11010 flags=0 status=2 result=CUDA_ERROR_NOT_FOUND",
        "abi cuNoSuchFunction version=12000 flags=0 status=1 result=CUDA_ERROR_NOT_FOUND",
        "abi  version=12000 flags=0 status=1 result=CUDA_ERROR_NOT_FOUND",
        "abi-call cuMemAlloc(legacy) result=CUDA_SUCCESS ptr=0x",
        "canary=intact",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("CLOBBERED"), "{}", run.stdout);
    let report = sandbox.sim_report();
    for (name, expected) in [
        ("cuMemAlloc", 1),
        ("cuMemAlloc_v2", 2),
        ("cuMemFree", 2),
        ("cuMemFree_v2", 2),
        ("cuMemGetInfo", 1),
        ("cuMemGetInfo_v2", 1),
        ("cuDeviceTotalMem", 1),
        ("cuDeviceTotalMem_v2", 1),
        ("cuMemAllocPitch", 1),
        ("cuCtxCreate", 1),
        ("cuCtxCreate_v2", 1),
        ("cuCtxCreate_v3", 1),
        ("cuCtxCreate_v4", 1),
        ("cuMemAllocAsync", 1),
        ("cuMemAllocAsync_ptsz", 1),
        ("cuMemFreeAsync", 2),
        ("cuMemFreeAsync_ptsz", 2),
        ("cuMemAllocFromPoolAsync", 1),
        ("cuMemAllocFromPoolAsync_ptsz", 1),
        ("cuStreamSynchronize", 2),
        ("cuStreamSynchronize_ptsz", 2),
        ("cuDevicePrimaryCtxRelease", 1),
        ("cuDevicePrimaryCtxRelease_v2", 1),
        ("cuGetProcAddress", 1),
    ] {
        assert_eq!(
            calls(&report, pid, name),
            expected,
            "calls of {name}: {}",
            process(&report, pid).unwrap()
        );
    }
    assert!(calls(&report, pid, "cuGetProcAddress_v2") > 30);
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0);
}

/// Runs one allocation family with a hold and checks the card charged exactly what the client
/// reports (plus its context), and that everything came back at exit.
fn check_family(
    sandbox: &Sandbox,
    path: ClientPath,
    api: &str,
    chunk: &str,
    count: &str,
    context: u64,
) -> Vec<u64> {
    let running = sandbox.start_holding(
        path,
        false,
        &[
            "--api",
            api,
            "--chunk",
            chunk,
            "--count",
            count,
            "--hold-until",
            sandbox.until_killed(),
        ],
        HOLD_TIMEOUT,
    );
    let report = sandbox.sim_report();
    let pid = running.pid();
    let held =
        process(&report, pid).expect("the client is in the report")["devices"][0]["used_bytes"]
            .as_u64()
            .unwrap_or(0);
    let finished = running.kill();
    let sizes = allocations(&finished.stdout);
    assert_eq!(
        sizes.len(),
        count.parse::<usize>().unwrap(),
        "{api}: {finished:?}"
    );
    assert_eq!(
        held,
        context + sizes.iter().sum::<u64>(),
        "{api}: the card holds what the client got"
    );
    assert_eq!(
        device_u64(&sandbox.sim_report(), 0, "used_bytes"),
        0,
        "{api}: all back after the kill"
    );

    let (clean, _) = sandbox.run_client(
        path,
        false,
        &[
            "--api",
            api,
            "--chunk",
            chunk,
            "--count",
            count,
            "--threads",
            "2",
        ],
    );
    assert_eq!(clean.status.code(), Some(0), "{api}: {clean:?}");
    assert_eq!(
        device_u64(&sandbox.sim_report(), 0, "used_bytes"),
        0,
        "{api}: all freed by an orderly exit"
    );
    sizes
}

#[test]
fn every_allocation_family_is_charged_like_the_driver_charges_it() {
    let context = 100 * MIB;
    let sandbox = card("8GiB", "100MiB");
    // (api, chunk, count, bytes the card charges for each allocation)
    let families: [(&str, &str, &str, u64); 9] = [
        ("default", "10MiB", "3", 10 * MIB),
        ("managed", "10MiB", "2", 10 * MIB),
        // Pitch: width 1000 rounds up to a 1024-byte pitch; 10 MiB / 1024 rows.
        ("pitch", "10MiB", "2", 10 * MIB),
        ("async", "30MiB", "2", 30 * MIB),
        ("pool", "30MiB", "2", 30 * MIB),
        // VMM: 20 MiB physical pages; 30 MiB rounds up to two of them.
        ("vmm", "30MiB", "3", 40 * MIB),
        ("array", "16MiB", "2", 16 * MIB),
        ("array3d", "16MiB", "2", 16 * MIB),
        // Mipmapped 2048x2048 float, two levels: 16 MiB + 4 MiB.
        ("mipmapped", "16MiB", "2", 20 * MIB),
    ];
    for (api, chunk, count, each) in families {
        assert_eq!(
            check_family(&sandbox, ClientPath::Direct, api, chunk, count, context),
            vec![each; count.parse().unwrap()],
            "{api}"
        );
    }
}

#[test]
fn pools_keep_freed_memory_until_synchronize_and_vmm_until_unmapped() {
    // The VMM family through Python: the physical pages stay charged while mapped.
    let sandbox = card("1GiB", "100MiB");
    let vmm = sandbox.start_holding(
        ClientPath::Python,
        false,
        &[
            "--api",
            "vmm",
            "--chunk",
            "200MiB",
            "--count",
            "5",
            "--keep-going",
            "--hold-until",
            sandbox.until_killed(),
        ],
        HOLD_TIMEOUT,
    );
    let finished = vmm.kill();
    // 1024 - 100 = 924 MiB: four 200 MiB chunks fit, the fifth fails part-way and is undone.
    assert_eq!(
        allocations(&finished.stdout),
        vec![200 * MIB; 4],
        "{finished:?}"
    );
    assert!(
        finished
            .stdout
            .contains("alloc fail 209715200 CUDA_ERROR_OUT_OF_MEMORY"),
        "{finished:?}"
    );
    let report = sandbox.sim_report();
    assert_eq!(
        device_u64(&report, 0, "peak_bytes"),
        1020 * MIB,
        "the failed chunk's pages mapped before the failure"
    );
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0);

    // Pools: --free-each frees with cuMemFreeAsync + cuStreamSynchronize, so the pool shrinks
    // back each time and eight 300 MiB allocations fit in one card's worth of memory.
    let (pool, _) = sandbox.run_client(
        ClientPath::Direct,
        false,
        &[
            "--api",
            "pool",
            "--chunk",
            "300MiB",
            "--count",
            "8",
            "--free-each",
        ],
    );
    assert_eq!(pool.status.code(), Some(0), "{pool:?}");
    assert!(device_u64(&sandbox.sim_report(), 0, "peak_bytes") <= 1024 * MIB);
}

#[test]
fn the_report_lists_processes_with_their_calls() {
    let sandbox = card("4GiB", "300MiB");
    let (run, pid) = sandbox.run_client(
        ClientPath::Direct,
        false,
        &["--chunk", "1MiB", "--count", "4"],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let report = sandbox.sim_report();
    let record = process(&report, pid).expect("listed");
    assert_eq!(record["alive"].as_bool(), Some(false));
    assert_eq!(calls(&report, pid, "cuInit"), 1);
    assert_eq!(calls(&report, pid, "cuMemAlloc_v2"), 4);
    assert_eq!(calls(&report, pid, "cuMemFree_v2"), 4);
    let human = support::run_with_deadline(sandbox.simcuda(&["report"]), support::HANG_GUARD);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("Simulated GPU 0") && text.contains(&format!("process {pid} (exited)")),
        "{text}"
    );
}

#[test]
fn liveness_holds_across_pid_namespaces_without_pid_confusion() {
    // Two holders, each pid 1 in its own PID namespace: the card tells them apart by their
    // kernel-held locks, not by pid, and gives back exactly the killed one's memory.
    let sandbox = card("2GiB", "100MiB");
    let start = |chunk: &str| {
        let mut command = sandbox.program("unshare");
        command
            .args(support::pid_namespace::unshare_pid_args())
            .arg(&support::clients().direct)
            .args(["--chunk", chunk, "--hold-until", sandbox.until_killed()]);
        let mut running = support::spawn(command);
        running.wait_for_line("holding", HOLD_TIMEOUT);
        running
    };
    let first = start("300MiB");
    let second = start("500MiB");
    let report = sandbox.sim_report();
    assert_eq!(device_u64(&report, 0, "used_bytes"), 1000 * MIB);
    let alive_pid_one: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"].as_u64() == Some(1) && p["alive"].as_bool() == Some(true))
        .map(|p| p["devices"][0]["used_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(alive_pid_one.len(), 2, "{report}");

    first.kill(); // unshare dies; --kill-child takes the namespace's process with it
    let deadline = std::time::Instant::now() + support::HANG_GUARD;
    loop {
        let used = device_u64(&sandbox.sim_report(), 0, "used_bytes");
        if used == 600 * MIB {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hang guard: used {used} after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    second.kill();
}

#[test]
fn concurrent_processes_never_overcommit_the_card() {
    // Eight processes x 4 threads race for 50 MiB chunks on a 1 GiB card: every success is
    // charged, every failure is a recorded refusal, and the peak never passes the capacity. Each
    // holds what it got until all eight are done (one alone would fit).
    let sandbox = card("1GiB", "0");
    let release = sandbox.go_file("release");
    let mut racers: Vec<support::Running> = (0..8)
        .map(|i| {
            let path = [ClientPath::Direct, ClientPath::Dlsym, ClientPath::Procaddr][i % 3];
            sandbox.start_client(
                path,
                false,
                &[
                    "--threads",
                    "4",
                    "--chunk",
                    "50MiB",
                    "--count",
                    "5",
                    "--keep-going",
                    "--hold-until",
                    release.arg(),
                ],
            )
        })
        .collect();
    for racer in &mut racers {
        racer.wait_for_line("holding", FINISH_TIMEOUT);
    }
    release.go();
    let mut ok = 0;
    let mut failed = 0;
    for racer in racers {
        let finished = racer.finish(FINISH_TIMEOUT);
        let summary = finished.summary();
        assert!(
            matches!(finished.status.code(), Some(0) | Some(2)),
            "{finished:?}"
        );
        ok += summary.ok;
        failed += summary.failed;
    }
    let report = sandbox.sim_report();
    assert_eq!(ok + failed, 8 * 4 * 5);
    assert!(failed > 0, "the card is too small for all of them");
    assert_eq!(device_u64(&report, 0, "refused"), failed);
    assert!(device_u64(&report, 0, "peak_bytes") <= 1024 * MIB);
    assert!(
        device_u64(&report, 0, "peak_bytes") > 1024 * MIB - 50 * MIB,
        "the card filled up"
    );
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0);
}

#[test]
fn latency_is_added_to_each_allocation_and_free() {
    let mut sandbox = card("1GiB", "0");
    sandbox.set_env("SIMCUDA_LATENCY", "2ms");
    let slow_start = std::time::Instant::now();
    let (slow, _) = sandbox.run_client(
        ClientPath::Direct,
        false,
        &["--chunk", "1MiB", "--count", "100", "--free-each"],
    );
    let slow_time = slow_start.elapsed();
    assert_eq!(slow.status.code(), Some(0), "{slow:?}");
    // 100 allocations + 100 frees, 2 ms each (however fast the machine: the simulator spins).
    assert!(slow_time >= Duration::from_millis(400), "{slow_time:?}");
}

#[test]
fn reset_drops_every_allocation_and_live_processes_notice() {
    let sandbox = card("1GiB", "100MiB");
    let release = sandbox.go_file("release");
    let holder = sandbox.start_holding(
        ClientPath::Direct,
        false,
        &["--chunk", "500MiB", "--hold-until", release.arg()],
        HOLD_TIMEOUT,
    );
    assert_eq!(
        device_u64(&sandbox.sim_report(), 0, "used_bytes"),
        600 * MIB
    );
    sandbox.reset();
    assert_eq!(device_u64(&sandbox.sim_report(), 0, "used_bytes"), 0);
    let (other, _) = sandbox.run_client(ClientPath::Direct, false, &["--chunk", "800MiB"]);
    assert_eq!(
        other.status.code(),
        Some(0),
        "the whole card is free again: {other:?}"
    );
    // The holder's allocations died with the reset: its late frees fail, and take nothing
    // from the card (no wrap-around).
    release.go();
    let finished = holder.finish(FINISH_TIMEOUT);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(finished.stdout.contains("free fail"), "{finished:?}");
    let report = sandbox.sim_report();
    assert_eq!(device_u64(&report, 0, "used_bytes"), 0);
    assert_eq!(device_u64(&report, 0, "peak_bytes"), 900 * MIB);
}
