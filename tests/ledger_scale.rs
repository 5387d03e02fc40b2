//! Scale: 1024 live members (four processes joining 256 times each) fill the ledger; the next
//! join is refused with a clear error, and succeeds once they are dead.

mod ledger_support;

use std::time::{Duration, Instant};

use ledger_support::{
    HANG_GUARD, TempDir, child_dir, child_var, device, hold, report, role, spawn,
};
use vramguard_core::ledger::{Ledger, LedgerError, MAX_PROCESSES};

const TEST: &str = "a_thousand_and_twenty_four_members_fit";
const PROCESSES: usize = 4;

fn joiner() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, 1 << 40);
    for n in 0..MAX_PROCESSES / PROCESSES {
        let member = ledger.join(&format!("member {n}")).unwrap();
        hold(&ledger, member, dev, 1 << 20);
    }
    report("joined");
    let stop = std::path::PathBuf::from(child_var("STOP_FILE"));
    let deadline = Instant::now() + HANG_GUARD;
    while !stop.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::exit(0);
}

#[test]
fn a_thousand_and_twenty_four_members_fit() {
    if role().is_some() {
        return joiner();
    }
    let started = Instant::now();
    let tmp = TempDir::new("scale");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = device(&ledger, 1 << 40);
    let stop = tmp.path().join("stop");
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut child = spawn(
                TEST,
                "joiner",
                &dir,
                &[("STOP_FILE", stop.display().to_string())],
            );
            let reports = ledger_support::Reports::new(&mut child);
            (child, reports)
        })
        .collect();
    for (_, reports) in &children {
        assert_eq!(reports.next(HANG_GUARD, "joiner"), "joined");
    }
    let snapshot = ledger.snapshot();
    assert_eq!(
        snapshot.processes.iter().filter(|p| p.alive).count(),
        MAX_PROCESSES
    );
    assert_eq!(snapshot.devices[0].used, (MAX_PROCESSES as u64) << 20);
    let error = ledger.join("one too many").unwrap_err();
    assert!(matches!(error, LedgerError::SlotsFull { .. }), "{error:?}");
    assert!(error.to_string().contains("1024 process slots"), "{error}");
    std::fs::write(&stop, b"").unwrap();
    for (child, _) in &mut children {
        ledger_support::wait_until(child, Instant::now() + HANG_GUARD, "joiner");
    }
    let me = ledger.join("after them").unwrap();
    assert_eq!(ledger.reclaim_dead(), ((MAX_PROCESSES - 1) as u64) << 20);
    assert_eq!(ledger.snapshot().devices[0].used, 0);
    assert_eq!(ledger.charge(me, dev), 0);
    ledger.leave(me);
    println!(
        "1024 members joined, refused the 1025th, reclaimed in {:?}",
        started.elapsed()
    );
}
