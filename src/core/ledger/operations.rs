//! The public operations that change what a member holds: joining, registering a device,
//! reserving, committing, rolling back, releasing, claiming, leaving.
//!
//! Each translates the handle's ids to the file mapped now (`own`), passes the gate (so no move
//! to a rebuilt ledger happens in its middle), runs in the file (`admission`, `membership`) and
//! keeps the member's own counters. An operation that fails because the ledger is being rebuilt,
//! or because it found it damaged (a device lock held past its deadline, its own slot
//! overwritten), has the handle rebuild or follow the ledger (`rebuild`) and is made again there:
//! the caller never sees the move.

use std::sync::atomic::Ordering;

use super::layout;
use super::own::DeviceInfo;
use super::{DeviceId, Ledger, LedgerError, Refusal, Request, Reservation, SlotId};

/// How many times an operation is made again after a move.
const RETRIES: u32 = 2;

impl Ledger {
    /// Makes this process a member: takes a free slot (reclaiming one left by a dead process if
    /// needed), records pid, pid namespace, start time and `command`, and holds the slot's
    /// liveness lock on a new open file description until [`Ledger::leave`] or exit. A forked
    /// child calls this again to become a member of its own.
    pub fn join(&self, command: &str) -> Result<SlotId, LedgerError> {
        self.retried(|| {
            let slot = self.join_here(command)?;
            Ok(self
                .own
                .add_member(slot.index as usize, slot.generation, command))
        })
    }

    /// Orderly exit of a member: returns all its bytes, drops its claims and wait tickets, wakes
    /// waiters, frees the slot and drops its liveness lock.
    pub fn leave(&self, slot: SlotId) {
        let _op = self.own.enter();
        self.leave_here(self.own.slot(slot));
        self.own.remove_member(slot);
    }

    /// Finds the device with `uuid`, or adds it with the given name, capacity and budget. A
    /// device already in the ledger keeps the budget it was registered with first, unless no
    /// live member other than this handle's has anything in the ledger: its settings are then
    /// this caller's.
    pub fn register_device(
        &self,
        uuid: [u8; 16],
        name: &str,
        capacity: u64,
        budget: u64,
    ) -> Result<DeviceId, LedgerError> {
        self.retried(|| {
            let record = self.register_here(uuid, name, capacity, budget)?;
            Ok(self.own.device_id(record.index as usize, || DeviceInfo {
                uuid,
                name: name.to_owned(),
                capacity,
                budget,
            }))
        })
    }

    /// The device registered with `uuid`, if any.
    pub fn find_device(&self, uuid: [u8; 16]) -> Option<DeviceId> {
        let record = self.find_here(uuid)?;
        let device = self.device(record);
        Some(self.own.device_id(record.index as usize, || DeviceInfo {
            uuid,
            name: layout::load_text(&device.name),
            capacity: device.capacity.load(Ordering::Relaxed),
            budget: device.budget.load(Ordering::Relaxed),
        }))
    }

    /// Admits `bytes` more for `slot` on `dev` if they fit under the budget (and `req.limit`),
    /// recording them as in flight; otherwise refuses or, with `req.wait_until`, waits in line.
    #[inline]
    pub fn reserve(
        &self,
        slot: SlotId,
        dev: DeviceId,
        bytes: u64,
        req: &Request,
    ) -> Result<Reservation, Refusal> {
        self.retried(|| {
            let granted =
                self.reserve_here(self.own.slot(slot), self.own.device(dev), bytes, req)?;
            self.own.reserved(slot, dev, bytes);
            Ok(Reservation {
                slot,
                device: dev,
                bytes,
                available_after: granted.available_after,
            })
        })
    }

    /// Moves a reservation from in flight to held (the driver granted the memory).
    pub fn commit(&self, r: Reservation) {
        let _op = self.own.enter();
        let (slot, dev, bytes) = (r.slot, r.device, r.bytes);
        self.commit_here(self.in_file(r));
        self.own.committed(slot, dev, bytes);
    }

    /// Drops a reservation (the driver refused, or the caller gave up); wakes waiters.
    pub fn rollback(&self, r: Reservation) {
        let _op = self.own.enter();
        let (slot, dev, bytes) = (r.slot, r.device, r.bytes);
        self.rollback_here(self.in_file(r));
        self.own.rolled_back(slot, dev, bytes);
    }

    /// Returns `bytes` held by `slot` on `dev` (saturating at what it holds); wakes waiters.
    pub fn release(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        let _op = self.own.enter();
        self.release_here(self.own.slot(slot), self.own.device(dev), bytes);
        self.own.released(slot, dev, bytes);
    }

    /// Sets the member's up-front claim on `dev` (`VRAMGUARD_EXPECT`): its charge becomes
    /// `max(held + in flight, claim)`. Growing the claim is admitted like a reservation (and may
    /// wait); shrinking it (`0` drops it) always succeeds and wakes waiters.
    pub fn set_claim(
        &self,
        slot: SlotId,
        dev: DeviceId,
        bytes: u64,
        req: &Request,
    ) -> Result<(), Refusal> {
        self.retried(|| {
            self.set_claim_here(self.own.slot(slot), self.own.device(dev), bytes, req)?;
            self.own.claimed(slot, dev, bytes);
            Ok(())
        })
    }

    /// Makes `attempt` (an operation in the file mapped now, and on success the member's own
    /// counters) inside the gate; when it fails with a ledger error after which the handle moved
    /// or was moved (see [`Ledger::after_failure`]), makes it again there, up to [`RETRIES`]
    /// times. Always inlined with its closure: `reserve` runs on every allocation.
    #[inline(always)]
    fn retried<T, E: MaybeLedgerError>(&self, attempt: impl Fn() -> Result<T, E>) -> Result<T, E> {
        let mut tries = 0;
        loop {
            let op = self.own.enter();
            let moves = self.own.moves();
            let error = match attempt() {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            drop(op);
            let again = match error.ledger_error() {
                Some(ledger) => tries < RETRIES && self.after_failure(ledger, moves),
                None => false,
            };
            if !again {
                return Err(error);
            }
            tries += 1;
        }
    }

    /// A reservation with the ids of the file mapped now.
    fn in_file(&self, r: Reservation) -> Reservation {
        Reservation {
            slot: self.own.slot(r.slot),
            device: self.own.device(r.device),
            ..r
        }
    }

    /// After an operation failed with `error` (outside the gate): whether to make it again,
    /// because the handle moved since it started (`moves` then), another thread is moving it
    /// now, or the failure shows a damaged ledger, which is then rebuilt or followed.
    #[cold]
    fn after_failure(&self, error: &LedgerError, moves: u32) -> bool {
        if self.own.moving() || self.own.moves() != moves {
            self.own.wait_until_moved();
            return true;
        }
        let damage = matches!(
            error,
            LedgerError::LockTimeout { .. }
                | LedgerError::SlotLost { .. }
                | LedgerError::Rebuilding { .. }
        );
        damage && self.heal().moved()
    }
}

/// The error of an operation, which may be a failure of the ledger (after which the operation
/// may be made again) or a refusal that is the operation's answer.
trait MaybeLedgerError {
    fn ledger_error(&self) -> Option<&LedgerError>;
}

impl MaybeLedgerError for LedgerError {
    #[inline(always)]
    fn ledger_error(&self) -> Option<&LedgerError> {
        Some(self)
    }
}

impl MaybeLedgerError for Refusal {
    #[inline(always)]
    fn ledger_error(&self) -> Option<&LedgerError> {
        match self {
            Refusal::Ledger(error) => Some(error),
            _ => None,
        }
    }
}
