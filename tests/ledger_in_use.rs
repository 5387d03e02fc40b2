//! The ledger's file taken away from under its members: removed with its directory (the members
//! keep their ledger and go on reclaiming each other's dead, while newcomers start a new one), or
//! truncated (the first member to notice gives the file its size back and marks it, so that no
//! member faults on it; every member then refuses with `Truncated` instead of using it).
//!
//! The truncation scenarios run in child processes: if the ledger touched a missing page, the
//! child would die of `SIGBUS`, and the parent reports that as a failure instead of crashing.

mod ledger_support;

use std::path::Path;
use std::time::{Duration, Instant};

use ledger_support::{
    HANG_GUARD, TempDir, child_dir, device, finish, fresh_member, hold, holder, report, role,
    spawn, spawn_holder, wait_until,
};
use vramguard_core::ledger::{Ledger, LedgerError, Refusal, Request, layout};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1000 * MIB;
const TEST_REMOVED: &str = "members_of_a_removed_ledger_still_reclaim_their_dead";
const TEST_TRUNCATED: &str = "a_truncated_ledger_is_restored_and_refused_without_a_fault";
const TEST_WAITER: &str = "a_waiter_notices_a_truncation_and_spares_the_other_members";

#[test]
fn members_of_a_removed_ledger_still_reclaim_their_dead() {
    if role().is_some() {
        return holder();
    }
    let (tmp, dir, ledger, dev, me) = fresh_member("removed", BUDGET, "survivor");
    let stop = tmp.path().join("stop");
    let (mut doomed, doomed_slot) =
        spawn_holder(TEST_REMOVED, &dir, &stop, BUDGET, 300 * MIB, "doomed");
    let (mut live, _) = spawn_holder(TEST_REMOVED, &dir, &stop, BUDGET, 600 * MIB, "live");

    std::fs::remove_dir_all(&dir).unwrap();
    doomed.kill().unwrap();
    wait_until(&mut doomed, Instant::now() + HANG_GUARD, "doomed");

    // The next decision that would otherwise refuse reclaims the dead member's 300 MiB (the old
    // file is reopened through this process's own descriptor, not through the vanished path);
    // the live member's 600 MiB are never taken.
    let r = ledger
        .reserve(me, dev, 400 * MIB, &Request::default())
        .expect("the dead member's bytes are reclaimed in a removed ledger");
    assert!(matches!(
        ledger.reserve(me, dev, 1, &Request::default()),
        Err(Refusal::NoRoom { .. })
    ));
    let snapshot = ledger.snapshot();
    assert!(
        !snapshot
            .processes
            .iter()
            .any(|p| p.slot as usize == doomed_slot)
    );
    assert_eq!(snapshot.devices[0].used, BUDGET);
    // Joining through an open handle (as a forked child does) still works too.
    let late = ledger
        .join("late joiner")
        .expect("join a removed ledger through its open handle");
    ledger.leave(late);

    // A newcomer creates a new ledger at the same path, which knows nothing of the old one.
    let newcomer = Ledger::open(&dir).unwrap();
    let fresh = newcomer.snapshot();
    assert!(fresh.processes.is_empty() && fresh.devices.is_empty());
    assert!(dir.join(layout::FILE_NAME).exists());

    ledger.rollback(r);
    std::fs::write(&stop, b"").unwrap();
    wait_until(&mut live, Instant::now() + HANG_GUARD, "live holder");
    assert_eq!(ledger.reclaim_dead(), 600 * MIB);
    ledger.leave(me);
}

/// Cuts the ledger file at `dir` to `length` bytes, as a cooperating user could.
fn truncate(dir: &Path, length: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(layout::FILE_NAME))
        .unwrap()
        .set_len(length)
        .unwrap();
}

fn file_length(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(layout::FILE_NAME))
        .unwrap()
        .len()
}

fn is_truncated_refusal<T>(outcome: Result<T, Refusal>) -> bool {
    matches!(outcome, Err(Refusal::Ledger(LedgerError::Truncated { .. })))
}

/// Two members; the file is cut to nothing; a slow path of one (a snapshot) notices. Then nothing
/// either member does may fault, even once the file is cut again and stays cut.
fn truncation_child() {
    let dir = child_dir();
    let first = Ledger::open(&dir).unwrap();
    let dev = device(&first, BUDGET);
    let one = first.join("first").unwrap();
    hold(&first, one, dev, 100 * MIB);
    let second = Ledger::open(&dir).unwrap();
    let two = second.join("second").unwrap();
    hold(&second, two, dev, 50 * MIB);

    truncate(&dir, 0);
    report(format!(
        "snapshot devices {}",
        first.snapshot().devices.len()
    ));
    report(format!("length {}", file_length(&dir)));
    // The other member learns it from the mark, on its hot path.
    report(format!(
        "second reserve truncated {}",
        is_truncated_refusal(second.reserve(two, dev, MIB, &Request::default()))
    ));
    let reader = Ledger::open_existing(&dir).err().unwrap();
    report(format!(
        "reader truncated {} says {reader}",
        matches!(reader, LedgerError::Truncated { .. })
    ));
    // A process that comes to join replaces the marked file with a fresh ledger.
    let newcomer = Ledger::open(&dir).unwrap();
    report(format!(
        "newcomer rebuilt {}",
        newcomer.snapshot().devices.is_empty() && file_length(&dir) == layout::FILE_SIZE as u64
    ));

    // Cut again: both handles are detached and must not touch the mapping any more.
    truncate(&dir, 0);
    for (ledger, slot) in [(&first, one), (&second, two)] {
        assert!(is_truncated_refusal(ledger.reserve(
            slot,
            dev,
            MIB,
            &Request::default()
        )));
        assert!(is_truncated_refusal(ledger.set_claim(
            slot,
            dev,
            MIB,
            &Request::default()
        )));
        ledger.release(slot, dev, MIB);
        assert_eq!(
            (
                ledger.available(slot, dev, None),
                ledger.charge(slot, dev),
                ledger.unbacked_by_others(slot, dev),
                ledger.budget(dev),
                ledger.reclaim_dead(),
            ),
            (0, 0, 0, 0, 0)
        );
        assert!(ledger.find_device(ledger_support::uuid(0)).is_none());
        assert!(matches!(
            ledger.register_device(ledger_support::uuid(1), "Other", BUDGET, BUDGET),
            Err(LedgerError::Truncated { .. })
        ));
        assert!(matches!(
            ledger.join("again"),
            Err(LedgerError::Truncated { .. })
        ));
        assert!(ledger.snapshot().processes.is_empty());
        ledger.leave(slot);
    }
    report(format!("length after {}", file_length(&dir)));
}

#[test]
fn a_truncated_ledger_is_restored_and_refused_without_a_fault() {
    if role().is_some() {
        return truncation_child();
    }
    let tmp = TempDir::new("truncate");
    let child = spawn(TEST_TRUNCATED, "truncation", &tmp.ledger_dir(), &[]);
    let lines = finish(child, Instant::now() + HANG_GUARD, "truncation");
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], "snapshot devices 0");
    assert_eq!(lines[1], format!("length {}", layout::FILE_SIZE));
    assert_eq!(lines[2], "second reserve truncated true");
    assert!(
        lines[3].starts_with("reader truncated true says ")
            && lines[3].contains("was truncated while in use"),
        "{lines:?}"
    );
    assert_eq!(lines[4], "newcomer rebuilt true");
    assert_eq!(lines[5], "length after 0");
}

/// A member waits for room while another thread holds everything; the file is cut below the
/// slots (the header survives) while nobody but the waiter looks. The waiter must notice it (at
/// the end of one of its 50 ms sleeps: its own deadline, the hang guard, is far away), give the
/// file its size back and mark it, so that the holder's next request is refused instead of
/// faulting.
fn waiter_child() {
    let dir = child_dir();
    let holder = Ledger::open(&dir).unwrap();
    let dev = device(&holder, BUDGET);
    let me = holder.join("holder").unwrap();
    hold(&holder, me, dev, BUDGET);
    let waiter = Ledger::open(&dir).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let slot = waiter.join("waiter").unwrap();
        let on_wait = |_: &vramguard_core::ledger::WaitReport| sender.send(()).unwrap();
        let request = Request {
            wait_until: Some(Instant::now() + HANG_GUARD),
            on_wait: Some(&on_wait),
            ..Request::default()
        };
        is_truncated_refusal(waiter.reserve(slot, dev, MIB, &request))
    });
    receiver
        .recv_timeout(HANG_GUARD)
        .expect("the waiter starts waiting");
    // Most likely asleep by then, as the scenario has it. Nothing depends on it: a waiter still
    // awake notices the cut at the end of its first sleep instead.
    std::thread::sleep(Duration::from_millis(20));
    truncate(&dir, 4096);
    let refused = waiting.join().unwrap();
    report(format!("waiter truncated {refused}"));
    report(format!("length {}", file_length(&dir)));
    report(format!(
        "holder reserve truncated {}",
        is_truncated_refusal(holder.reserve(me, dev, MIB, &Request::default()))
    ));
}

#[test]
fn a_waiter_notices_a_truncation_and_spares_the_other_members() {
    if role().is_some() {
        return waiter_child();
    }
    let tmp = TempDir::new("truncwait");
    let child = spawn(TEST_WAITER, "waiter", &tmp.ledger_dir(), &[]);
    let lines = finish(child, Instant::now() + HANG_GUARD * 2, "waiter");
    assert_eq!(
        lines,
        [
            "waiter truncated true".to_string(),
            format!("length {}", layout::FILE_SIZE),
            "holder reserve truncated true".to_string(),
        ]
    );
}
