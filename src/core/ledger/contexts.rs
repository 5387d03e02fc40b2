//! What a CUDA context costs on each device, as the members that created one measured it, and
//! the lock that lets one member at a time create a context on a device.
//!
//! A context takes device memory that no allocation call shows, from well under 100 MiB to over
//! 500 MiB depending on the card, the driver and lazy module loading. The guard measures it
//! across the creation (the card's used memory before and after); the figure is kept per device
//! so that the next member's up-front check uses what a context really costs there, instead of
//! a fixed estimate. Measurements are only sound one at a time: two contexts created at once
//! would each see the other's memory appear, so creation on a device is serialised by an OFD
//! byte lock (past the end of the file, like the liveness locks; the kernel drops it if the
//! holder dies), taken through a fresh open file description so that threads of one process
//! exclude each other as well.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{DeviceId, Ledger, LedgerError, SlotId, layout, lock};

/// Holds a device's context-creation lock until dropped.
pub struct ContextCreation {
    _lock: lock::ByteLockGuard,
}

impl Ledger {
    /// Takes `dev`'s context-creation lock, waiting for another member's creation to finish
    /// until `deadline`.
    pub fn lock_context_creation(
        &self,
        dev: DeviceId,
        deadline: Instant,
    ) -> Result<ContextCreation, LedgerError> {
        let dev = self.own.device(dev);
        self.check_file()?;
        let fresh = self.reopen()?;
        let byte = layout::CONTEXT_LOCK_BASE + u64::from(dev.index);
        lock::acquire_byte_lock(fresh, byte, deadline)
            .map(|lock| ContextCreation { _lock: lock })
            .map_err(|busy| LedgerError::LockTimeout {
                path: self.path.clone(),
                what: "context creation",
                waited: busy.waited,
            })
    }

    /// What the last context measured on `dev` took (never more than the device's capacity), or
    /// `None` when no member measured one yet.
    pub fn context_cost(&self, dev: DeviceId) -> Option<u64> {
        let dev = self.own.device(dev);
        self.intact().ok()?;
        let record = self.device(dev);
        if record.context_measured_unix_ms.load(Ordering::Acquire) == 0 {
            return None;
        }
        let bytes = record.context_bytes.load(Ordering::Relaxed);
        Some(bytes.min(record.capacity.load(Ordering::Relaxed)))
    }

    /// Records that a context on `dev` took `bytes` (measured at `now_unix_ms`, not 0).
    pub fn note_context_cost(&self, dev: DeviceId, bytes: u64, now_unix_ms: u64) {
        let dev = self.own.device(dev);
        if self.read_only || self.intact().is_err() {
            return;
        }
        let record = self.device(dev);
        record.context_bytes.store(bytes, Ordering::Relaxed);
        record
            .context_measured_unix_ms
            .store(now_unix_ms.max(1), Ordering::Release);
    }

    /// Bytes all members have reserved on `dev` and not yet committed or rolled back: allocations
    /// between their admission and the driver's answer, which the card may or may not hold yet.
    pub fn in_flight_on_device(&self, dev: DeviceId) -> u64 {
        let dev = self.own.device(dev);
        if self.intact().is_err() {
            return 0;
        }
        self.device(dev).in_flight.load(Ordering::Relaxed)
    }

    /// Bytes all members hold on `dev`, as the ledger last recorded them.
    pub fn held_on_device(&self, dev: DeviceId) -> u64 {
        let dev = self.own.device(dev);
        if self.intact().is_err() {
            return 0;
        }
        self.device(dev).held.load(Ordering::Relaxed)
    }
}

impl Ledger {
    /// Bytes member `slot` holds on `dev`.
    pub fn held_by(&self, slot: SlotId, dev: DeviceId) -> u64 {
        let (slot, dev) = (self.own.slot(slot), self.own.device(dev));
        if self.intact().is_err() {
            return 0;
        }
        let share = &self.slot(slot.index as usize).devices;
        share[(dev.index as usize).min(layout::MAX_DEVICES - 1)]
            .held
            .load(Ordering::Relaxed)
    }
}
