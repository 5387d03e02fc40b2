//! What the guard asks the driver, and memory of unguarded programs that appears while guarded
//! ones run: one extra driver call per allocation and none per free, the driver's free-memory
//! figure asked only now and then far from the edge, and yet no guarded request ever reaching a
//! driver that cannot hold it.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::collections::BTreeMap;

use guard_support::{CLIENT_DEADLINE, MIB, charged, sim_uuid, snapshot};
use support::report::process;
use support::{ClientPath, Sandbox};

/// Every driver entry point `pid` called, with its count.
fn calls(report: &serde_json::Value, pid: u32) -> BTreeMap<String, u64> {
    process(report, pid)
        .and_then(|p| p["calls"].as_object())
        .unwrap_or_else(|| panic!("no calls of pid {pid} in {report}"))
        .iter()
        .map(|(name, count)| (name.clone(), count.as_u64().unwrap_or(0)))
        .collect()
}

#[test]
fn far_from_the_edge_an_allocation_costs_one_driver_call_and_a_free_none() {
    const PAIRS: u64 = 2000;
    let sandbox = Sandbox::new("16GiB");
    sandbox.init();
    let args = ["--chunk", "1MiB", "--count", "2000", "--free-each"];
    let (unguarded, plain_pid) = sandbox.run_client(ClientPath::Direct, false, &args);
    let (guarded, guarded_pid) = sandbox.run_client(ClientPath::Direct, true, &args);
    for finished in [&unguarded, &guarded] {
        assert_eq!(finished.status.code(), Some(0), "{finished:?}");
        assert_eq!(finished.summary().ok, PAIRS, "{finished:?}");
    }
    let report = sandbox.sim_report();
    let (plain, guarded) = (calls(&report, plain_pid), calls(&report, guarded_pid));
    let extra = |name: &str| {
        guarded
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(plain.get(name).copied().unwrap_or(0))
    };
    assert_eq!(guarded.get("cuMemAlloc_v2"), Some(&PAIRS), "{guarded:?}");
    assert_eq!(guarded.get("cuMemFree_v2"), Some(&PAIRS), "{guarded:?}");
    // The current context, once per allocation; its device once (then cached).
    assert!(
        extra("cuCtxGetCurrent") <= PAIRS,
        "{guarded:?} vs {plain:?}"
    );
    assert!(extra("cuCtxGetDevice") <= 2, "{guarded:?} vs {plain:?}");
    // The driver's free memory: when the figure is 10 ms old, not per allocation.
    let asked = extra("cuMemGetInfo_v2");
    assert!(
        (1..=PAIRS / 10).contains(&asked),
        "cuMemGetInfo_v2 asked {asked} times for {PAIRS} allocations"
    );
    // Everything else the guard asks is the one-time registration of the device.
    let others: u64 = guarded
        .keys()
        .filter(|name| {
            !matches!(
                name.as_str(),
                "cuCtxGetCurrent" | "cuCtxGetDevice" | "cuMemGetInfo_v2"
            )
        })
        .map(|name| extra(name))
        .sum();
    assert!(others <= 4, "{guarded:?} vs {plain:?}");
}

#[test]
fn an_unguarded_program_allocating_while_guarded_ones_run_never_makes_the_driver_refuse_them() {
    // A 4 GiB card, 256 MiB reserve, 300 MiB contexts. Two guarded loaders take 16 MiB every
    // 3 ms (each asks the driver at most every 10 ms far from the edge, so most of their
    // allocations are admitted on a cached figure); once they hold memory, an unguarded program
    // takes 1 GiB in 64 MiB steps every 10 ms. Together they ask for far more than the card
    // has. Whoever comes up short, no guarded request may reach a driver that cannot hold it:
    // the guarded loaders get their CUDA_ERROR_OUT_OF_MEMORY from the guard. The loaders pause
    // after 30 chunks until the unguarded program has taken its first step, so that the three
    // overlap however the machine schedules them, and everyone holds until all are done.
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    let (resume, release) = (sandbox.go_file("resume"), sandbox.go_file("release"));
    let loader = [
        "--chunk",
        "16MiB",
        "--count",
        "200",
        "--sleep-between-ms",
        "3",
        "--keep-going",
        "--pause-before-chunk",
        "31",
        "--resume-file",
        resume.arg(),
        "--hold-until",
        release.arg(),
    ];
    let mut guarded: Vec<_> = [ClientPath::Direct, ClientPath::Procaddr]
        .into_iter()
        .map(|path| sandbox.start_client(path, true, &loader))
        .collect();
    // Both hold memory beyond their context (and so have asked the driver and cached a figure).
    let context = 300 * MIB;
    for loader in &mut guarded {
        loader.wait_for_line("paused", CLIENT_DEADLINE);
        assert_eq!(
            charged(&snapshot(&sandbox), loader.pid(), uuid),
            context + 30 * 16 * MIB
        );
    }
    let mut unguarded = sandbox.start_client(
        ClientPath::Direct,
        false,
        &[
            "--chunk",
            "64MiB",
            "--count",
            "16",
            "--sleep-between-ms",
            "10",
            "--keep-going",
            "--hold-until",
            release.arg(),
        ],
    );
    let unguarded_pid = unguarded.pid();
    unguarded.wait_for_line("alloc ok", CLIENT_DEADLINE);
    resume.go();
    for program in guarded.iter_mut().chain([&mut unguarded]) {
        program.wait_for_line("holding", CLIENT_DEADLINE);
    }
    release.go();
    let unguarded = unguarded.finish(CLIENT_DEADLINE);
    let guarded: Vec<_> = guarded
        .into_iter()
        .map(|g| g.finish(CLIENT_DEADLINE))
        .collect();

    let report = sandbox.sim_report();
    let device = &report["devices"][0];
    let number = |key: &str| {
        device[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert!(number("peak_bytes") <= number("capacity_bytes"), "{report}");
    // The driver refused nothing a guarded process asked for (the unguarded one may be refused:
    // nothing guards it).
    for refusal in device["refusals"].as_array().expect("refusals") {
        assert_eq!(
            refusal["pid"].as_u64(),
            Some(u64::from(unguarded_pid)),
            "the driver refused a guarded request: {report}"
        );
    }
    let taken = support::allocations(&unguarded.stdout);
    assert!(
        !taken.is_empty(),
        "the unguarded program took nothing while the loaders ran: {unguarded:?}"
    );
    for finished in &guarded {
        let summary = finished.summary();
        assert_eq!(summary.ok + summary.failed, 200, "{finished:?}");
        assert!(
            summary.failed > 0,
            "the loaders together want 6.25 GiB of a 4 GiB card: {finished:?}"
        );
        assert_eq!(
            summary.first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY"),
            "{finished:?}"
        );
        assert!(
            finished.stderr.contains("vramguard: refused"),
            "the refusals came from the guard: {finished:?}"
        );
    }
    // While everything was held, the card held the guarded loads, the unguarded 64 MiB steps and
    // three contexts, within its capacity.
    let guarded_bytes: u64 = guarded.iter().map(|f| f.summary().bytes).sum();
    let unguarded_bytes: u64 = taken.iter().sum();
    assert!(
        guarded_bytes + unguarded_bytes + 3 * context <= 4096 * MIB,
        "{guarded_bytes} + {unguarded_bytes} + contexts: {report}"
    );
}
