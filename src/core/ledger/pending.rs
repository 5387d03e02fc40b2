//! Updates that could not take the device lock in time, kept in the process until they can.
//!
//! Commit, rollback and release record what the driver already did: dropping one would leave
//! the ledger disagreeing with the card for good. When the device lock cannot be taken before
//! its deadline (its holder is stopped, or the lock word was forged), the update is recorded
//! here instead, in a fixed table of the ledger handle (no allocation), merged with the other
//! updates pending for the same member and device; the next decision of this process that takes
//! that device's lock applies it, before anything else, exactly once (the amounts are taken out
//! of the table under its mutex and applied under the device lock). A waiter that could not take
//! the lock to leave the line records its withdrawal the same way.
//!
//! Applied in the order commit, rollback, release (and the withdrawal last): what a release
//! returns was committed before it, and rollbacks and releases touch different counters, so this
//! order gives what the calls' own order gives. Only when the table is full (more than
//! [`CAPACITY`] member-device pairs with updates pending at once) does an update wait for the
//! lock again instead, as long as it takes: it is still never dropped.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SlotId;

/// Member-device pairs that can have updates pending at once: one member on every device.
pub(super) const CAPACITY: usize = super::layout::MAX_DEVICES;

/// A queued request to take out of the line (see `queue::withdraw`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Withdrawal {
    /// Its ticket.
    pub ticket: u64,
    /// The claim to set back if it was a claim granted meanwhile.
    pub old_claim: u64,
}

/// What is pending for one member on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Updates {
    /// Bytes to move from in flight to held.
    pub commit: u64,
    /// Bytes of in flight to drop.
    pub rollback: u64,
    /// Held bytes to return.
    pub release: u64,
    /// A queued request to take out of the line.
    pub withdraw: Option<Withdrawal>,
}

impl Updates {
    /// One update of each kind, to merge.
    pub fn commit(bytes: u64) -> Updates {
        Updates {
            commit: bytes,
            ..Updates::default()
        }
    }
    pub fn rollback(bytes: u64) -> Updates {
        Updates {
            rollback: bytes,
            ..Updates::default()
        }
    }
    pub fn release(bytes: u64) -> Updates {
        Updates {
            release: bytes,
            ..Updates::default()
        }
    }
    pub fn withdraw(withdrawal: Withdrawal) -> Updates {
        Updates {
            withdraw: Some(withdrawal),
            ..Updates::default()
        }
    }

    /// Whether applying these may make room for others.
    pub fn frees_room(&self) -> bool {
        self.rollback != 0 || self.release != 0 || self.withdraw.is_some()
    }

    fn merge(&mut self, other: Updates) {
        self.commit = self.commit.saturating_add(other.commit);
        self.rollback = self.rollback.saturating_add(other.rollback);
        self.release = self.release.saturating_add(other.release);
        if other.withdraw.is_some() {
            self.withdraw = other.withdraw;
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    slot: SlotId,
    device: u32,
    updates: Updates,
}

/// The table of a ledger handle.
pub(super) struct Pending {
    /// Some entry is in use: the one load the lock's fast path makes.
    any: AtomicBool,
    table: Mutex<[Option<Entry>; CAPACITY]>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            any: AtomicBool::new(false),
            table: Mutex::new([None; CAPACITY]),
        }
    }

    /// Whether anything may be pending (one relaxed load).
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Records `updates` for `slot` on device `device`; `false` when the table is full.
    pub fn record(&self, slot: SlotId, device: u32, updates: Updates) -> bool {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = table
            .iter_mut()
            .flatten()
            .find(|e| e.slot == slot && e.device == device)
        {
            entry.updates.merge(updates);
            return true;
        }
        let Some(free) = table.iter_mut().find(|e| e.is_none()) else {
            return false;
        };
        *free = Some(Entry {
            slot,
            device,
            updates,
        });
        self.any.store(true, Ordering::Release);
        true
    }

    /// Takes out everything pending on device `device`, for [`CAPACITY`] members at most, as
    /// `(slot, updates)` pairs (the caller holds the device lock and applies them).
    pub fn take(&self, device: u32) -> [Option<(SlotId, Updates)>; CAPACITY] {
        let mut out = [None; CAPACITY];
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut n = 0;
        for entry in table.iter_mut() {
            if let Some(e) = entry
                && e.device == device
            {
                out[n] = Some((e.slot, e.updates));
                n += 1;
                *entry = None;
            }
        }
        self.any
            .store(table.iter().any(Option::is_some), Ordering::Release);
        out
    }

    /// Forgets everything pending: the handle moved to a rebuilt ledger, into which it wrote
    /// its members' own counters, which already include every update pending here (the ids
    /// recorded here named the old file's slots and records).
    pub fn clear(&self) {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *table = [None; CAPACITY];
        self.any.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: u32) -> SlotId {
        SlotId {
            index,
            generation: 1,
        }
    }

    #[test]
    fn updates_are_merged_per_member_and_device_and_taken_once() {
        let pending = Pending::new();
        assert!(!pending.any());
        assert!(pending.record(slot(0), 3, Updates::commit(10)));
        assert!(pending.record(slot(0), 3, Updates::release(4)));
        assert!(pending.record(slot(0), 3, Updates::commit(5)));
        assert!(pending.record(slot(0), 4, Updates::rollback(7)));
        assert!(pending.any());
        let taken: Vec<_> = pending.take(3).into_iter().flatten().collect();
        assert_eq!(
            taken,
            vec![(
                slot(0),
                Updates {
                    commit: 15,
                    release: 4,
                    ..Updates::default()
                }
            )]
        );
        assert!(pending.take(3).into_iter().flatten().next().is_none());
        assert!(pending.any(), "device 4 still has its rollback");
        let taken: Vec<_> = pending.take(4).into_iter().flatten().collect();
        assert_eq!(taken, vec![(slot(0), Updates::rollback(7))]);
        assert!(!pending.any());
    }

    #[test]
    fn a_full_table_refuses_instead_of_dropping() {
        let pending = Pending::new();
        for device in 0..CAPACITY as u32 {
            assert!(pending.record(slot(1), device, Updates::release(1)));
        }
        assert!(!pending.record(slot(2), 0, Updates::release(1)));
        // An update for a pair already pending still merges.
        assert!(pending.record(slot(1), 0, Updates::release(1)));
        let taken: Vec<_> = pending.take(0).into_iter().flatten().collect();
        assert_eq!(taken, vec![(slot(1), Updates::release(2))]);
        assert!(pending.record(slot(2), 0, Updates::release(1)));
    }
}
