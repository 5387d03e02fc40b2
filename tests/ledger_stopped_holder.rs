//! A real process stopped (SIGSTOP) while it holds a device lock: a contender waits for it and
//! proceeds once it runs again; stopped past the lock deadline, the contender rebuilds the ledger
//! at the deadline and is admitted there instead of hanging or being refused; resumed, the holder
//! follows into the rebuilt ledger at its next check, finishes its work, and nothing stays
//! charged or locked. The holder is caught inside the lock the way the soak suite
//! does it: the lock word's owner token, through `Ledger::lock_holder`, names the stopped
//! process's live membership.

mod ledger_support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ledger_support::{
    HANG_GUARD, Rng, TempDir, child_dir, child_var, device, device_totals, report, role,
};
use vramguard_core::ledger::{DeviceId, LOCK_DEADLINE, Ledger, LedgerError, Refusal, Request};

const TEST: &str = "a_stopped_lock_holder_delays_others_but_never_hangs_or_leaks";
const TEST_KEPT: &str = "updates_that_meet_a_stuck_lock_are_applied_once_it_frees";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1 << 30;

/// The child: takes the device lock as often as it can (reserve, commit, release of 1 MiB in a
/// tight loop, checking the ledger now and then as the guard's watcher does) until the stop file
/// appears, then leaves in order.
fn cycler() {
    let ledger = Ledger::open(&child_dir()).expect("open");
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("cycler").expect("join");
    let stop = PathBuf::from(child_var("CYCLER_STOP"));
    report("ready");
    let mut rounds = 0u64;
    while !rounds.is_multiple_of(256) || !stop.exists() {
        rounds += 1;
        if rounds.is_multiple_of(4096) {
            let _ = ledger.check();
        }
        let r = ledger
            .reserve(me, dev, MIB, &Request::default())
            .expect("the cycler's 1 MiB always fits");
        ledger.commit(r);
        ledger.release(me, dev, MIB);
    }
    ledger.leave(me);
    report(format!("done {rounds}"));
}

/// A `cycler` child of `test` on the ledger of `tmp`, stopped by creating `stop`, once it
/// said it is ready; with its reports.
fn start_cycler(tmp: &TempDir, test: &str, stop: &Path) -> (Child, ledger_support::Reports) {
    let mut child = ledger_support::spawn(
        test,
        "cycler",
        &tmp.ledger_dir(),
        &[("CYCLER_STOP", stop.display().to_string())],
    );
    let reports = ledger_support::Reports::new(&mut child);
    assert_eq!(reports.next(HANG_GUARD, "cycler start"), "ready");
    (child, reports)
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

fn is_stopped(child: &Child) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // The state follows the command name in parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
}

/// Stops `child` at random moments until it is stopped while the device lock's owner token names
/// its membership (at most 2,000 tries; it spends a good part of its time inside the lock).
/// Returns the token; the child is left stopped.
fn stop_inside_lock(ledger: &Ledger, dev: DeviceId, child: &Child, rng: &mut Rng) -> u64 {
    for _ in 0..2_000 {
        signal(child, libc::SIGSTOP);
        let deadline = Instant::now() + HANG_GUARD;
        while !is_stopped(child) {
            assert!(
                Instant::now() < deadline,
                "hang guard: the cycler did not stop within {HANG_GUARD:?}"
            );
            std::thread::yield_now();
        }
        let token = ledger.device_lock_token(dev);
        if let Some(holder) = ledger.lock_holder(token) {
            assert_eq!(holder.pid, child.id() as i32, "{holder:?}");
            assert!(holder.alive, "{holder:?}");
            return token;
        }
        signal(child, libc::SIGCONT);
        std::thread::sleep(Duration::from_micros(rng.below(500)));
    }
    panic!("the cycler was never stopped inside the device lock in 2,000 tries");
}

#[test]
fn a_stopped_lock_holder_delays_others_but_never_hangs_or_leaks() {
    if role().as_deref() == Some("cycler") {
        return cycler();
    }
    let tmp = TempDir::new("stopped-holder");
    let ledger = tmp.open_ledger();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("contender").unwrap();
    assert_eq!(ledger.device_lock_token(dev), 0, "a free lock has no token");
    assert!(ledger.lock_holder(0).is_none());
    assert!(
        ledger.lock_holder(u64::MAX).is_none(),
        "garbage names nobody"
    );

    let stop = tmp.path().join("stop");
    let (mut child, reports) = start_cycler(&tmp, TEST, &stop);
    let mut rng = Rng::new(ledger_support::seed());

    // Stopped for 300 ms: the contender waits, then proceeds once the holder runs again.
    let token = stop_inside_lock(&ledger, dev, &child, &mut rng);
    let start = Instant::now();
    let (reservation, resumed_after) = std::thread::scope(|scope| {
        let contender = scope.spawn(|| ledger.reserve(me, dev, 10 * MIB, &Request::default()));
        // Time for a contender that did not wait to finish. The checks hold whatever the
        // scheduler does: a contender that has not even started yet has not finished either,
        // and one refused at the lock deadline finished after it (this thread having been kept
        // from running that long).
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            ledger.device_lock_token(dev),
            token,
            "the stopped holder keeps the lock"
        );
        let finished = contender.is_finished();
        let resumed_after = start.elapsed();
        assert!(
            !finished || resumed_after >= LOCK_DEADLINE,
            "the contender did not wait for the holder"
        );
        signal(&child, libc::SIGCONT);
        (contender.join().unwrap(), resumed_after)
    });
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    match reservation {
        // Admitted once the holder ran again.
        Ok(reservation) => ledger.rollback(reservation),
        // Unless this thread was kept from running for seconds before it resumed the holder (a
        // machine that busy): the holder may then not have run again before the contender's lock
        // deadline, and the refusal at the deadline is the right answer, the one the next step
        // checks on purpose. On a machine that let this thread run, the contender must have been
        // admitted.
        Err(Refusal::Ledger(LedgerError::LockTimeout { .. }))
            if resumed_after >= LOCK_DEADLINE / 2 => {}
        Err(refusal) => {
            panic!("refused although the holder resumed after {resumed_after:?}: {refusal:?}")
        }
    }

    // Stopped past the lock deadline: the contender rebuilds the ledger at the deadline and is
    // admitted there, instead of hanging or being refused.
    stop_inside_lock(&ledger, dev, &child, &mut rng);
    let r = ledger_support::admitted_after_a_rebuild_at_lock_deadline(&ledger, me, dev, 10 * MIB);
    ledger.rollback(r);

    // Resumed, the holder finishes its section in the old file and follows into the rebuilt
    // ledger at its next check; requests go through meanwhile.
    signal(&child, libc::SIGCONT);
    let deadline = Instant::now() + HANG_GUARD;
    while !ledger
        .snapshot()
        .processes
        .iter()
        .any(|p| p.alive && p.pid == child.id() as i32)
    {
        assert!(Instant::now() < deadline, "the resumed holder never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = ledger
        .reserve(me, dev, 10 * MIB, &Request::default())
        .expect("admitted after the holder resumed");
    ledger.rollback(r);

    // The holder finishes its work and leaves: nothing stays charged, the lock is free.
    std::fs::write(&stop, b"").unwrap();
    let done = reports.next(HANG_GUARD, "cycler end");
    assert!(done.starts_with("done "), "{done}");
    let status = ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "cycler");
    assert!(status.success());
    ledger.leave(me);
    assert_eq!(device_totals(&ledger), (0, 0, 0));
    assert_eq!(ledger.device_lock_token(dev), 0, "device lock left held");
    println!("stopped holder: {done}");
}

/// A commit and a release made while a stopped member holds the device lock past its deadline
/// are not lost: kept in the process, they are applied (each exactly once) by its next decision
/// on the device once the lock frees, and the ledger's totals are then what the member holds.
#[test]
fn updates_that_meet_a_stuck_lock_are_applied_once_it_frees() {
    if role().as_deref() == Some("cycler") {
        return cycler();
    }
    let tmp = TempDir::new("stuck-updates");
    let ledger = tmp.open_ledger();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("member").unwrap();
    ledger_support::hold(&ledger, me, dev, 10 * MIB);
    let reservation = ledger
        .reserve(me, dev, 20 * MIB, &Request::default())
        .unwrap();

    let stop = tmp.path().join("stop");
    let (mut child, reports) = start_cycler(&tmp, TEST_KEPT, &stop);
    let mut rng = Rng::new(ledger_support::seed());
    let token = stop_inside_lock(&ledger, dev, &child, &mut rng);

    // The driver took the 20 MiB and freed the 10 MiB: the ledger is told while its lock is
    // stuck. Each call returns (after the lock deadline) instead of hanging.
    let start = Instant::now();
    ledger_support::hang_guarded(HANG_GUARD, "updates at a stuck lock", || {
        std::thread::scope(|scope| {
            scope.spawn(|| ledger.commit(reservation));
            scope.spawn(|| ledger.release(me, dev, 10 * MIB));
        })
    });
    assert!(start.elapsed() >= LOCK_DEADLINE, "{:?}", start.elapsed());
    assert_eq!(
        ledger.device_lock_token(dev),
        token,
        "the lock is still stuck"
    );

    // The lock frees; the cycler finishes and leaves.
    signal(&child, libc::SIGCONT);
    std::fs::write(&stop, b"").unwrap();
    let done = reports.next(HANG_GUARD, "cycler end");
    assert!(done.starts_with("done "), "{done}");
    let status = ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "cycler");
    assert!(status.success());

    // The member's next decision applies what was kept: it holds 20 MiB, nothing in flight,
    // and the device's totals say exactly that (applied once: not 0, not 40).
    let probe = ledger
        .reserve(me, dev, MIB, &Request::default())
        .expect("room for 1 MiB");
    ledger.rollback(probe);
    assert_eq!(ledger.in_flight(me, dev), 0);
    assert_eq!(ledger.charge(me, dev), 20 * MIB);
    assert_eq!(device_totals(&ledger), (20 * MIB, 0, 20 * MIB));
    // A later decision applies nothing twice.
    let probe = ledger
        .reserve(me, dev, MIB, &Request::default())
        .expect("room for 1 MiB");
    ledger.rollback(probe);
    assert_eq!(device_totals(&ledger), (20 * MIB, 0, 20 * MIB));
    ledger.release(me, dev, 20 * MIB);
    ledger.leave(me);
    assert_eq!(device_totals(&ledger), (0, 0, 0));
}
