//! The independent observer of the soak: it samples every ledger it can find (through
//! `vramguard_core::ledger`, read-only, never joining) and the simulated card (`simcuda report
//! --json`), and checks at every sample:
//!
//! - **budget**: in every trusted ledger, no device's charged bytes exceed its budget;
//! - **capacity**: on the card, no device's used or peak bytes exceed its capacity;
//! - **agreement**: for every worker that was *quiescent* during the whole sample, alive, and a
//!   member of a trusted ledger, the ledger's charge on each device equals what the process
//!   really holds there: its own count of allocations plus one context cost per context, which
//!   the simulator's bytes for that process must equal too (checked separately, below). So the
//!   ledger and the simulator agree on it, and when they do not, the count says which one is
//!   wrong. Quiescent means: the worker's status record (see [`super::worker`]) read before the
//!   ledger snapshot and again after the simulator report is identical and its sequence number
//!   is even, so no driver call of that worker began or ended in between and no reservation of it
//!   was in flight; alive means it has not exited when the report is back (so it was alive during
//!   the whole sample);
//! - **card agreement** (a check of the test bed itself): for every quiescent live worker, the
//!   simulator's bytes equal the worker's own count, whether or not it is a ledger member;
//! - **hangs**: no worker has been inside one driver call for longer than [`super::HANG_LIMIT`].
//!
//! "Trusted" ledgers are every ledger file the observer has seen in the ledger directory (one
//! removed with its directory stays mapped and trusted: its members keep using it) except those
//! the fault injector damaged or truncated, which are written off from the moment of the fault
//! (and never touched again: a truncated file's lost pages would fault).
//! At the end, after every process has exited, the dead are reclaimed in every trusted ledger and
//! everything still charged there or used on the card is a leak.
//!
//! The observer also watches the device locks of the trusted ledgers for a holder to stop
//! ([`Observer::find_lock_holder`]) and tells the fault injector whether a worker it stopped
//! holds one ([`Observer::lock_held_by`]).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use vramguard_core::ledger::layout::FILE_NAME;
use vramguard_core::ledger::{DeviceId, Ledger, Snapshot};

use super::lab::{self, Lab};
use super::worker::{STATUS_DEVICES, Worker, WorkerStatus};
use super::{CONTEXT_COST, HANG_LIMIT, Summary};

/// How many disagreements are described in full on stderr (all are counted).
const DESCRIBED: u64 = 10;

struct Tracked {
    inode: u64,
    ledger: Ledger,
    trusted: bool,
    /// Its devices, as of the last sample.
    devices: Vec<DeviceId>,
}

/// A device lock seen held by a live member (see [`Observer::lock_held_by`]).
#[derive(Debug, Clone, Copy)]
pub struct HeldLock {
    /// The device.
    pub device: DeviceId,
    /// The owner token in its lock word.
    pub token: u64,
    /// The holder's slot.
    pub slot: u32,
}

/// The observer of one run.
pub struct Observer<'a> {
    lab: &'a Lab,
    /// Until when an excess over a budget is a merge of two ledgers' members (see
    /// [`Observer::note_merge`]).
    merge_grace_until: Option<std::time::Instant>,
    ledger_dir: PathBuf,
    ledgers: Vec<Tracked>,
    damaged: HashSet<u64>,
    hung: HashSet<(i32, u64)>,
    verbose: bool,
}

/// How long after a merging fault an excess over a budget counts as the merge's.
pub const MERGE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// One process's bytes per device, by device UUID (`GPU-...`).
type Bytes = BTreeMap<String, u64>;

impl<'a> Observer<'a> {
    /// An observer of `lab`.
    pub fn new(lab: &'a Lab, verbose: bool) -> Observer<'a> {
        Observer {
            lab,
            merge_grace_until: None,
            ledger_dir: lab.ledger_dir(),
            ledgers: Vec::new(),
            damaged: HashSet::new(),
            hung: HashSet::new(),
            verbose,
        }
    }

    /// A fault that makes members of two ledgers merge into one is injected now (the file
    /// removed while newcomers make a new one, a damaged file rebuilt while a stopped member is
    /// away): for [`MERGE_GRACE`] an excess over a budget is what the merged members hold
    /// together, counted apart (`merged_over_budget_bytes`), not an admission past the budget.
    pub fn note_merge(&mut self) {
        self.merge_grace_until = Some(std::time::Instant::now() + MERGE_GRACE);
    }

    /// The ledger file with inode `inode` is being damaged or truncated: never trust (or touch)
    /// it again.
    pub fn mark_damaged(&mut self, inode: u64) {
        self.damaged.insert(inode);
        for tracked in &mut self.ledgers {
            if tracked.inode == inode {
                tracked.trusted = false;
            }
        }
    }

    /// Starts tracking the ledger file now in the ledger directory, if it is new.
    fn discover(&mut self) {
        let path = self.ledger_dir.join(FILE_NAME);
        let Ok(before) = std::fs::metadata(&path) else {
            return;
        };
        if self.ledgers.iter().any(|t| t.inode == before.ino())
            || self.damaged.contains(&before.ino())
        {
            return;
        }
        let Ok(ledger) = Ledger::open_existing(&self.ledger_dir) else {
            return;
        };
        // Keep it only if it is the file we looked at (not replaced in between).
        if std::fs::metadata(&path).is_ok_and(|after| after.ino() == before.ino()) {
            self.ledgers.push(Tracked {
                inode: before.ino(),
                ledger,
                trusted: true,
                devices: Vec::new(),
            });
        }
    }

    /// Takes one sample and adds what it finds to `summary`.
    pub fn sample(&mut self, workers: &[Worker], summary: &mut Summary) {
        self.discover();
        let before: Vec<Option<WorkerStatus>> = workers.iter().map(Worker::status).collect();
        let snapshots: Vec<Snapshot> = self
            .ledgers
            .iter_mut()
            .filter(|t| t.trusted)
            .map(|t| {
                let snapshot = t.ledger.snapshot();
                t.devices = snapshot
                    .devices
                    .iter()
                    .filter_map(|d| t.ledger.find_device(d.uuid))
                    .collect();
                snapshot
            })
            .collect();
        let report = self.lab.sim_report();
        let after: Vec<Option<WorkerStatus>> = workers.iter().map(Worker::status).collect();
        summary.samples += 1;

        for snapshot in &snapshots {
            for device in &snapshot.devices {
                if device.used > device.budget
                    && self
                        .merge_grace_until
                        .is_some_and(|until| std::time::Instant::now() < until)
                {
                    let excess = device.used - device.budget;
                    summary.merged_over_budget_bytes = summary.merged_over_budget_bytes.max(excess);
                } else if device.used > device.budget {
                    let excess = device.used - device.budget;
                    eprintln!(
                        "soak: OVER BUDGET: device {} charged {} of budget {} (+{excess})",
                        format_uuid(&device.uuid),
                        device.used,
                        device.budget
                    );
                    summary.max_overcommit_bytes = summary.max_overcommit_bytes.max(excess);
                }
            }
        }
        let mut refusals = 0;
        for device in report["devices"].as_array().into_iter().flatten() {
            let capacity = device["capacity_bytes"].as_u64().unwrap_or(0);
            let worst = device["used_bytes"]
                .as_u64()
                .unwrap_or(0)
                .max(device["peak_bytes"].as_u64().unwrap_or(0));
            if worst > capacity {
                eprintln!(
                    "soak: OVER CAPACITY: card device {} reached {worst} of {capacity}",
                    device["uuid"]
                );
                summary.max_overcommit_bytes = summary.max_overcommit_bytes.max(worst - capacity);
            }
            refusals += device["refused"].as_u64().unwrap_or(0);
        }
        summary.driver_refusals = summary.driver_refusals.max(refusals);

        let now = lab::monotonic_ns();
        for ((worker, before), after) in workers.iter().zip(&before).zip(&after) {
            let Some(status) = after else { continue };
            if !status.quiescent()
                && now.saturating_sub(status.op_started_ns) > HANG_LIMIT.as_nanos() as u64
            {
                if self.hung.insert((worker.pid(), status.seq)) {
                    summary.hangs += 1;
                    eprintln!(
                        "soak: HANG: worker {} ({}) inside one driver call for over {HANG_LIMIT:?}\n{}",
                        worker.pid(),
                        worker.describe(),
                        worker.log_tail()
                    );
                }
                continue;
            }
            // Alive now, after the report, means alive during the whole sample.
            if before.as_ref() != Some(status)
                || !status.quiescent()
                || status.finished != 0
                || worker.has_exited()
            {
                continue;
            }
            let card_bytes = card_bytes(&report, worker.pid());
            let own = own_bytes(&report, worker, status);
            if !same_bytes(&own, &card_bytes) {
                summary.card_disagreements += 1;
                if summary.card_disagreements <= DESCRIBED || self.verbose {
                    eprintln!(
                        "soak: CARD DISAGREES with quiescent worker {} ({}): its own count {own:?}, card {card_bytes:?}; \
                         the card's records of that pid: {}",
                        worker.pid(),
                        worker.describe(),
                        card_records(&report, worker.pid())
                    );
                }
            }
            let Some(ledger_bytes) = ledger_bytes(&snapshots, worker.pid()) else {
                continue;
            };
            summary.comparisons += 1;
            if !same_bytes(&ledger_bytes, &own) {
                summary.disagreements += 1;
                if summary.disagreements <= DESCRIBED || self.verbose {
                    eprintln!(
                        "soak: DISAGREEMENT on quiescent worker {} ({}): ledger {ledger_bytes:?}, its own count {own:?}, \
                         card {card_bytes:?}",
                        worker.pid(),
                        worker.describe(),
                    );
                }
            }
        }
    }

    /// Watches the device-lock words of every trusted ledger, in a tight loop, until `until`
    /// for a lock that carries the same owner token for at least `min_hold` and whose holder is
    /// a live active member with a pid `wanted` accepts; returns that holder's pid. A lock is held
    /// for about 100 ns at a time, far less than it takes to stop its holder; a token that stays
    /// for `min_hold` belongs to a holder preempted inside the lock, which stops before it runs
    /// another instruction.
    pub fn find_lock_holder(
        &self,
        until: Instant,
        min_hold: Duration,
        wanted: impl Fn(i32) -> bool,
    ) -> Option<i32> {
        let words: Vec<(&Tracked, DeviceId)> = self
            .ledgers
            .iter()
            .filter(|t| t.trusted)
            .flat_map(|t| t.devices.iter().map(move |d| (t, *d)))
            .collect();
        // Per word: the token seen there and since when.
        let mut seen: Vec<(u64, Instant)> = vec![(0, Instant::now()); words.len()];
        let mut rounds = 0u32;
        while !words.is_empty() {
            for ((tracked, device), seen) in words.iter().zip(seen.iter_mut()) {
                let token = tracked.ledger.device_lock_token(*device);
                if token == 0 {
                    seen.0 = 0;
                    continue;
                }
                let now = Instant::now();
                if token != seen.0 {
                    *seen = (token, now);
                } else if now.duration_since(seen.1) >= min_hold
                    && let Some(holder) = tracked.ledger.lock_holder(token)
                    && holder.alive
                    && wanted(holder.pid)
                {
                    return Some(holder.pid);
                }
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(64) && Instant::now() >= until {
                return None;
            }
            std::hint::spin_loop();
        }
        None
    }

    /// The device lock held by the live active member with pid `pid` right now, if any, in any
    /// trusted ledger (the owner token in the lock word names its membership: see
    /// [`Ledger::lock_holder`]).
    pub fn lock_held_by(&self, pid: i32) -> Option<HeldLock> {
        self.ledgers
            .iter()
            .filter(|t| t.trusted)
            .flat_map(|t| t.devices.iter().map(move |d| (t, *d)))
            .find_map(|(tracked, device)| {
                let token = tracked.ledger.device_lock_token(device);
                let holder = tracked.ledger.lock_holder(token)?;
                (holder.alive && holder.pid == pid).then_some(HeldLock {
                    device,
                    token,
                    slot: holder.slot,
                })
            })
    }

    /// After every process has exited: reclaims the dead in every trusted ledger and counts what
    /// is still charged in the ledger file now in the ledger directory, or used on the card, as
    /// leaked. What stays charged in a ledger that was removed with its directory is counted as
    /// stranded instead: no process can reach that file any more (it vanishes with its last
    /// member), but its members could not get those bytes back while they lived.
    pub fn finish(&mut self, summary: &mut Summary) {
        self.discover();
        let current = std::fs::metadata(self.ledger_dir.join(FILE_NAME))
            .ok()
            .map(|m| m.ino());
        for tracked in self.ledgers.iter().filter(|t| t.trusted) {
            tracked.ledger.reclaim_dead();
            let snapshot = tracked.ledger.snapshot();
            let reachable = Some(tracked.inode) == current;
            for device in snapshot.devices.iter().filter(|d| d.used > 0) {
                if reachable {
                    summary.leaked_bytes += device.used;
                } else {
                    summary.stranded_bytes += device.used;
                }
                eprintln!(
                    "soak: {}: ledger file (inode {}{}) device {} still charges {} bytes after everybody exited; \
                     processes: {:?}",
                    if reachable { "LEAK" } else { "stranded" },
                    tracked.inode,
                    if reachable {
                        ""
                    } else {
                        ", removed with its directory"
                    },
                    format_uuid(&device.uuid),
                    device.used,
                    snapshot
                        .processes
                        .iter()
                        .filter(|p| p
                            .devices
                            .iter()
                            .any(|d| d.uuid == device.uuid && d.charged > 0))
                        .map(|p| (
                            p.pid,
                            p.alive,
                            p.devices
                                .iter()
                                .find(|d| d.uuid == device.uuid)
                                .map(|d| d.charged)
                        ))
                        .collect::<Vec<_>>()
                );
            }
        }
        let report = self.lab.sim_report();
        for device in report["devices"].as_array().into_iter().flatten() {
            let used = device["used_bytes"].as_u64().unwrap_or(0);
            if used > 0 {
                eprintln!(
                    "soak: LEAK: card device {} still has {used} bytes in use after everybody exited",
                    device["uuid"]
                );
                summary.leaked_bytes += used;
            }
            summary.driver_refusals = summary
                .driver_refusals
                .max(device["refused"].as_u64().unwrap_or(0));
        }
        if self.verbose {
            eprintln!(
                "soak: ledgers seen {} (trusted {}), damaged {}",
                self.ledgers.len(),
                self.ledgers.iter().filter(|t| t.trusted).count(),
                self.damaged.len()
            );
        }
    }
}

/// The charges of live process `pid` in the trusted ledgers, by device; `None` if it is a member
/// of none of them.
fn ledger_bytes(snapshots: &[Snapshot], pid: i32) -> Option<Bytes> {
    let mut found = None;
    for snapshot in snapshots {
        for process in snapshot
            .processes
            .iter()
            .filter(|p| p.pid == pid && p.alive)
        {
            let bytes: &mut Bytes = found.get_or_insert_with(Bytes::new);
            for device in &process.devices {
                *bytes.entry(format_uuid(&device.uuid)).or_default() += device.charged;
            }
        }
    }
    found
}

/// The simulator's bytes (allocations and contexts) of live process `pid`, by device (none if
/// the card does not know the process).
fn card_bytes(report: &Value, pid: i32) -> Bytes {
    let process = report["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"].as_i64() == Some(i64::from(pid)) && p["alive"].as_bool() == Some(true));
    process
        .and_then(|p| p["devices"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["uuid"].as_str()?.to_owned(), d["used_bytes"].as_u64()?)))
        .collect()
}

/// Whether two per-device byte counts agree (a device missing from one counts as 0 there).
fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.keys()
        .chain(b.keys())
        .all(|d| a.get(d).copied().unwrap_or(0) == b.get(d).copied().unwrap_or(0))
}

/// What a worker says it holds (allocations plus one context cost per context), by device UUID.
fn own_bytes(report: &Value, worker: &Worker, status: &WorkerStatus) -> Bytes {
    let devices = report["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut bytes = Bytes::new();
    for ordinal in 0..(status.devices as usize).min(STATUS_DEVICES) {
        let total = status.bytes[ordinal] + status.contexts[ordinal] * CONTEXT_COST;
        let uuid = devices
            .get(worker.physical(ordinal))
            .and_then(|d| d["uuid"].as_str());
        if let (Some(uuid), true) = (uuid, total > 0) {
            bytes.insert(uuid.to_owned(), total);
        }
    }
    bytes
}

/// Every record the card has of `pid`, as JSON text, for messages.
fn card_records(report: &Value, pid: i32) -> String {
    let records: Vec<&Value> = report["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pid"].as_i64() == Some(i64::from(pid)))
        .collect();
    serde_json::to_string(&records).unwrap_or_default()
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as the driver and `nvidia-smi` print UUIDs.
fn format_uuid(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
