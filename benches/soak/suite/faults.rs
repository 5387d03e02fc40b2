//! The faults the soak injects while the workers run:
//! - `kill`: SIGKILL of a worker, preferably one inside a driver call (so, sometimes, inside the
//!   ledger's lock or half-way through an update);
//! - `stop`: SIGSTOP of a worker, preferably one inside a driver call (a lock holder or a waiter),
//!   resumed with SIGCONT 50 ms to 1 s later;
//! - `remove_dir`: the ledger directory removed while in use (`rm -rf`); attached processes keep
//!   their mapping, newcomers build a new ledger;
//! - `damage`: the ledger file overwritten with garbage while in use (its header, or random words
//!   anywhere); newcomers then find a damaged ledger and must follow `VRAMGUARD_ON_ERROR`. A moment
//!   later the damaged file is deleted, as an administrator would, so that newcomers build a fresh one.
//!
//! Workers forking children that exit is part of the workers' own behaviour, not a fault here.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vramguard_core::ledger::layout::FILE_NAME;

use super::Config;
use super::lab::Lab;
use super::observer::Observer;
use super::rng::Rng;
use super::worker::{self, Worker};

/// The faults that change the ledger itself are spaced at least this far apart, so that the
/// ledger is usable most of the time and the other checks have something to check.
const LEDGER_FAULT_SPACING: Duration = Duration::from_secs(3);

/// Chooses and injects faults, and remembers what it did.
pub struct FaultInjector {
    ledger_dir: PathBuf,
    rng: Rng,
    interval: Duration,
    next_at: Instant,
    last_ledger_fault: Option<Instant>,
    damage_next: bool,
    killed: HashSet<i32>,
    stopped: Vec<(i32, Instant)>,
    pending_removal: Option<(PathBuf, u64, Instant)>,
    counts: BTreeMap<&'static str, u64>,
    verbose: bool,
}

impl FaultInjector {
    /// An injector for `lab`, at the pace `config` asks for.
    pub fn new(lab: &Lab, config: &Config, seed: u64) -> FaultInjector {
        FaultInjector {
            ledger_dir: lab.ledger_dir(),
            rng: Rng::new(seed),
            interval: config.fault_interval,
            next_at: Instant::now() + config.fault_interval,
            last_ledger_fault: None,
            damage_next: seed.is_multiple_of(2),
            killed: HashSet::new(),
            stopped: Vec::new(),
            pending_removal: None,
            counts: BTreeMap::new(),
            verbose: config.verbose,
        }
    }

    /// Whether `pid` was killed by us.
    pub fn killed(&self, pid: i32) -> bool {
        self.killed.contains(&pid)
    }

    /// Faults injected so far.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Faults injected so far, by kind.
    pub fn by_kind(&self) -> Vec<(&'static str, u64)> {
        self.counts.iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Resumes stopped workers whose time has come, finishes a pending cleanup, and injects the
    /// next fault when it is due.
    pub fn tick(&mut self, workers: &[Worker], observer: &mut Observer) {
        let now = Instant::now();
        self.stopped.retain(|&(pid, resume_at)| {
            if now >= resume_at {
                worker::signal(pid, libc::SIGCONT);
                false
            } else {
                true
            }
        });
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
        let jitter = 0.5 + self.rng.below(1000) as f64 / 1000.0;
        self.next_at = now + self.interval.mul_f64(jitter);
        let ledger_fault_allowed = self
            .last_ledger_fault
            .is_none_or(|t| now.duration_since(t) >= LEDGER_FAULT_SPACING);
        match self.rng.below(100) {
            // The two ledger faults take turns, so that a short run sees both.
            0..=19 if ledger_fault_allowed && !self.damage_next => self.remove_dir(),
            0..=19 if ledger_fault_allowed => self.damage(observer),
            20..=59 => self.kill(workers),
            _ => self.stop(workers),
        }
    }

    /// Resumes every stopped worker (the end of the run).
    pub fn resume_all(&mut self) {
        for (pid, _) in self.stopped.drain(..) {
            worker::signal(pid, libc::SIGCONT);
        }
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
            .filter(|w| {
                !self.killed.contains(&w.pid()) && !self.stopped.iter().any(|(p, _)| *p == w.pid())
            })
            .map(|w| (w.pid(), w.status().is_some_and(|s| !s.quiescent())))
            .collect();
        let busy: Vec<(i32, bool)> = candidates
            .iter()
            .copied()
            .filter(|(_, busy)| *busy)
            .collect();
        if !busy.is_empty() && self.rng.below(3) < 2 {
            return Some(self.rng.pick(&busy));
        }
        if candidates.is_empty() {
            None
        } else {
            Some(self.rng.pick(&candidates))
        }
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

    fn stop(&mut self, workers: &[Worker]) {
        if let Some((pid, busy)) = self.victim(workers) {
            let pause = Duration::from_millis(50 + self.rng.below(950));
            if worker::signal(pid, libc::SIGSTOP) {
                self.stopped.push((pid, Instant::now() + pause));
                self.count("stop", || {
                    format!("SIGSTOP {pid} for {pause:?} (in a driver call: {busy})")
                });
            }
        }
    }

    fn remove_dir(&mut self) {
        if std::fs::remove_dir_all(&self.ledger_dir).is_ok() {
            self.last_ledger_fault = Some(Instant::now());
            self.damage_next = true;
            let dir = self.ledger_dir.display().to_string();
            self.count("remove_dir", || format!("rm -rf {dir}"));
        }
    }

    fn damage(&mut self, observer: &mut Observer) {
        let path = self.ledger_dir.join(FILE_NAME);
        let Ok(file) = OpenOptions::new().write(true).open(&path) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        // The observer stops trusting this ledger before the first garbage byte lands.
        observer.mark_damaged(meta.ino());
        let header = self.rng.percent(50);
        let mut words = 0;
        if header {
            let garbage: Vec<u8> = (0..64).map(|_| self.rng.next_u64() as u8).collect();
            let _ = file.write_all_at(&garbage, 0);
        } else {
            words = 1 + self.rng.below(64);
            for _ in 0..words {
                let offset = self.rng.below(meta.len().max(8) / 8) * 8;
                let _ = file.write_all_at(&self.rng.next_u64().to_ne_bytes(), offset);
            }
        }
        let cleanup_at = Instant::now() + Duration::from_millis(300 + self.rng.below(700));
        self.pending_removal = Some((path.clone(), meta.ino(), cleanup_at));
        self.last_ledger_fault = Some(Instant::now());
        self.damage_next = false;
        self.count("damage", || {
            if header {
                format!("garbage over the header of {}", path.display())
            } else {
                format!("{words} random words written into {}", path.display())
            }
        });
    }
}
