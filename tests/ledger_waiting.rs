//! Waiting: admitted once a release makes room, first come first served (a large request is not
//! starved by small ones), the all-waiting deadlock broken without the latest waiter ever
//! sleeping, deadlines honoured, and a dead holder's bytes handed to a waiter. No outcome depends
//! on how fast the machine is: every wait on a child has a deadline that only catches a hang.
//! How fast a waiter wakes is a benchmark figure: `cargo bench --bench ledger -- --wake`.

mod ledger_support;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ledger_support::{
    HANG_GUARD, Rng, TempDir, child_dir, child_var, device, fresh_member, hold, report, role,
    spawn, wait_for_file,
};
use vramguard_core::ledger::{Ledger, ProcessState, Refusal, Request};

const TEST_RELEASE: &str = "a_waiter_is_admitted_once_the_release_makes_room";
const TEST_FIFO: &str = "waiters_are_served_in_arrival_order";
const TEST_STARVE: &str = "a_large_waiter_is_not_starved_by_a_stream_of_small_requests";
const TEST_DEADLOCK: &str = "all_holders_waiting_refuses_the_latest_waiter_at_once";
const TEST_DEAD_HOLDER: &str = "a_waiter_gets_the_bytes_of_a_holder_that_dies";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1000 * MIB;

/// A child that waits (until the hang guard) for `WAIT_BYTES`, reporting "waiting" when it starts
/// waiting and "admitted" or "refused <reason>" at the end. With `HOLD_FIRST` it first holds that
/// many bytes, reports "holding" and waits for `GO_FILE`; with `RELEASE_FILE` it holds what it was
/// admitted until that file exists (else it leaves at once).
fn waiter() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger
        .join(&format!("waiter-{}", child_var("WAIT_NAME")))
        .unwrap();
    if let Ok(held) = std::env::var("HOLD_FIRST") {
        hold(&ledger, me, dev, held.parse().unwrap());
        report("holding");
        wait_for_file(Path::new(&child_var("GO_FILE")), HANG_GUARD);
    }
    let bytes: u64 = child_var("WAIT_BYTES").parse().unwrap();
    let on_wait = |_: &vramguard_core::ledger::WaitReport| report("waiting");
    let request = Request {
        wait_until: Some(Instant::now() + HANG_GUARD),
        on_wait: Some(&on_wait),
        ..Request::default()
    };
    match ledger.reserve(me, dev, bytes, &request) {
        Ok(r) => {
            report("admitted");
            ledger.commit(r);
            if let Ok(release) = std::env::var("RELEASE_FILE") {
                wait_for_file(Path::new(&release), HANG_GUARD);
            }
        }
        Err(refusal) => report(format!("refused {refusal:?}")),
    }
    ledger.leave(me);
}

fn waiter_vars(name: &str, bytes: u64) -> Vec<(&'static str, String)> {
    vec![
        ("WAIT_NAME", name.to_string()),
        ("WAIT_BYTES", bytes.to_string()),
    ]
}

/// Starts a [`waiter`] child (by re-running `test`) and waits until it waits.
fn spawn_waiting(
    test: &str,
    dir: &std::path::Path,
    vars: &[(&str, String)],
) -> (std::process::Child, ledger_support::Reports) {
    let mut child = spawn(test, "waiter", dir, vars);
    let reports = ledger_support::Reports::new(&mut child);
    assert_eq!(reports.next(HANG_GUARD, "waiter start"), "waiting");
    (child, reports)
}

fn waiting_count(ledger: &Ledger) -> u32 {
    ledger.snapshot().devices[0].waiting
}

/// How long a test waits for a child's next report: only catches a hang. (A child's own wait
/// ends at the hang guard too; it started before the test began to wait for the report, so a
/// waiter that is never admitted reports its refusal before the test gives up on it.)
const REPORT_DEADLINE: Duration = HANG_GUARD;

#[test]
fn a_waiter_is_admitted_once_the_release_makes_room() {
    if role().is_some() {
        return waiter();
    }
    let (_tmp, dir, ledger, dev, me) = fresh_member("release", BUDGET, "holder");
    // Five rounds, a fresh waiter each.
    for _ in 0..5 {
        hold(&ledger, me, dev, 900 * MIB);
        let (mut child, reports) = spawn_waiting(TEST_RELEASE, &dir, &waiter_vars("w", 200 * MIB));
        // Reported waiting, it is counted as waiting: it was not admitted before the release.
        assert_eq!(waiting_count(&ledger), 1, "it waits until the release");
        ledger.release(me, dev, 900 * MIB);
        assert_eq!(reports.next(REPORT_DEADLINE, "admission"), "admitted");
        let status = ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "waiter");
        assert!(status.success(), "waiter failed with {status}");
        assert_eq!(waiting_count(&ledger), 0);
    }
    ledger.leave(me);
}

#[test]
fn waiters_are_served_in_arrival_order() {
    if role().is_some() {
        return waiter();
    }
    let (tmp, dir, ledger, dev, me) = fresh_member("fifo", BUDGET, "holder");
    hold(&ledger, me, dev, BUDGET);
    // Each holds what it is admitted until the end: the room the test makes is the only room.
    let release = tmp.path().join("release");
    let mut children = Vec::new();
    for (name, bytes) in [("big", 600 * MIB), ("mid", 300 * MIB), ("small", 100 * MIB)] {
        let mut vars = waiter_vars(name, bytes);
        vars.push(("RELEASE_FILE", release.display().to_string()));
        let (child, reports) = spawn_waiting(TEST_FIFO, &dir, &vars);
        children.push((name, child, reports));
    }
    assert_eq!(waiting_count(&ledger), 3);
    // Room for the small one only: it must not jump the queue; a deny request neither.
    ledger.release(me, dev, 100 * MIB);
    assert!(matches!(
        ledger.reserve(me, dev, 50 * MIB, &Request::default()),
        Err(Refusal::NoRoom { .. })
    ));
    // Time for a waiter that jumps the queue to do so. The check holds whatever the scheduler
    // does: in a correct ledger no waiter is admitted here, however late they wake.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(waiting_count(&ledger), 3, "a later waiter jumped the queue");
    let states: Vec<_> = ledger
        .snapshot()
        .processes
        .into_iter()
        .filter(|p| p.command.starts_with("waiter"))
        .collect();
    assert!(
        states
            .iter()
            .all(|p| matches!(p.state, ProcessState::Waiting { .. })),
        "{states:?}"
    );
    // Room for the big one: it goes first; the small one must not pass the middle one.
    ledger.release(me, dev, 600 * MIB);
    let admitted = |name: &str, reports: &ledger_support::Reports| {
        let line = reports.next(REPORT_DEADLINE, name);
        assert!(line.starts_with("admitted"), "{name}: {line}");
    };
    admitted("big", &children[0].2);
    // As above: time for the small one to pass the middle one, which it must not.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        waiting_count(&ledger),
        2,
        "the small request passed the middle one"
    );
    ledger.release(me, dev, 300 * MIB);
    admitted("mid", &children[1].2);
    admitted("small", &children[2].2);
    assert_eq!(waiting_count(&ledger), 0);
    std::fs::write(&release, b"").unwrap();
    for (name, mut child, _) in children {
        let status = ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, name);
        assert!(status.success(), "{name} failed with {status}");
    }
    ledger.leave(me);
}

/// A stream of small requests (4 processes) must not starve one large waiter.
fn small_streamer() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("streamer").unwrap();
    let stop = std::path::PathBuf::from(child_var("STOP_FILE"));
    let mut rng = Rng::new(ledger_support::seed());
    let mut granted = 0u32;
    while !stop.exists() {
        let request = Request {
            wait_until: Some(Instant::now() + HANG_GUARD),
            ..Request::default()
        };
        if let Ok(r) = ledger.reserve(me, dev, (50 + rng.below(100)) * MIB, &request) {
            granted += 1;
            if granted == 1 {
                report("streaming");
            }
            let bytes = r.bytes();
            ledger.commit(r);
            std::thread::sleep(Duration::from_millis(1 + rng.below(5)));
            ledger.release(me, dev, bytes);
        }
    }
    ledger.leave(me);
    report(format!("granted {granted}"));
}

#[test]
fn a_large_waiter_is_not_starved_by_a_stream_of_small_requests() {
    match role().as_deref() {
        Some("streamer") => return small_streamer(),
        Some(_) => return waiter(),
        None => {}
    }
    let tmp = TempDir::new("starve");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    device(&ledger, BUDGET);
    let stop = tmp.path().join("stop");
    let mut streamers: Vec<_> = (0..4)
        .map(|_| {
            let mut child = spawn(
                TEST_STARVE,
                "streamer",
                &dir,
                &[("STOP_FILE", stop.display().to_string())],
            );
            let reports = ledger_support::Reports::new(&mut child);
            (child, reports)
        })
        .collect();
    // The stream is under way: every streamer has been granted memory.
    for (_, reports) in &streamers {
        assert_eq!(reports.next(REPORT_DEADLINE, "streamer start"), "streaming");
    }
    let mut big = spawn(TEST_STARVE, "waiter", &dir, &waiter_vars("big", 900 * MIB));
    let reports = ledger_support::Reports::new(&mut big);
    let mut line = reports.next(REPORT_DEADLINE, "big waiter");
    if line == "waiting" {
        // Starved, it would be refused at its deadline (the hang guard).
        line = reports.next(REPORT_DEADLINE, "big waiter admitted");
    }
    std::fs::write(&stop, b"").unwrap();
    assert!(line.starts_with("admitted"), "{line}");
    ledger_support::wait_until(&mut big, Instant::now() + HANG_GUARD, "big waiter");
    let mut granted = 0;
    for (child, reports) in &mut streamers {
        let line = reports.next(REPORT_DEADLINE, "streamer end");
        granted += line
            .strip_prefix("granted ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse::<u32>()
            .unwrap();
        let status =
            ledger_support::wait_until(child, Instant::now() + REPORT_DEADLINE, "streamer");
        assert!(status.success(), "streamer failed with {status}");
    }
    println!("900 MiB waiter admitted among 4 streamers ({granted} small grants)");
}

#[test]
fn all_holders_waiting_refuses_the_latest_waiter_at_once() {
    if role().is_some() {
        return waiter();
    }
    let tmp = TempDir::new("deadlock");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    device(&ledger, BUDGET);
    let go = tmp.path().join("go");
    let spawn_holder = |name: &str| {
        // Each holds 400 and asks 300 more: 200 are free, so both wait on each other.
        let mut vars = waiter_vars(name, 300 * MIB);
        vars.push(("HOLD_FIRST", (400 * MIB).to_string()));
        vars.push(("GO_FILE", go.display().to_string()));
        let mut child = spawn(TEST_DEADLOCK, "waiter", &dir, &vars);
        let reports = ledger_support::Reports::new(&mut child);
        assert_eq!(reports.next(HANG_GUARD, "holder"), "holding");
        (child, reports)
    };
    let (mut first, first_reports) = spawn_holder("first");
    let (mut second, second_reports) = spawn_holder("second");
    // Both start waiting at once; whichever queues second finds every holder waiting and is
    // refused at once, without ever sleeping (a waiter reports "waiting" before its first
    // sleep); then the other, which did wait, gets the room it left.
    std::fs::write(&go, b"").unwrap();
    let outcome = |reports: &ledger_support::Reports, what: &str| {
        let mut waited = false;
        loop {
            let line = reports.next(REPORT_DEADLINE, what);
            if line != "waiting" {
                return (line, waited);
            }
            waited = true;
        }
    };
    let mut results = [
        outcome(&first_reports, "first"),
        outcome(&second_reports, "second"),
    ];
    results.sort();
    let [(admitted, admitted_waited), (refused, refused_waited)] = &results;
    assert!(admitted.starts_with("admitted"), "{results:?}");
    assert!(refused.starts_with("refused Deadlock"), "{results:?}");
    assert!(
        !refused_waited,
        "the latest waiter slept first: {results:?}"
    );
    assert!(admitted_waited, "{results:?}");
    ledger_support::wait_until(&mut first, Instant::now() + HANG_GUARD, "first");
    ledger_support::wait_until(&mut second, Instant::now() + HANG_GUARD, "second");
}

#[test]
fn deadline_is_honoured() {
    let (tmp, _, ledger, dev, holder) = fresh_member("deadline", BUDGET, "holder");
    hold(&ledger, holder, dev, 900 * MIB);
    // A second member of this process (another handle) waits; the holder does not wait, so this
    // is no deadlock: the deadline decides.
    let other = tmp.open_ledger();
    let me = other.join("waiter").unwrap();
    // Waits on a thread of its own: a wait that ignored its deadline would never end (the
    // holder never releases), and the test would hang instead of failing.
    let (refusal, waited, receiver, other) =
        ledger_support::within(REPORT_DEADLINE, "a wait with a deadline", move || {
            let (sender, receiver) = mpsc::channel();
            let started = Instant::now();
            let on_wait = |report: &vramguard_core::ledger::WaitReport| {
                sender
                    .send((report.available, report.holders.clone()))
                    .unwrap();
            };
            let request = Request {
                wait_until: Some(started + Duration::from_millis(300)),
                on_wait: Some(&on_wait),
                ..Request::default()
            };
            let refusal = other.reserve(me, dev, 200 * MIB, &request).unwrap_err();
            (refusal, started.elapsed(), receiver, other)
        });
    assert!(
        matches!(refusal, Refusal::TimedOut { requested, .. } if requested == 200 * MIB),
        "{refusal:?}"
    );
    // Not before the deadline (after it: only the deadline can have ended the wait; how long
    // after is the scheduler's business).
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let (available, holders) = receiver.try_recv().expect("on_wait called once");
    assert!(
        receiver.try_recv().is_err(),
        "on_wait called more than once"
    );
    assert_eq!(available, 100 * MIB);
    assert_eq!(
        holders,
        vec![(std::process::id() as i32, "holder".to_string(), 900 * MIB)]
    );
    assert_eq!(
        other.snapshot().devices[0].waiting,
        0,
        "a timed-out waiter leaves the queue"
    );
    other.leave(me);
    ledger.leave(holder);
}

#[test]
fn a_waiter_gets_the_bytes_of_a_holder_that_dies() {
    if role().is_some() {
        return waiter();
    }
    let tmp = TempDir::new("deadholder");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    device(&ledger, BUDGET);
    let go = tmp.path().join("never");
    let mut vars = waiter_vars("doomed", 10 * MIB);
    vars.push(("HOLD_FIRST", (900 * MIB).to_string()));
    vars.push(("GO_FILE", go.display().to_string()));
    let mut doomed = spawn(TEST_DEAD_HOLDER, "waiter", &dir, &vars);
    let doomed_reports = ledger_support::Reports::new(&mut doomed);
    assert_eq!(doomed_reports.next(HANG_GUARD, "doomed holds"), "holding");
    let (mut child, reports) =
        spawn_waiting(TEST_DEAD_HOLDER, &dir, &waiter_vars("survivor", 500 * MIB));
    doomed.kill().unwrap();
    ledger_support::wait_until(&mut doomed, Instant::now() + HANG_GUARD, "doomed");
    let line = reports.next(REPORT_DEADLINE, "admitted after the holder died");
    assert_eq!(line, "admitted");
    ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "survivor");
}
