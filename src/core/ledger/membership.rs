//! Joining and leaving the ledger, and reclaiming what dead members held.
//!
//! A member owns its slot exactly while it holds the slot's liveness lock (see `liveness`).
//! Joining takes the first slot whose lock is free; a slot whose previous member died still
//! carries that member's counters, which are returned to the devices before reuse. Reclaiming
//! a dead member works the same way: whoever takes the dead slot's liveness lock owns the slot and
//! returns its bytes, under each device's lock, with a fresh generation so that its device-lock
//! token is its own. If the reclaimer dies half-way, the next one continues where it stopped.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::layout::{self, MAX_DEVICES, MAX_PROCESSES, SLOT_ACTIVE, SLOT_FREE, SLOT_RECLAIMING};
use super::{DeviceId, Ledger, LedgerError, SlotId, admission, liveness, lock};

/// Closes the member descriptor stored in `fd` (if any), dropping its liveness lock.
pub(super) fn close_member_file(fd: &AtomicI32) {
    let raw = fd.swap(-1, Ordering::AcqRel);
    if raw >= 0 {
        // SAFETY: `raw` came from `File::into_raw_fd` in `join` and was stored only in this slot;
        // the swap above made us its only owner, so it is closed exactly once.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
}

impl Ledger {
    /// Makes this process a member: takes a free slot (reclaiming one left by a dead process if
    /// needed), records pid, pid namespace, start time and `command`, and holds the slot's
    /// liveness lock on a new open file description until [`Ledger::leave`] or exit. A forked
    /// child calls this again to become a member of its own.
    pub(super) fn join_here(&self, command: &str) -> Result<SlotId, LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.check_file()?;
        let member_file = self.reopen()?;
        // The lowest slot whose liveness lock is free: a free slot, or one left by a dead
        // member (reused at once, which keeps the table compact and scans short).
        for index in 0..MAX_PROCESSES {
            let locked = liveness::try_lock(member_file.as_fd(), layout::LOCK_BASE + index as u64)
                .map_err(|source| LedgerError::Io {
                    path: self.path.clone(),
                    op: "lock slot",
                    source,
                })?;
            if locked {
                return self.take_slot(index, member_file, command);
            }
        }
        Err(LedgerError::SlotsFull {
            path: self.path.clone(),
        })
    }

    fn take_slot(
        &self,
        index: usize,
        member_file: File,
        command: &str,
    ) -> Result<SlotId, LedgerError> {
        let slot = self.slot(index);
        let inherited =
            slot.state.load(Ordering::Acquire) != SLOT_FREE || self.slot_has_stake(index);
        if inherited && let Err(error) = self.return_slot_bytes(index) {
            liveness::unlock(member_file.as_fd(), layout::LOCK_BASE + index as u64);
            return Err(error);
        }
        let generation = slot
            .generation
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        slot.pid.store(liveness::current_pid(), Ordering::Relaxed);
        slot.pid_namespace
            .store(liveness::pid_namespace_inode(), Ordering::Relaxed);
        slot.started_unix_ms
            .store(liveness::unix_ms(), Ordering::Relaxed);
        layout::store_text(&slot.command, command);
        slot.state.store(SLOT_ACTIVE, Ordering::Release);
        self.layout()
            .header
            .slot_high_water
            .fetch_max(index as u32 + 1, Ordering::AcqRel);
        close_member_file(&self.member_files[index]);
        self.member_files[index].store(member_file.into_raw_fd(), Ordering::Release);
        Ok(SlotId {
            index: index as u32,
            generation: generation as u32,
        })
    }

    /// Whether `slot` still names a live membership of this ledger. Made at the start of every
    /// reservation, commit and release: the common answer is checked inline with plain loads,
    /// and the error is built out of line.
    #[inline]
    pub(super) fn check_slot(&self, slot: SlotId) -> Result<(), LedgerError> {
        if self.slot_is_live(slot) {
            Ok(())
        } else {
            Err(self.slot_error(slot))
        }
    }

    /// The checks of [`Ledger::check_slot`] without building an error.
    #[inline]
    fn slot_is_live(&self, slot: SlotId) -> bool {
        let index = slot.index as usize;
        !self.read_only
            && !self.detached.load(Ordering::Relaxed)
            && self.layout().header.magic.load(Ordering::Relaxed) != layout::TRUNCATED_MAGIC
            && index < MAX_PROCESSES
            && {
                let record = self.slot(index);
                record.generation.load(Ordering::Acquire) as u32 == slot.generation
                    && record.state.load(Ordering::Acquire) == SLOT_ACTIVE
            }
    }

    /// Why `slot` fails [`Ledger::check_slot`] (the slow path; also marks a truncated file).
    #[cold]
    #[inline(never)]
    fn slot_error(&self, slot: SlotId) -> LedgerError {
        if self.read_only {
            return LedgerError::ReadOnly {
                path: self.path.clone(),
            };
        }
        if let Err(error) = self.intact() {
            return error;
        }
        let index = slot.index as usize;
        if index >= MAX_PROCESSES {
            return self.unknown_handle();
        }
        LedgerError::SlotLost {
            path: self.path.clone(),
        }
    }

    /// Orderly exit of a member: returns all its bytes, drops its claims and wait tickets, wakes
    /// waiters, frees the slot and drops its liveness lock.
    pub(super) fn leave_here(&self, slot: SlotId) {
        if self.check_file().is_err() {
            // The file lost its content: only the liveness lock is left to drop.
            close_member_file(&self.member_files[(slot.index as usize).min(MAX_PROCESSES - 1)]);
            return;
        }
        if self.check_slot(slot).is_err() {
            return;
        }
        let index = slot.index as usize;
        let token = lock::token(slot.index, slot.generation.into());
        let devices = self.device_count();
        for device in 0..devices {
            // A lock timeout leaves that device's share to the next reclaimer (the slot is freed
            // below only if everything was returned).
            let _ = self.return_device_share(index, device, token);
        }
        if !self.slot_has_stake(index) {
            let record = self.slot(index);
            record.generation.fetch_add(1, Ordering::AcqRel);
            record.state.store(SLOT_FREE, Ordering::Release);
        }
        close_member_file(&self.member_files[index]);
    }

    /// Returns every byte held by members that are dead (their liveness lock is free). Returns
    /// the bytes reclaimed (sum of their charges). A read-only handle reclaims nothing.
    pub fn reclaim_dead(&self) -> u64 {
        self.reclaim_where(|_| true)
    }

    /// Reclaims dead members that have a stake (or wait) on `dev`.
    pub(super) fn reclaim_dead_on(&self, dev: DeviceId) -> u64 {
        let device = dev.index as usize;
        self.reclaim_where(|index| admission::has_stake(&self.slot(index).devices[device]))
    }

    fn reclaim_where(&self, candidate: impl Fn(usize) -> bool) -> u64 {
        if self.read_only || self.check_file().is_err() {
            return 0;
        }
        let mut reclaimed = 0u64;
        for index in 0..self.slot_count() {
            let state = self.slot(index).state.load(Ordering::Acquire);
            let worth_a_look =
                (state != SLOT_FREE || self.slot_has_stake(index)) && candidate(index);
            if worth_a_look && !self.slot_is_alive(index) {
                reclaimed = reclaimed.saturating_add(self.reclaim_slot(index));
            }
        }
        reclaimed
    }

    /// Takes the dead member's liveness lock (so no one else reclaims or joins it meanwhile),
    /// returns its bytes and frees the slot.
    fn reclaim_slot(&self, index: usize) -> u64 {
        let Ok(file) = self.reopen() else { return 0 };
        let byte = layout::LOCK_BASE + index as u64;
        if !matches!(liveness::try_lock(file.as_fd(), byte), Ok(true)) {
            return 0; // alive after all, or someone else is on it
        }
        let reclaimed = self.return_slot_bytes(index).unwrap_or(0);
        if !self.slot_has_stake(index) {
            self.slot(index).state.store(SLOT_FREE, Ordering::Release);
        }
        liveness::unlock(file.as_fd(), byte);
        reclaimed
    }

    /// Returns the bytes of slot `index`, whose liveness lock the caller holds. Takes a new
    /// generation first, so device locks taken here carry a token no dead owner shares.
    fn return_slot_bytes(&self, index: usize) -> Result<u64, LedgerError> {
        let slot = self.slot(index);
        let generation = slot
            .generation
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        slot.state.store(SLOT_RECLAIMING, Ordering::Release);
        let token = lock::token(index as u32, generation);
        let mut returned = 0u64;
        for device in 0..self.device_count() {
            returned = returned.saturating_add(self.return_device_share(index, device, token)?);
        }
        Ok(returned)
    }

    /// Under `device`'s lock, removes slot `index`'s counters on it from the totals and zeroes
    /// them. Returns the charge removed.
    fn return_device_share(
        &self,
        index: usize,
        device: usize,
        token: u64,
    ) -> Result<u64, LedgerError> {
        let share = &self.slot(index).devices[device];
        if !admission::has_stake(share) {
            return Ok(0);
        }
        let dev = DeviceId {
            index: device as u32,
        };
        let guard = self.lock_device(dev, token)?;
        let returned = admission::remove_share(self.device(dev), share);
        // What it held goes to the queued requests that fit, in this very step.
        super::queue::hand_over(self.layout(), device, self.slot_count());
        drop(guard);
        admission::wake_all(self.device(dev));
        Ok(returned)
    }

    fn slot_has_stake(&self, index: usize) -> bool {
        self.slot(index).devices.iter().any(admission::has_stake)
    }

    /// Number of slots worth scanning (the high-water mark, clamped).
    pub(super) fn slot_count(&self) -> usize {
        layout::clamp_count(
            self.layout().header.slot_high_water.load(Ordering::Acquire),
            MAX_PROCESSES,
        )
    }

    /// Number of device records worth scanning (the high-water mark, clamped).
    pub(super) fn device_count(&self) -> usize {
        layout::clamp_count(
            self.layout()
                .header
                .device_high_water
                .load(Ordering::Acquire),
            MAX_DEVICES,
        )
    }
}
