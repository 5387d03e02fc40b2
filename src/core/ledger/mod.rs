//! The shared-memory ledger every guarded process on the machine maps: for every GPU (keyed by
//! UUID) its budget and what each member process holds, reserves, claims and waits for.
//!
//! The file layout, the protocols and the crash-safety argument are specified in
//! `docs/ledger.md`. In short:
//! - [`layout`]: `#[repr(C)]` records of fixed-width atomics, offsets pinned at compile time.
//! - [`directory`]: the ledger directory, opened, created and checked through descriptors
//!   (never by path), and the files in it opened, created, linked and removed relative to it.
//! - [`host_setup`]: the hardened directory of a shared machine (root's, one group, 3770).
//! - `file`: opening, creating (atomically published) and validating the file; reopening it
//!   after removal; repairing it after truncation (see `Ledger::check_file`).
//! - [`backing`]: every page of the file given storage before it is mapped, so that a full file
//!   system refuses the ledger cleanly instead of killing the process that touches a page.
//! - `liveness`: a member is alive exactly while the kernel holds its slot's OFD byte lock.
//! - `lock`: the per-device compare-and-swap lock, taken over from dead owners.
//! - `futex`: sleeping and waking on a word of the mapping, always with a timeout.
//! - `membership`: joining, leaving, and reclaiming what dead members held.
//! - `admission`: reserve, commit, rollback, release, claims, FIFO waiting, deadlock breaking.
//! - `contexts`: what a context costs on each device, as last measured, and the lock that lets
//!   one member at a time create a context on a device and measure it.
//! - `snapshot`: an owned copy of the ledger for display; who holds a device lock.
//! - `driver_figure`: what guarded processes last learned from the driver about each card's
//!   memory (for `vramguard status`'s "outside the guard").
#![deny(unsafe_code)]

mod admission;
pub mod backing;
mod contexts;
pub mod directory;
mod driver_figure;
mod error;
mod file;
mod futex;
pub mod host_setup;
pub mod layout;
mod liveness;
mod lock;
mod membership;
mod operations;
mod own;
mod pending;
mod queue;
mod rebuild;
mod snapshot;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use contexts::ContextCreation;
pub use driver_figure::DriverFigure;
pub use error::{Cause, DirectoryProblem, LedgerError, Refusal, SPACE_FIX};
pub use layout::{MAX_DEVICES, MAX_PROCESSES};
pub use rebuild::{Checkup, Finding};
pub use snapshot::{
    DeviceSnapshot, LockHolder, ProcessDevice, ProcessSnapshot, ProcessState, Snapshot,
};

use layout::{DeviceRecord, LedgerLayout, SlotRecord};

/// How long any one lock acquisition may take before the ledger reports an error instead of
/// hanging (the holder is alive but not progressing).
pub const LOCK_DEADLINE: Duration = Duration::from_secs(5);

/// An open ledger: the mapping, the descriptor it came from, and the liveness locks of the
/// members joined through it.
pub struct Ledger {
    path: PathBuf,
    file: File,
    mapping: file::Mapping,
    read_only: bool,
    /// Device and inode of the file mapped now (it changes when the handle moves to a rebuilt
    /// ledger: the descriptor and the mapping then stand for the new file).
    identity: [AtomicU64; 2],
    /// For each slot joined through this handle, the descriptor holding its liveness lock (-1: none).
    member_files: Box<[AtomicI32]>,
    /// The file was found truncated: the mapping is never touched again through this handle.
    detached: AtomicBool,
    /// What the members joined through this handle hold, and the ids it handed out.
    own: own::Own,
    /// What the periodic checks remember between two looks (see `rebuild`).
    watch: Mutex<rebuild::WatchState>,
    /// Commits, rollbacks, releases and withdrawals that could not take their device lock in
    /// time, applied at this process's next decision on the device.
    pending: pending::Pending,
}

/// A process's membership: its slot and the slot's generation when it joined. It stays valid
/// when the handle moves its members to a rebuilt ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    /// The slot's index in the ledger when it joined (as shown by `vramguard status`; after a
    /// rebuild the slot may have another index).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// A device record of the ledger (the index is checked at construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceId {
    index: u32,
}

impl DeviceId {
    /// The record's index in the ledger's device table when the device was registered (after a
    /// rebuild the record may have another index).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Bytes admitted and recorded as in flight; must be committed or rolled back.
#[must_use = "a reservation must be committed or rolled back"]
#[derive(Debug)]
pub struct Reservation {
    slot: SlotId,
    device: DeviceId,
    bytes: u64,
    available_after: u64,
}

impl Reservation {
    /// What [`Ledger::available`] (without a limit) answered for the member on the device at
    /// the moment this reservation was granted, under the device lock: the reservation is
    /// already counted. Saves the caller a separate read of the totals.
    pub fn available_after(&self) -> u64 {
        self.available_after
    }
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The device they are reserved on.
    pub fn device(&self) -> DeviceId {
        self.device
    }
    /// The member that reserved them.
    pub fn slot(&self) -> SlotId {
        self.slot
    }
}

/// How a request behaves when it does not fit.
#[derive(Clone, Copy, Default)]
pub struct Request<'a> {
    /// Per-process cap on this device (`VRAMGUARD_LIMIT`).
    pub limit: Option<u64>,
    /// `None`: refuse at once. `Some(deadline)`: queue (first come, first served) until then.
    pub wait_until: Option<Instant>,
    /// Called once when the request starts waiting.
    pub on_wait: Option<&'a dyn Fn(&WaitReport)>,
}

/// What a request that starts waiting is waiting for.
#[derive(Clone, Debug)]
pub struct WaitReport {
    /// The device.
    pub device_uuid: [u8; 16],
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes free under the budget when the wait started.
    pub available: u64,
    /// The members holding memory on the device: pid, command, bytes charged.
    pub holders: Vec<(i32, String, u64)>,
}

impl Ledger {
    /// Opens the ledger in `dir`, creating the directory (root: mode 1777, others: 0700; never
    /// its parents) and the file (as open as the directory) if missing, and validates both.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        Self::from_open(file::open(dir, true)?)
    }

    /// Opens an existing ledger without ever creating it; falls back to read-only when the file
    /// is not writable here (then only [`Ledger::snapshot`] is useful).
    pub fn open_existing(dir: &Path) -> Result<Ledger, LedgerError> {
        Self::from_open(file::open(dir, false)?)
    }

    fn from_open(opened: file::OpenLedger) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            path: opened.path,
            file: opened.file,
            mapping: opened.mapping,
            read_only: opened.read_only,
            identity: [
                AtomicU64::new(opened.identity.0),
                AtomicU64::new(opened.identity.1),
            ],
            member_files: (0..MAX_PROCESSES).map(|_| AtomicI32::new(-1)).collect(),
            detached: AtomicBool::new(false),
            own: own::Own::new(),
            watch: Mutex::new(rebuild::WatchState::default()),
            pending: pending::Pending::new(),
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this handle can only read.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// [`Ledger::register_device`] in the file mapped now: the record's own id.
    pub(super) fn register_here(
        &self,
        uuid: [u8; 16],
        name: &str,
        capacity: u64,
        budget: u64,
    ) -> Result<DeviceId, LedgerError> {
        self.check_file()?;
        if let Some(device) = self.find_here(uuid) {
            self.adopt_settings_if_unowned(device, capacity, budget);
            return Ok(device);
        }
        if self.read_only {
            return Err(LedgerError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let fresh = self.reopen()?;
        let _guard = lock::acquire_byte_lock(
            fresh,
            layout::REGISTRATION_LOCK_BYTE,
            Instant::now() + LOCK_DEADLINE,
        )
        .map_err(|busy| LedgerError::LockTimeout {
            path: self.path.clone(),
            what: "registration",
            waited: busy.waited,
        })?;
        if let Some(device) = self.find_here(uuid) {
            self.adopt_settings_if_unowned(device, capacity, budget);
            return Ok(device);
        }
        // Under the registration lock nobody else initialises a record, so a record left
        // half-initialised by a dead registrant is free to reuse.
        let layout = self.layout();
        let index = layout
            .devices
            .iter()
            .position(|record| record.state.load(Ordering::Acquire) != layout::DEVICE_READY)
            .ok_or_else(|| LedgerError::DevicesFull {
                path: self.path.clone(),
            })?;
        let record = &layout.devices[index];
        record
            .state
            .store(layout::DEVICE_INITIALISING, Ordering::Relaxed);
        layout::store_uuid(&record.uuid, uuid);
        layout::store_text(&record.name, name);
        record.capacity.store(capacity, Ordering::Relaxed);
        record.budget.store(budget, Ordering::Relaxed);
        for counter in [
            &record.charged,
            &record.held,
            &record.in_flight,
            &record.driver_used,
            &record.driver_unaccounted,
            &record.driver_seen_unix_ms,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        record.lock.store(0, Ordering::Relaxed);
        record.waiters.store(0, Ordering::Relaxed);
        record.next_ticket.store(1, Ordering::Relaxed);
        // Slot counters of a never-used record are zero, but a damaged file may say otherwise:
        // recompute from them so the totals match what members hold.
        admission::recompute_totals(layout, index);
        record.state.store(layout::DEVICE_READY, Ordering::Release);
        layout
            .header
            .device_high_water
            .fetch_max(index as u32 + 1, Ordering::AcqRel);
        Ok(DeviceId {
            index: index as u32,
        })
    }

    /// [`Ledger::find_device`] in the file mapped now: the record's own id.
    pub(super) fn find_here(&self, uuid: [u8; 16]) -> Option<DeviceId> {
        self.intact().ok()?;
        // All 64 records, not just up to the high-water hint: a damaged hint must never lead to
        // a second record (and a second budget) for the same device.
        self.layout()
            .devices
            .iter()
            .position(|record| {
                record.state.load(Ordering::Acquire) == layout::DEVICE_READY
                    && layout::load_uuid(&record.uuid) == uuid
            })
            .map(|index| DeviceId {
                index: index as u32,
            })
    }

    /// The budget of `dev`.
    pub fn budget(&self, dev: DeviceId) -> u64 {
        let dev = self.own.device(dev);
        if self.intact().is_err() {
            return 0;
        }
        self.device(dev).budget.load(Ordering::Relaxed)
    }

    /// The cheap check made before every use of the mapping: this handle was not detached, and
    /// no member marked the file truncated. (Only a system call can tell whether the file is
    /// still whole; that is [`Ledger::check_file`], made on the slow paths.)
    fn intact(&self) -> Result<(), LedgerError> {
        if self.detached.load(Ordering::Relaxed) {
            return Err(self.truncated());
        }
        if self.layout().header.magic.load(Ordering::Relaxed) == layout::TRUNCATED_MAGIC {
            self.detached.store(true, Ordering::Relaxed);
            return Err(self.truncated());
        }
        Ok(())
    }

    /// The check made on every slow path (joining, registering, reclaiming, waiting, a contended
    /// lock, a snapshot): whether the file is still whole, by `fstat`. A truncated file is given
    /// its size back and marked (see `file::restore_size_and_mark`), and this handle stops using
    /// the mapping: every later request is refused with [`LedgerError::Truncated`], which the
    /// guard answers with `VRAMGUARD_ON_ERROR`.
    fn check_file(&self) -> Result<(), LedgerError> {
        if self.detached.load(Ordering::Relaxed) {
            return Err(self.truncated());
        }
        if self.own.moving() && !own::moving_here() {
            // Another thread moves the members to a rebuilt ledger: whatever waits here gives
            // up and is made again there (`operations`).
            return Err(LedgerError::Rebuilding {
                path: self.path.clone(),
            });
        }
        if file::is_truncated(&self.file) {
            self.detached.store(true, Ordering::Relaxed);
            if !self.read_only {
                file::restore_size_and_mark(&self.file);
            }
            return Err(self.truncated());
        }
        self.intact()
    }

    fn unknown_handle(&self) -> LedgerError {
        LedgerError::UnknownHandle {
            path: self.path.clone(),
        }
    }

    fn truncated(&self) -> LedgerError {
        LedgerError::Truncated {
            path: self.path.clone(),
        }
    }

    fn layout(&self) -> &LedgerLayout {
        self.mapping.layout()
    }

    fn device(&self, dev: DeviceId) -> &DeviceRecord {
        // DeviceId indices are checked when the id is made; `min` keeps even a forged one in bounds.
        &self.layout().devices[(dev.index as usize).min(MAX_DEVICES - 1)]
    }

    fn slot(&self, index: usize) -> &SlotRecord {
        &self.layout().slots[index.min(MAX_PROCESSES - 1)]
    }

    fn reopen(&self) -> Result<File, LedgerError> {
        file::reopen(&self.file, &self.path, self.identity())
    }

    /// Device and inode of the file mapped now.
    fn identity(&self) -> (u64, u64) {
        (
            self.identity[0].load(Ordering::Acquire),
            self.identity[1].load(Ordering::Acquire),
        )
    }

    /// Whether the member in slot `index` is alive (its liveness lock is held by someone).
    fn slot_is_alive(&self, index: usize) -> bool {
        use std::os::fd::AsFd;
        liveness::is_locked(self.file.as_fd(), layout::LOCK_BASE + index as u64)
    }

    /// Whether the owner named by a device-lock token is gone.
    fn lock_owner_is_dead(&self, token: u64) -> bool {
        match lock::token_owner(token) {
            Some((index, generation)) if index < MAX_PROCESSES => {
                let slot = self.slot(index);
                slot.generation.load(Ordering::Acquire) as u32 != generation
                    || !self.slot_is_alive(index)
            }
            _ => true,
        }
    }

    /// Takes `dev`'s lock as the holder of `token`, repairing the totals if a dead owner had it.
    /// Inlined: the uncontended case is one compare-and-swap; the rest is out of line.
    #[inline]
    fn lock_device(&self, dev: DeviceId, token: u64) -> Result<lock::DeviceGuard<'_>, LedgerError> {
        let record = self.device(dev);
        match lock::acquire(&record.lock, token, LOCK_DEADLINE, |owner| {
            self.probe_lock_owner(owner)
        }) {
            Ok(guard) => {
                if guard.taken_from_dead {
                    self.repair_after_dead_owner(dev);
                }
                if self.pending.any() {
                    self.apply_pending(dev);
                }
                Ok(guard)
            }
            Err(busy) => Err(self.lock_busy_error(busy)),
        }
    }

    /// What a contended device lock's waiter learns about the owner `owner`. A contended lock is
    /// a slow path: the file is checked before asking about the owner.
    #[cold]
    fn probe_lock_owner(&self, owner: u64) -> lock::Probe {
        if self.check_file().is_err() {
            lock::Probe::GiveUp
        } else if self.lock_owner_is_dead(owner) {
            lock::Probe::OwnerDead
        } else {
            lock::Probe::OwnerAlive
        }
    }

    /// Under `dev`'s lock just taken from a dead owner: recomputes its totals and wakes waiters.
    #[cold]
    fn repair_after_dead_owner(&self, dev: DeviceId) {
        let record = self.device(dev);
        admission::recompute_totals(self.layout(), dev.index as usize);
        record.repairs.fetch_add(1, Ordering::Relaxed);
        queue::hand_over(self.layout(), dev.index as usize, self.slot_count());
        admission::wake_all(record);
    }

    /// The error for a device lock that could not be taken.
    #[cold]
    fn lock_busy_error(&self, busy: lock::Busy) -> LedgerError {
        if self.detached.load(Ordering::Relaxed) {
            self.truncated()
        } else {
            LedgerError::LockTimeout {
                path: self.path.clone(),
                what: "device",
                waited: busy.waited,
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Closing a member descriptor drops its liveness lock (unless a forked child shares it):
        // the member then counts as dead and its bytes are reclaimed by the next decision.
        for fd in self.member_files.iter() {
            membership::close_member_file(fd);
        }
    }
}
