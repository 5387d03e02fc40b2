//! Hand-over under churn: processes under `wait` and under `deny` share one device. Waiters queue
//! (their requests together exceed the budget) and are granted in the ledger by whoever makes
//! room; a `deny` request is refused only when it does not fit beside the needs of the requests
//! queued at that moment, never merely because a line exists. Counts are asserted, not timings.

mod ledger_support;

use std::path::PathBuf;
use std::time::Instant;

use ledger_support::{HANG_GUARD, Rng, TempDir, child_dir, child_var, device, report, role, spawn};
use vramguard_core::ledger::{Ledger, Refusal, Request};

const TEST: &str = "deny_requests_that_fit_beside_the_queue_are_granted_under_churn";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1000 * MIB;
/// Requests per denier.
const DENY_REQUESTS: u32 = 400;

/// A waiter: from the go file until the stop file, waits for 200-400 MiB, commits, holds it a
/// moment, releases. Reports `waiter <rounds> <times it had to wait>`.
fn waiter() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("waiter").unwrap();
    let mut rng = Rng::new(ledger_support::seed() ^ u64::from(std::process::id()));
    let waited = std::cell::Cell::new(0u32);
    let on_wait = |_: &vramguard_core::ledger::WaitReport| waited.set(waited.get() + 1);
    ledger_support::wait_for_file(&PathBuf::from(child_var("GO_FILE")), HANG_GUARD);
    let stop = PathBuf::from(child_var("STOP_FILE"));
    let mut rounds = 0u32;
    while !stop.exists() {
        rounds += 1;
        let bytes = (200 + rng.below(201)) * MIB;
        let request = Request {
            wait_until: Some(Instant::now() + HANG_GUARD),
            on_wait: Some(&on_wait),
            ..Request::default()
        };
        let r = ledger
            .reserve(me, dev, bytes, &request)
            .unwrap_or_else(|refusal| panic!("a waiter was refused: {refusal:?}"));
        ledger.commit(r);
        for _ in 0..rng.below(2000) {
            std::hint::spin_loop();
        }
        if rng.below(4) == 0 {
            std::thread::yield_now();
        }
        ledger.release(me, dev, bytes);
    }
    ledger.leave(me);
    report(format!("waiter {rounds} {}", waited.get()));
}

/// A denier: `DENY_REQUESTS` requests of 20 MiB under `deny`. A refusal must be `NoRoom` with
/// less available beside the queue than asked. Reports `denier <granted> <refused> <refused
/// although it fitted>`.
fn denier() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("denier").unwrap();
    let go = PathBuf::from(child_var("GO_FILE"));
    ledger_support::wait_for_file(&go, HANG_GUARD);
    let (mut granted, mut refused, mut unjustified) = (0u32, 0u32, 0u32);
    for _ in 0..DENY_REQUESTS {
        match ledger.reserve(me, dev, 20 * MIB, &Request::default()) {
            Ok(r) => {
                granted += 1;
                ledger.commit(r);
                std::thread::yield_now();
                ledger.release(me, dev, 20 * MIB);
            }
            Err(Refusal::NoRoom {
                requested,
                available,
            }) => {
                refused += 1;
                if available >= requested {
                    unjustified += 1;
                }
            }
            Err(other) => panic!("a denier was refused with {other:?}"),
        }
        std::thread::yield_now();
    }
    ledger.leave(me);
    report(format!("denier {granted} {refused} {unjustified}"));
}

#[test]
fn deny_requests_that_fit_beside_the_queue_are_granted_under_churn() {
    match role().as_deref() {
        Some("waiter") => return waiter(),
        Some("denier") => return denier(),
        _ => {}
    }
    let tmp = TempDir::new("handover-churn");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    device(&ledger, BUDGET);
    let go = tmp.path().join("go");
    let stop = tmp.path().join("stop");
    let vars = [
        ("GO_FILE", go.display().to_string()),
        ("STOP_FILE", stop.display().to_string()),
    ];
    let mut children: Vec<_> = (0..2)
        .map(|_| spawn(TEST, "denier", &dir, &vars))
        .chain((0..3).map(|_| spawn(TEST, "waiter", &dir, &vars)))
        .collect();
    let reports: Vec<_> = children
        .iter_mut()
        .map(ledger_support::Reports::new)
        .collect();
    std::fs::write(&go, b"").unwrap();
    let (mut granted, mut refused, mut unjustified, mut waits) = (0u32, 0u32, 0u32, 0u32);
    for (index, reports) in reports.iter().enumerate() {
        if index == 2 {
            // The deniers are done: the waiters may stop.
            std::fs::write(&stop, b"").unwrap();
        }
        let line = reports.next(HANG_GUARD, "child end");
        let figures: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        match (line.split_whitespace().next(), figures.as_slice()) {
            (Some("denier"), [g, r, u]) => {
                assert_eq!(g + r, DENY_REQUESTS, "{line}");
                granted += g;
                refused += r;
                unjustified += u;
            }
            (Some("waiter"), [rounds, w]) => {
                assert!(*rounds > 0, "{line}");
                waits += w;
            }
            _ => panic!("unexpected report {line}"),
        }
    }
    for child in &mut children {
        let status = ledger_support::wait_until(child, Instant::now() + HANG_GUARD, "child");
        assert!(status.success(), "a child failed with {status}");
    }
    println!(
        "deny: {granted} granted, {refused} refused (all beside a queue they did not fit); \
         waiters waited {waits} times"
    );
    assert_eq!(
        unjustified, 0,
        "deny requests refused although they fitted beside the queued needs \
         ({granted} granted, {refused} refused)"
    );
    let snapshot = ledger.snapshot();
    let device = &snapshot.devices[0];
    assert_eq!((device.used, device.waiting), (0, 0), "{snapshot:?}");
}
