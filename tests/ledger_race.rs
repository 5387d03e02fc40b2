//! Race: 16 processes x 500 random reserve/commit/rollback/release operations against a 1 GiB
//! budget, 20 rounds. An independent observer process samples the ledger the whole time and must
//! never see the device over budget; every byte is back when all have left.

mod ledger_support;

use std::time::{Duration, Instant};

use ledger_support::{HANG_GUARD, Rng, TempDir, child_dir, child_var, device, report, role, spawn};
use vramguard_core::ledger::{Ledger, Refusal, Request};

const TEST: &str = "race_sixteen_processes_never_exceed_the_budget";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1 << 30;
const PROCESSES: usize = 16;
const OPERATIONS: usize = 500;
const ROUNDS: usize = 20;

/// One racer: random operations; reports how many reservations were granted and refused.
fn racer() {
    let ledger = Ledger::open(&child_dir()).expect("open");
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("racer").expect("join");
    let mut rng = Rng::new(child_var("RACE_SEED").parse().expect("seed"));
    let mut held: Vec<u64> = Vec::new();
    let (mut granted, mut refused) = (0u32, 0u32);
    // Start together: report ready, then spin until the parent says go.
    report("ready");
    let go = std::path::PathBuf::from(child_var("RACE_GO"));
    let deadline = Instant::now() + HANG_GUARD;
    while !go.exists() {
        assert!(Instant::now() < deadline, "hang guard: no go signal");
        std::thread::yield_now();
    }
    for _ in 0..OPERATIONS {
        // Give the scheduler chances to interleave the 16 processes on few cores.
        if rng.below(4) == 0 {
            std::thread::yield_now();
        }
        if held.is_empty() || rng.below(3) != 0 {
            let bytes = (1 + rng.below(160)) * MIB;
            let wait = rng.below(4) == 0;
            let request = Request {
                wait_until: wait.then(|| Instant::now() + Duration::from_millis(rng.below(5))),
                ..Request::default()
            };
            match ledger.reserve(me, dev, bytes, &request) {
                Ok(reservation) => {
                    granted += 1;
                    if rng.below(8) == 0 {
                        ledger.rollback(reservation);
                    } else {
                        ledger.commit(reservation);
                        held.push(bytes);
                    }
                }
                Err(
                    Refusal::NoRoom { .. } | Refusal::TimedOut { .. } | Refusal::Deadlock { .. },
                ) => refused += 1,
                Err(other) => panic!("unexpected refusal: {other}"),
            }
        } else {
            let bytes = held.swap_remove(rng.below(held.len() as u64) as usize);
            ledger.release(me, dev, bytes);
        }
        let total: u64 = held.iter().sum();
        assert_eq!(
            ledger.charge(me, dev),
            total,
            "own charge matches own bookkeeping"
        );
    }
    for bytes in held.drain(..) {
        ledger.release(me, dev, bytes);
    }
    ledger.leave(me);
    report(format!("{granted} {refused}"));
}

/// The observer: samples the device total until the stop file appears.
fn observer() {
    let ledger = Ledger::open(&child_dir()).expect("open");
    let stop = std::path::PathBuf::from(child_var("RACE_STOP"));
    let (mut samples, mut over, mut max_used) = (0u64, 0u64, 0u64);
    report("ready");
    while !stop.exists() {
        for device in ledger.snapshot().devices {
            samples += 1;
            max_used = max_used.max(device.used);
            if device.used > device.budget {
                over += 1;
            }
        }
    }
    report(format!("{samples} {over} {max_used}"));
}

#[test]
fn race_sixteen_processes_never_exceed_the_budget() {
    match role().as_deref() {
        Some("racer") => return racer(),
        Some("observer") => return observer(),
        _ => {}
    }
    let started = Instant::now();
    let tmp = TempDir::new("race");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = device(&ledger, BUDGET);
    let stop = tmp.path().join("stop");
    let mut observer_child = spawn(
        TEST,
        "observer",
        &dir,
        &[("RACE_STOP", stop.display().to_string())],
    );
    let observer_reports = ledger_support::Reports::new(&mut observer_child);
    assert_eq!(observer_reports.next(HANG_GUARD, "observer start"), "ready");
    let seed = ledger_support::seed();
    println!("race seed {seed} (LEDGER_TEST_SEED={seed} replays it)");
    // Each racer's seed is drawn from the run's, in a fixed order: the seed replays them all.
    let mut seeds = Rng::new(seed);
    let (mut granted, mut refused) = (0u64, 0u64);
    for round in 0..ROUNDS {
        let go = tmp.path().join(format!("go-{round}"));
        let racers: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let vars = [
                    ("RACE_SEED", seeds.next_u64().to_string()),
                    ("RACE_GO", go.display().to_string()),
                ];
                let mut child = spawn(TEST, "racer", &dir, &vars);
                let reports = ledger_support::Reports::new(&mut child);
                (child, reports)
            })
            .collect();
        for (_, reports) in &racers {
            assert_eq!(reports.next(HANG_GUARD, "racer ready"), "ready");
        }
        std::fs::write(&go, b"").unwrap();
        let deadline = Instant::now() + HANG_GUARD;
        for (mut child, reports) in racers {
            let line = reports.next(HANG_GUARD, "racer result");
            let status = ledger_support::wait_until(&mut child, deadline, "racer");
            assert!(status.success(), "racer failed: {status}");
            let numbers: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            granted += numbers[0];
            refused += numbers[1];
        }
        let snapshot = ledger.snapshot();
        let device = &snapshot.devices[dev.index() as usize];
        assert_eq!(
            (device.used, device.held, device.reserved, device.waiting),
            (0, 0, 0, 0),
            "round {round}: bytes leaked"
        );
        assert!(
            snapshot.processes.is_empty(),
            "round {round}: members left behind: {:?}",
            snapshot.processes
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let line = observer_reports.next(HANG_GUARD, "observer result");
    ledger_support::wait_until(&mut observer_child, Instant::now() + HANG_GUARD, "observer");
    let numbers: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    let (samples, over, max_used) = (numbers[0], numbers[1], numbers[2]);
    println!(
        "race: {ROUNDS} rounds x {PROCESSES} processes x {OPERATIONS} ops in {:?}: {granted} granted, {refused} refused; \
         observer took {samples} samples, max used {} MiB of {} MiB, {over} over budget",
        started.elapsed(),
        max_used / MIB,
        BUDGET / MIB
    );
    assert_eq!(over, 0, "the observer saw the device over budget");
    assert!(samples > 100, "observer sampled too rarely ({samples})");
    assert!(
        max_used > BUDGET / 2,
        "the race never came near the budget (max {max_used})"
    );
    assert!(refused > 0 && granted > 0);
}
