//! Chaos: 200 SIGKILLs at random moments across 8 busy processes. Nobody hangs, the survivors
//! keep working, no bytes leak past the next decision, and the device lock is never left held.
//! Also: a lock word naming a dead owner is taken over and the torn totals repaired, and a live
//! owner that does not progress makes a request fail at the lock deadline instead of hanging.

mod ledger_support;

use std::os::unix::fs::FileExt;

use std::time::{Duration, Instant};

use ledger_support::{
    HANG_GUARD, Rng, TempDir, child_dir, child_var, device, device_totals, fresh_member, hold,
    report, role, spawn,
};
use vramguard_core::ledger::{Ledger, Refusal, Request, layout};

const TEST: &str = "chaos_two_hundred_kills_leave_no_hang_and_no_leak";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1 << 30;
const WORKERS: usize = 8;
const KILLS: usize = 200;

/// A busy worker: random reserve/commit/rollback/release, with and without waiting, until the
/// stop file appears; then it returns everything and leaves.
fn worker() {
    let ledger = Ledger::open(&child_dir()).expect("open");
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("chaos-worker").expect("join");
    let stop = std::path::PathBuf::from(child_var("CHAOS_STOP"));
    let mut rng = Rng::new(child_var("CHAOS_SEED").parse().unwrap());
    let mut held: Vec<u64> = Vec::new();
    report(format!("ready {}", me.index()));
    let mut operations = 0u64;
    while !operations.is_multiple_of(64) || !stop.exists() {
        operations += 1;
        if held.is_empty() || rng.below(2) == 0 {
            let bytes = (1 + rng.below(200)) * MIB;
            let request = Request {
                wait_until: (rng.below(3) == 0)
                    .then(|| Instant::now() + Duration::from_millis(rng.below(20))),
                ..Request::default()
            };
            match ledger.reserve(me, dev, bytes, &request) {
                Ok(r) if rng.below(6) == 0 => ledger.rollback(r),
                Ok(r) => {
                    ledger.commit(r);
                    held.push(bytes);
                }
                Err(Refusal::Ledger(error)) => panic!("ledger failed: {error}"),
                Err(_) => {}
            }
        } else {
            let bytes = held.swap_remove(rng.below(held.len() as u64) as usize);
            ledger.release(me, dev, bytes);
        }
    }
    for bytes in held {
        ledger.release(me, dev, bytes);
    }
    ledger.leave(me);
    report(format!("done {operations}"));
}

fn lock_word(ledger: &Ledger, device: usize) -> u64 {
    let bytes = std::fs::read(ledger.path()).unwrap();
    let at = layout::DEVICES_OFFSET + device * layout::DEVICE_RECORD_SIZE + 64;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Stops `child` (SIGSTOP) up to 100 times until the device lock word names its slot; leaves it
/// stopped and returns true when it does, else resumes it and returns false.
fn freeze_holding_lock(
    ledger: &Ledger,
    child: &std::process::Child,
    slot: u64,
    rng: &mut Rng,
) -> bool {
    let pid = child.id() as libc::pid_t;
    let file = std::fs::File::open(ledger.path()).unwrap();
    let at = (layout::DEVICES_OFFSET + 64) as u64;
    for _ in 0..100 {
        // SAFETY: signals a child process we started and have not reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let deadline = Instant::now() + HANG_GUARD;
        while !is_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "hang guard: worker {pid} did not stop within {HANG_GUARD:?}"
            );
            std::thread::yield_now();
        }
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, at).unwrap();
        if u64::from_le_bytes(word) & 0xffff_ffff == slot + 1 {
            return true;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_micros(rng.below(300)));
    }
    false
}

fn is_stopped(pid: libc::pid_t) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
}

/// How many times the device lock was taken over from a dead holder.
fn repairs(ledger: &Ledger, device: usize) -> u32 {
    let bytes = std::fs::read(ledger.path()).unwrap();
    let at = layout::DEVICES_OFFSET + device * layout::DEVICE_RECORD_SIZE + 76;
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn chaos_two_hundred_kills_leave_no_hang_and_no_leak() {
    if role().as_deref() == Some("worker") {
        return worker();
    }
    let started = Instant::now();
    let tmp = TempDir::new("chaos");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = device(&ledger, BUDGET);
    let stop = tmp.path().join("stop");
    let seed = ledger_support::seed();
    println!("chaos seed {seed}");
    let mut rng = Rng::new(seed);
    let mut spawned = 0u64;
    let mut start_worker = |rng: &mut Rng| {
        spawned += 1;
        let vars = [
            ("CHAOS_STOP", stop.display().to_string()),
            ("CHAOS_SEED", rng.next_u64().to_string()),
        ];
        let mut child = spawn(TEST, "worker", &dir, &vars);
        let reports = ledger_support::Reports::new(&mut child);
        let line = reports.next(HANG_GUARD, "worker start");
        let slot: u64 = line.strip_prefix("ready ").expect(&line).parse().unwrap();
        (child, reports, slot)
    };
    let mut workers: Vec<_> = (0..WORKERS).map(|_| start_worker(&mut rng)).collect();
    let mut max_used = 0u64;
    let mut killed_holding_lock = 0u32;
    let mut kill = 0;
    // At least KILLS kills, and more until one landed inside the lock (however the workers were
    // scheduled; 50 extra tries of 100 freezes each at most).
    while kill < KILLS || killed_holding_lock == 0 {
        assert!(kill < KILLS + 50, "no kill landed inside the lock");
        std::thread::sleep(Duration::from_micros(rng.below(15_000)));
        let victim = rng.below(WORKERS as u64) as usize;
        // Every fourth kill tries to land inside the device lock: freeze the victim, look at the
        // lock word, and kill it if it is the holder (else let it run a little and look again).
        if (kill % 4 == 0 || kill >= KILLS)
            && freeze_holding_lock(&ledger, &workers[victim].0, workers[victim].2, &mut rng)
        {
            killed_holding_lock += 1;
        }
        kill += 1;
        let (mut child, _, _) = std::mem::replace(&mut workers[victim], start_worker(&mut rng));
        child.kill().unwrap();
        ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "killed worker");
        let used = ledger.snapshot().devices[0].used;
        assert!(used <= BUDGET, "over budget after a kill: {used}");
        max_used = max_used.max(used);
    }
    // The survivors must still be working: ask them to stop; each must finish (not hang).
    std::fs::write(&stop, b"").unwrap();
    for (mut child, reports, _) in workers {
        let line = reports.next(HANG_GUARD, "surviving worker");
        assert!(line.starts_with("done "), "{line}");
        let status =
            ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "surviving worker");
        assert!(status.success());
    }
    // A last wave killed all at once, busy: their bytes and maybe the lock stay behind.
    std::fs::remove_file(&stop).unwrap();
    let last_wave: Vec<_> = (0..WORKERS).map(|_| start_worker(&mut rng)).collect();
    // A moment to get busy (they are members already: what follows holds however little they
    // did before the kill).
    std::thread::sleep(Duration::from_millis(30));
    let mut last_wave: Vec<_> = last_wave.into_iter().map(|(child, _, _)| child).collect();
    for child in &mut last_wave {
        child.kill().unwrap();
    }
    for child in &mut last_wave {
        ledger_support::wait_until(child, Instant::now() + HANG_GUARD, "last wave");
    }
    let left_behind = ledger.snapshot().devices[0].used;
    // Dead members may still be on the books; the next decision that would otherwise refuse
    // must reclaim all of them, and the lock must be free afterwards.
    let me = ledger.join("checker").unwrap();
    let everything = ledger
        .reserve(me, dev, BUDGET, &Request::default())
        .expect("all bytes are back");
    ledger.rollback(everything);
    ledger.leave(me);
    assert_eq!(device_totals(&ledger), (0, 0, 0));
    let snapshot = ledger.snapshot();
    assert_eq!(snapshot.devices[0].waiting, 0);
    assert!(
        snapshot
            .processes
            .iter()
            .all(|p| !p.alive && p.devices.is_empty()),
        "{:?}",
        snapshot.processes
    );
    // What is left are dead members without bytes; reclaiming them returns nothing more.
    assert_eq!(ledger.reclaim_dead(), 0);
    assert!(ledger.snapshot().processes.is_empty());
    assert_eq!(lock_word(&ledger, 0), 0, "device lock left held");
    assert!(
        repairs(&ledger, 0) >= killed_holding_lock,
        "every lock of a killed holder is taken over"
    );
    println!(
        "chaos: {} SIGKILLs across {WORKERS} workers ({spawned} started) in {:?}; max used {} MiB; \
         {} MiB left by the last wave, reclaimed by the next decision; \
         {killed_holding_lock} killed while holding the device lock, {} lock takeovers (totals repaired)",
        kill + WORKERS,
        started.elapsed(),
        max_used / MIB,
        left_behind / MIB,
        repairs(&ledger, 0)
    );
}

/// Writes `value` at byte `at` of the ledger file.
fn poke(ledger: &Ledger, at: usize, value: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ledger.path())
        .unwrap();
    file.write_at(&value.to_le_bytes(), at as u64).unwrap();
}

#[test]
fn lock_of_a_dead_owner_is_taken_over_and_torn_totals_repaired() {
    let (_tmp, _, ledger, dev, me) = fresh_member("takeover", BUDGET, "me");
    hold(&ledger, me, dev, 100 * MIB);
    // A "dead owner": slot 900 (never joined, so its liveness lock is free), and totals torn as
    // if it died half-way through an update.
    let device_at = layout::DEVICES_OFFSET;
    poke(&ledger, device_at + 64, (7u64 << 32) | 901);
    poke(&ledger, device_at + 40, BUDGET - 10); // charged
    poke(&ledger, device_at + 48, 12345); // held
    // Taken over, not refused at the lock deadline.
    let r = ledger
        .reserve(me, dev, 900 * MIB, &Request::default())
        .expect("lock taken over, totals repaired");
    let snapshot = ledger.snapshot();
    assert_eq!(
        (snapshot.devices[0].used, snapshot.devices[0].held),
        (1000 * MIB, 100 * MIB)
    );
    ledger.rollback(r);
    ledger.leave(me);
    assert_eq!(lock_word(&ledger, 0), 0);
}

#[test]
fn a_stuck_live_lock_owner_has_the_ledger_rebuilt_at_the_deadline() {
    let tmp = TempDir::new("stuck");
    let ledger = tmp.open_ledger();
    let dev = device(&ledger, BUDGET);
    let stuck = tmp.open_ledger();
    let stuck_slot = stuck.join("stuck").unwrap();
    let me = ledger.join("me").unwrap();
    let held = ledger
        .reserve(me, dev, 3 * MIB, &Request::default())
        .unwrap();
    ledger.commit(held);
    // The stuck member "holds" the device lock: its token is its slot and generation.
    let slot_at = layout::SLOTS_OFFSET + stuck_slot.index() as usize * layout::SLOT_RECORD_SIZE;
    let bytes = std::fs::read(ledger.path()).unwrap();
    let generation = u64::from_le_bytes(bytes[slot_at + 8..slot_at + 16].try_into().unwrap());
    poke(
        &ledger,
        layout::DEVICES_OFFSET + 64,
        ((generation & 0xffff_ffff) << 32) | (u64::from(stuck_slot.index()) + 1),
    );
    // Past the deadline the member rebuilds the ledger, re-registers what it holds (3 MiB held)
    // and is admitted there; the next request does not wait again.
    let r = ledger_support::admitted_after_a_rebuild_at_lock_deadline(&ledger, me, dev, MIB);
    ledger.rollback(r);
    assert_eq!(device_totals(&ledger), (3 * MIB, 0, 3 * MIB));
    let rebuilt = std::fs::read(ledger.path()).map(|b| b.len()).unwrap();
    assert_eq!(rebuilt, layout::FILE_SIZE);
    let inode = |ledger: &Ledger| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ledger.path()).unwrap().ino()
    };
    let after_rebuild = inode(&ledger);
    let r = ledger.reserve(me, dev, MIB, &Request::default()).unwrap();
    ledger.rollback(r);
    assert_eq!(inode(&ledger), after_rebuild, "rebuilt again");
    // The stuck member, once it checks, follows into the rebuilt ledger.
    assert!(stuck.check().moved());
    let members = ledger.snapshot().processes.len();
    assert_eq!(members, 2, "{:?}", ledger.snapshot());
    ledger.release(me, dev, 3 * MIB);
    ledger.leave(me);
    stuck.leave(stuck_slot);
    assert_eq!(device_totals(&ledger), (0, 0, 0));
}
