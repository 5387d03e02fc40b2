//! The faults the soak injects while the workers run:
//! - `kill`: SIGKILL of a worker, preferably one inside a driver call (so, sometimes, inside the
//!   ledger's lock or half-way through an update);
//! - `stop_holder`: SIGSTOP of a worker that provably holds a device lock of the ledger: the
//!   observer watches the lock words for 25 milliseconds for a holder preempted inside the
//!   lock (the same owner token for 20 us); once that worker is seen stopped, a lock word must
//!   still carry a token naming its membership (see [`FaultInjector`]). Resumed 50 ms to 1 s
//!   later;
//! - `stop`: otherwise (no such holder in time, or it left the lock before it stopped), SIGSTOP
//!   of a worker, preferably one inside a driver call (a lock holder or a waiter), resumed with
//!   SIGCONT 50 ms to 1 s later;
//! - `remove_dir`: the ledger directory removed while in use (`rm -rf`); attached processes keep
//!   their mapping, newcomers build a new ledger;
//! - `damage`: the ledger file overwritten with garbage while in use (its header, or random words
//!   anywhere); newcomers then find a damaged ledger and must follow `VRAMGUARD_ON_ERROR`. A moment
//!   later the damaged file is deleted, as an administrator would, so that newcomers build a fresh one;
//! - `damage_kept`: the same garbage, but the file is left in place: the members must find the
//!   damage within a second and rebuild one ledger in which each re-registers what it holds;
//! - `remove_file`: the ledger file alone removed while in use (`rm /dev/shm/vramguard/*`, the
//!   usual advice when `/dev/shm` is full): survivors and newcomers must end in one ledger;
//! - `truncate`: the ledger file truncated while in use (to 0 bytes, or to a random smaller size);
//!   the members must notice, give it its size back, mark it and follow `VRAMGUARD_ON_ERROR`, and a
//!   member touching a lost page first dies of SIGBUS (a documented limitation: such deaths are
//!   counted apart, see [`FaultInjector::exposed_to_truncation`]). Deleted a moment later like a
//!   damaged file.
//!
//! The last five change the ledger itself: they take turns, one every 3 to 4.5 seconds.
//! Workers forking children that exit is part of the workers' own behaviour, not a fault here.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vramguard_core::ledger::layout::{FILE_NAME, FILE_SIZE};

use super::Config;
use super::lab::Lab;
use super::observer::Observer;
use super::worker::{self, Worker};

/// The faults that change the ledger itself are spaced at least this far apart, so that the
/// ledger is usable most of the time and the other checks have something to check.
const LEDGER_FAULT_SPACING: Duration = Duration::from_secs(3);
/// ... plus up to this much at random.
const LEDGER_FAULT_JITTER_MS: u64 = 1500;
/// How long a `stop` fault watches the device locks for a holder before it picks a victim the
/// ordinary way.
const HOLDER_WATCH: Duration = Duration::from_millis(25);
/// A lock is held for about 100 ns at a time: a holder seen in it for this long is off its CPU
/// (preempted inside the lock), where it stops before it runs another instruction.
const HOLDER_MIN_HOLD: Duration = Duration::from_micros(20);
/// How long a worker sent SIGSTOP may take to be seen stopped (it must be scheduled to stop).
const STOP_CONFIRM: Duration = Duration::from_millis(200);

/// The faults that change the ledger, in the order they take turns.
#[derive(Debug, Clone, Copy)]
enum LedgerFault {
    RemoveDir,
    Damage,
    DamageKept,
    RemoveFile,
    Truncate,
}

const LEDGER_FAULTS: [LedgerFault; 5] = [
    LedgerFault::RemoveDir,
    LedgerFault::Damage,
    LedgerFault::DamageKept,
    LedgerFault::RemoveFile,
    LedgerFault::Truncate,
];

/// Chooses and injects faults, and remembers what it did.
///
/// A `stop_holder` is proven this way: we send worker p SIGSTOP and wait until `/proc/p/stat`
/// says it is stopped; then the lock word of a device holds an owner token T that names slot i
/// in generation g, and slot i is active in generation g and records pid p, before and after p
/// is read ([`vramguard_core::ledger::Ledger::lock_holder`]), and its member is alive. As p is
/// stopped, it is stopped while holding that lock.
pub struct FaultInjector {
    ledger_dir: PathBuf,
    rng: fastrand::Rng,
    interval: Duration,
    next_at: Instant,
    next_ledger_fault_at: Instant,
    next_ledger_fault: usize,
    truncation_exposed: HashSet<i32>,
    killed: HashSet<i32>,
    stopped: Resumer,
    pending_removal: Option<(PathBuf, u64, Instant)>,
    counts: BTreeMap<&'static str, u64>,
    verbose: bool,
}

impl FaultInjector {
    /// An injector for `lab`, at the pace `config` asks for.
    pub fn new(lab: &Lab, config: &Config, seed: u64) -> FaultInjector {
        FaultInjector {
            ledger_dir: lab.ledger_dir(),
            rng: fastrand::Rng::with_seed(seed),
            interval: config.fault_interval,
            next_at: Instant::now() + config.fault_interval,
            next_ledger_fault_at: Instant::now() + config.fault_interval,
            next_ledger_fault: (seed % LEDGER_FAULTS.len() as u64) as usize,
            truncation_exposed: HashSet::new(),
            killed: HashSet::new(),
            stopped: Resumer::start(),
            pending_removal: None,
            counts: BTreeMap::new(),
            verbose: config.verbose,
        }
    }

    /// Whether `pid` was killed by us.
    pub fn killed(&self, pid: i32) -> bool {
        self.killed.contains(&pid)
    }

    /// Whether `pid` was exposed to one of our truncations: it mapped the file just before or
    /// just after the cut, or was still attaching (it may have checked the file's size before
    /// the cut and mapped it after). A SIGBUS of such a worker is the documented consequence of
    /// the truncation, not a crash.
    pub fn exposed_to_truncation(&self, pid: i32) -> bool {
        self.truncation_exposed.contains(&pid)
    }

    /// Forgets what we did to `pid`, which has been collected (its number may be reused).
    pub fn forget(&mut self, pid: i32) {
        self.killed.remove(&pid);
        self.truncation_exposed.remove(&pid);
    }

    /// Faults injected so far.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Faults injected so far, by kind.
    pub fn by_kind(&self) -> Vec<(&'static str, u64)> {
        self.counts.iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Finishes a pending cleanup, and injects the next fault when it is due. (Stopped workers
    /// are resumed by a thread of their own, [`Resumer`].)
    pub fn tick(&mut self, workers: &[Worker], observer: &mut Observer) {
        let now = Instant::now();
        if let Some((path, inode, at)) = &self.pending_removal
            && now >= *at
        {
            // Only the damaged file: a newer one built meanwhile stays.
            if std::fs::metadata(path).is_ok_and(|m| m.ino() == *inode) {
                let _ = std::fs::remove_file(path);
            }
            self.pending_removal = None;
        }
        if now < self.next_at || workers.is_empty() {
            return;
        }
        let jitter = 0.5 + self.rng.f64();
        self.next_at = now + self.interval.mul_f64(jitter);
        if now >= self.next_ledger_fault_at {
            // The ledger faults take turns, so that a short run sees each of them; one that
            // finds nothing to hit (no ledger file yet) is tried again at the next fault.
            let kind = LEDGER_FAULTS[self.next_ledger_fault % LEDGER_FAULTS.len()];
            let done = match kind {
                LedgerFault::RemoveDir => self.remove_dir(observer),
                LedgerFault::Damage => self.damage(observer, false),
                LedgerFault::DamageKept => self.damage(observer, true),
                LedgerFault::RemoveFile => self.remove_file(observer),
                LedgerFault::Truncate => self.truncate(workers, observer),
            };
            if done {
                self.next_ledger_fault = (self.next_ledger_fault + 1) % LEDGER_FAULTS.len();
                self.next_ledger_fault_at = Instant::now()
                    + LEDGER_FAULT_SPACING
                    + Duration::from_millis(self.rng.u64(..LEDGER_FAULT_JITTER_MS));
                return;
            }
        }
        if self.rng.u8(..100) < 40 {
            self.kill(workers);
        } else {
            self.stop(workers, observer);
        }
    }

    /// Resumes every stopped worker (the end of the run).
    pub fn resume_all(&mut self) {
        self.stopped.resume_all();
    }

    fn count(&mut self, kind: &'static str, what: impl FnOnce() -> String) {
        *self.counts.entry(kind).or_default() += 1;
        if self.verbose {
            eprintln!("soak: fault {kind}: {}", what());
        }
    }

    /// A worker to hit: one inside a driver call if any (two times in three), else any, never one
    /// already killed or stopped.
    fn victim(&mut self, workers: &[Worker]) -> Option<(i32, bool)> {
        let candidates: Vec<(i32, bool)> = workers
            .iter()
            .filter(|w| !self.is_hit(w.pid()))
            .map(|w| (w.pid(), w.status().is_some_and(|s| !s.quiescent())))
            .collect();
        let busy: Vec<(i32, bool)> = candidates
            .iter()
            .copied()
            .filter(|(_, busy)| *busy)
            .collect();
        if !busy.is_empty() && self.rng.u8(..3) < 2 {
            return self.rng.choice(busy);
        }
        self.rng.choice(candidates)
    }

    fn kill(&mut self, workers: &[Worker]) {
        if let Some((pid, busy)) = self.victim(workers) {
            self.killed.insert(pid);
            worker::signal(pid, libc::SIGKILL);
            self.count("kill", || {
                format!("SIGKILL {pid} (in a driver call: {busy})")
            });
        }
    }

    fn is_hit(&self, pid: i32) -> bool {
        self.killed.contains(&pid) || self.stopped.contains(pid)
    }

    fn pause(&mut self) -> Duration {
        Duration::from_millis(50 + self.rng.u64(..950))
    }

    /// Stops a lock holder if one shows up within [`HOLDER_WATCH`] (`stop_holder` if it is
    /// proven to have stopped inside the lock, else `stop`), or else a worker chosen the ordinary
    /// way, preferably one inside a driver call (`stop`).
    fn stop(&mut self, workers: &[Worker], observer: &Observer) {
        let candidates: HashSet<i32> = workers
            .iter()
            .map(Worker::pid)
            .filter(|pid| !self.is_hit(*pid))
            .collect();
        let holder =
            observer.find_lock_holder(Instant::now() + HOLDER_WATCH, HOLDER_MIN_HOLD, |pid| {
                candidates.contains(&pid)
            });
        let (pid, busy) = match holder {
            Some(pid) => (pid, true),
            None => match self.victim(workers) {
                Some(victim) => victim,
                None => return,
            },
        };
        if !worker::signal(pid, libc::SIGSTOP) {
            return;
        }
        let caught = holder
            .filter(|_| worker::wait_until_stopped(pid, STOP_CONFIRM))
            .and_then(|_| observer.lock_held_by(pid));
        let pause = self.pause();
        self.stopped.add(pid, Instant::now() + pause);
        match caught {
            Some(held) => self.count("stop_holder", || {
                format!(
                    "SIGSTOP {pid} for {pause:?}, stopped holding the lock of device record {} \
                     (token {:#x}, slot {})",
                    held.device.index(),
                    held.token,
                    held.slot
                )
            }),
            None => self.count("stop", || {
                format!(
                    "SIGSTOP {pid} for {pause:?} (in a driver call: {busy}; {})",
                    if holder.is_some() {
                        "seen in a device lock, left it before it stopped"
                    } else {
                        "no lock holder seen"
                    }
                )
            }),
        }
    }

    fn remove_dir(&mut self, observer: &mut Observer) -> bool {
        if std::fs::remove_dir_all(&self.ledger_dir).is_err() {
            return false;
        }
        observer.note_merge();
        let dir = self.ledger_dir.display().to_string();
        self.count("remove_dir", || format!("rm -rf {dir}"));
        true
    }

    fn remove_file(&mut self, observer: &mut Observer) -> bool {
        let path = self.ledger_dir.join(FILE_NAME);
        if std::fs::remove_file(&path).is_err() {
            return false;
        }
        observer.note_merge();
        self.count("remove_file", || format!("rm {}", path.display()));
        true
    }

    /// Deletes the written-off file at `path` (if it is still inode `inode`) 0.3 to 1 s from now.
    fn remove_later(&mut self, path: PathBuf, inode: u64) {
        let at = Instant::now() + Duration::from_millis(300 + self.rng.u64(..700));
        self.pending_removal = Some((path, inode, at));
    }

    fn truncate(&mut self, workers: &[Worker], observer: &mut Observer) -> bool {
        let path = self.ledger_dir.join(FILE_NAME);
        let Ok(file) = OpenOptions::new().write(true).open(&path) else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        // Who may touch a lost page: every worker that maps the file just before the cut (one
        // that dies of it at once has no maps left to read afterwards), every worker that maps
        // it just after, and every worker still attaching (it may have checked the size just
        // before the cut and map the file after it). The guard never unmaps its ledger.
        let maps_it = |w: &Worker| worker::maps_file(w.pid(), meta.dev(), meta.ino());
        let mut exposed: HashSet<i32> = workers
            .iter()
            .filter(|w| maps_it(w))
            .map(Worker::pid)
            .collect();
        // The observer stops trusting (and touching) this ledger before it loses a byte.
        observer.mark_damaged(meta.ino());
        let size = if self.rng.bool() {
            0
        } else {
            self.rng.u64(..FILE_SIZE as u64)
        };
        if file.set_len(size).is_err() {
            return false;
        }
        exposed.extend(
            workers
                .iter()
                .filter(|w| maps_it(w) || w.status().is_none_or(|s| s.ops == 0))
                .map(Worker::pid),
        );
        self.truncation_exposed.extend(exposed);
        self.remove_later(path.clone(), meta.ino());
        self.count("truncate", || {
            format!("{} truncated to {size} bytes", path.display())
        });
        true
    }

    /// Garbage over the header or random words anywhere; the file is deleted a moment later
    /// unless `keep`.
    fn damage(&mut self, observer: &mut Observer, keep: bool) -> bool {
        let path = self.ledger_dir.join(FILE_NAME);
        let Ok(file) = OpenOptions::new().write(true).open(&path) else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        // The observer stops trusting this ledger before the first garbage byte lands.
        observer.mark_damaged(meta.ino());
        let header = self.rng.bool();
        let mut words = 0;
        if header {
            let garbage: Vec<u8> = (0..64).map(|_| self.rng.u8(..)).collect();
            let _ = file.write_all_at(&garbage, 0);
        } else {
            words = 1 + self.rng.u64(..64);
            for _ in 0..words {
                let offset = self.rng.u64(..meta.len().max(8) / 8) * 8;
                let _ = file.write_all_at(&self.rng.u64(..).to_ne_bytes(), offset);
            }
        }
        // Members rebuild it (a stopped one moves in later): a merge.
        observer.note_merge();
        if !keep {
            self.remove_later(path.clone(), meta.ino());
        }
        let kind = if keep { "damage_kept" } else { "damage" };
        self.count(kind, || {
            if header {
                format!("garbage over the header of {}", path.display())
            } else {
                format!("{words} random words written into {}", path.display())
            }
        });
        true
    }
}

/// Resumes stopped workers (SIGCONT) when their time comes, from a thread of its own: a worker
/// stopped inside the simulated driver may hold the simulator's state lock, and the observer's
/// `simcuda report` then blocks until that worker runs again, so the resumption must not wait
/// for the main loop.
struct Resumer {
    schedule: Arc<Mutex<Vec<(i32, Instant)>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Resumer {
    fn start() -> Resumer {
        let schedule: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let schedule = Arc::clone(&schedule);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let now = Instant::now();
                    lock(&schedule).retain(|&(pid, resume_at)| {
                        now < resume_at || !worker::signal(pid, libc::SIGCONT)
                    });
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Resumer {
            schedule,
            done,
            thread: Some(thread),
        }
    }

    /// Resumes `pid` at `at`.
    fn add(&self, pid: i32, at: Instant) {
        lock(&self.schedule).push((pid, at));
    }

    /// Whether `pid` is stopped (waiting to be resumed).
    fn contains(&self, pid: i32) -> bool {
        lock(&self.schedule).iter().any(|(p, _)| *p == pid)
    }

    /// Resumes everybody now.
    fn resume_all(&self) {
        for (pid, _) in lock(&self.schedule).drain(..) {
            worker::signal(pid, libc::SIGCONT);
        }
    }
}

impl Drop for Resumer {
    fn drop(&mut self) {
        self.resume_all();
        self.done.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
