//! What guarded processes last learned from the driver about each card's memory: the card's used
//! bytes (`total - free` of `cuMemGetInfo_v2`), how much of them the ledger did not hold at that
//! moment, and when. `vramguard status` shows the second as memory "outside the guard" when the
//! management library cannot say.
//!
//! Written by whichever guarded process asked the driver anyway (the preload library's driver
//! checks near the edge of the card and the program's own `cuMemGetInfo`): three plain atomic
//! stores, no lock, nothing on the allocation fast path. Concurrent writers are not serialised:
//! a reader may pair one figure with another taken moments apart, each a real observation.

use std::sync::atomic::Ordering;

use super::{DeviceId, Ledger, liveness};

/// A card's memory as a guarded process last learned it from the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverFigure {
    /// The card's used bytes (`total - free`).
    pub used: u64,
    /// Of those, what the ledger did not hold then: memory outside the guard, as of then.
    pub unaccounted: u64,
    /// When, in Unix milliseconds.
    pub seen_unix_ms: u64,
}

impl Ledger {
    /// Records what the driver just said about `dev` (`cuMemGetInfo_v2`'s `free` and `total`):
    /// the card's used bytes, and of them what the ledger does not hold now. A read-only or
    /// detached handle records nothing.
    pub fn note_driver_memory(&self, dev: DeviceId, free: u64, total: u64) {
        let dev = self.own.device(dev);
        if self.read_only || self.intact().is_err() {
            return;
        }
        let record = self.device(dev);
        let used = total.saturating_sub(free);
        let unaccounted = used.saturating_sub(record.held.load(Ordering::Relaxed));
        record.driver_used.store(used, Ordering::Relaxed);
        record
            .driver_unaccounted
            .store(unaccounted, Ordering::Relaxed);
        // Never 0 once written: 0 means "never seen".
        record
            .driver_seen_unix_ms
            .store(liveness::unix_ms().max(1), Ordering::Release);
    }

    /// What guarded processes last learned from the driver about `dev`, if any ever asked.
    pub fn driver_figure(&self, dev: DeviceId) -> Option<DriverFigure> {
        let dev = self.own.device(dev);
        self.intact().ok()?;
        figure_of(self.device(dev))
    }
}

/// The figure of a device record, `None` while no guarded process has asked.
pub(super) fn figure_of(record: &super::layout::DeviceRecord) -> Option<DriverFigure> {
    let seen_unix_ms = record.driver_seen_unix_ms.load(Ordering::Acquire);
    (seen_unix_ms != 0).then(|| DriverFigure {
        used: record.driver_used.load(Ordering::Relaxed),
        unaccounted: record.driver_unaccounted.load(Ordering::Relaxed),
        seen_unix_ms,
    })
}
