//! An owned copy of the ledger for display (`vramguard status`), with liveness evaluated, and a
//! look at who holds a device lock at one instant (for observers such as the soak suite).
//!
//! Taken without locks: each value is one atomic load, so the copy is made of real values but
//! not of one instant (a total may be read just before a member's counter changes).

use std::sync::atomic::Ordering;

use super::layout::{self, DEVICE_READY, SLOT_ACTIVE, SLOT_FREE};
use super::{DeviceId, DriverFigure, Ledger, MAX_DEVICES, MAX_PROCESSES, driver_figure, lock};

/// The whole ledger at (about) one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Registered devices.
    pub devices: Vec<DeviceSnapshot>,
    /// Member processes, including dead ones whose bytes were not yet reclaimed (`alive: false`).
    pub processes: Vec<ProcessSnapshot>,
}

impl Snapshot {
    /// Whether every device's totals (charged, held, reserved) are the sums of its members'.
    pub fn is_consistent(&self) -> bool {
        self.devices.iter().all(|device| {
            let (mut used, mut held, mut reserved) = (0u64, 0u64, 0u64);
            for share in self
                .processes
                .iter()
                .flat_map(|p| p.devices.iter().filter(|d| d.uuid == device.uuid))
            {
                used = used.saturating_add(share.charged);
                held = held.saturating_add(share.held);
                reserved = reserved.saturating_add(share.reserved);
            }
            (device.used, device.held, device.reserved) == (used, held, reserved)
        })
    }
}

/// One device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Its UUID.
    pub uuid: [u8; 16],
    /// Its name.
    pub name: String,
    /// Total memory in bytes.
    pub capacity: u64,
    /// Bytes that may be handed out.
    pub budget: u64,
    /// Charged: held + in flight + unused claims.
    pub used: u64,
    /// Held by members.
    pub held: u64,
    /// Reserved by requests in flight.
    pub reserved: u64,
    /// Requests waiting.
    pub waiting: u32,
    /// What guarded processes last learned from the driver about the card's memory.
    pub driver: Option<DriverFigure>,
}

/// One member process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSnapshot {
    /// Its slot index.
    pub slot: u32,
    /// Its pid (as its own pid namespace sees it).
    pub pid: i32,
    /// Its command line (cut to 64 bytes).
    pub command: String,
    /// Whether it is alive (holds its liveness lock).
    pub alive: bool,
    /// Running or waiting.
    pub state: ProcessState,
    /// Devices it has anything on.
    pub devices: Vec<ProcessDevice>,
    /// When it joined, in Unix milliseconds.
    pub started_unix_ms: u64,
}

/// What a member is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Not waiting.
    Running,
    /// Waiting for room on a device.
    Waiting {
        /// the device
        device_uuid: [u8; 16],
        /// bytes asked for
        bytes: u64,
        /// when the wait started, in Unix milliseconds
        since_unix_ms: u64,
    },
}

/// A member's standing on one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessDevice {
    /// The device.
    pub uuid: [u8; 16],
    /// Bytes held.
    pub held: u64,
    /// Bytes reserved in flight.
    pub reserved: u64,
    /// Its up-front claim.
    pub claim: u64,
    /// Its charge: `max(held + reserved, claim)`.
    pub charged: u64,
}

/// The member a device-lock owner token names (see [`Ledger::lock_holder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The token, as read from the lock word.
    pub token: u64,
    /// The member's slot.
    pub slot: u32,
    /// The pid its slot records, as the member's own pid namespace sees it (display only).
    pub pid: i32,
    /// Whether the member is alive (its slot's liveness lock is held).
    pub alive: bool,
}

impl Ledger {
    /// The owner token in `dev`'s lock word at this instant: 0 while the lock is free (and
    /// always 0 once the file was found truncated). One atomic load, cheap enough to poll.
    pub fn device_lock_token(&self, dev: DeviceId) -> u64 {
        let dev = self.own.device(dev);
        if self.intact().is_err() {
            return 0;
        }
        self.device(dev).lock.load(Ordering::Acquire)
    }

    /// The active member that owner token `token` names: its slot index is in range, the slot is
    /// active, and the slot's generation is the token's before and after its pid is read (so the
    /// pid is the one recorded for that very membership). `None` for 0, garbage, a token of a
    /// process reclaiming a dead member's slot (the slot's pid is still the dead member's), or a
    /// slot that changed hands since the token was read.
    pub fn lock_holder(&self, token: u64) -> Option<LockHolder> {
        self.intact().ok()?;
        let (index, generation) = lock::token_owner(token)?;
        if index >= MAX_PROCESSES {
            return None;
        }
        let slot = self.slot(index);
        let current = || {
            slot.generation.load(Ordering::Acquire) as u32 == generation
                && slot.state.load(Ordering::Acquire) == SLOT_ACTIVE
        };
        if !current() {
            return None;
        }
        let pid = slot.pid.load(Ordering::Acquire) as i32;
        if !current() {
            return None;
        }
        Some(LockHolder {
            token,
            slot: index as u32,
            pid,
            alive: self.slot_is_alive(index),
        })
    }

    /// An owned copy of the ledger, each member's liveness checked: one consistent reading,
    /// in which every device's totals are the sums of its members' counters (the copy is taken
    /// again until they are, for up to 50 ms: totals that stay different are damage, which
    /// [`Ledger::examine`] reports). Empty once the file was found truncated (its content is
    /// lost; see [`super::LedgerError::Truncated`]).
    pub fn snapshot(&self) -> Snapshot {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
        loop {
            let snapshot = self.snapshot_once();
            if snapshot.is_consistent() || std::time::Instant::now() >= deadline {
                return snapshot;
            }
            std::thread::yield_now();
        }
    }

    /// One copy of the ledger, each value one load (not of one instant).
    fn snapshot_once(&self) -> Snapshot {
        if self.check_file().is_err() {
            return Snapshot {
                devices: Vec::new(),
                processes: Vec::new(),
            };
        }
        let layout = self.layout();
        let device_count = self.device_count().min(MAX_DEVICES);
        let uuids: Vec<Option<[u8; 16]>> = layout.devices[..device_count]
            .iter()
            .map(|record| {
                (record.state.load(Ordering::Acquire) == DEVICE_READY)
                    .then(|| layout::load_uuid(&record.uuid))
            })
            .collect();
        let devices = layout.devices[..device_count]
            .iter()
            .zip(&uuids)
            .filter_map(|(record, uuid)| {
                uuid.map(|uuid| DeviceSnapshot {
                    uuid,
                    name: layout::load_text(&record.name),
                    capacity: record.capacity.load(Ordering::Relaxed),
                    budget: record.budget.load(Ordering::Relaxed),
                    used: record.charged.load(Ordering::Relaxed),
                    held: record.held.load(Ordering::Relaxed),
                    reserved: record.in_flight.load(Ordering::Relaxed),
                    waiting: record.waiters.load(Ordering::Relaxed),
                    driver: driver_figure::figure_of(record),
                })
            })
            .collect();
        let mut processes = Vec::new();
        for index in 0..self.slot_count() {
            let slot = self.slot(index);
            let mut state = ProcessState::Running;
            let mut member_devices = Vec::new();
            for (share, uuid) in slot.devices.iter().zip(&uuids) {
                let Some(uuid) = *uuid else { continue };
                let held = share.held.load(Ordering::Relaxed);
                let reserved = share.in_flight.load(Ordering::Relaxed);
                let claim = share.claim.load(Ordering::Relaxed);
                if let Some(bytes) = super::queue::waiting_bytes(share)
                    && state == ProcessState::Running
                {
                    state = ProcessState::Waiting {
                        device_uuid: uuid,
                        bytes,
                        since_unix_ms: share.wait_since_unix_ms.load(Ordering::Relaxed),
                    };
                }
                if held != 0 || reserved != 0 || claim != 0 {
                    let charged = held.saturating_add(reserved).max(claim);
                    member_devices.push(ProcessDevice {
                        uuid,
                        held,
                        reserved,
                        claim,
                        charged,
                    });
                }
            }
            if slot.state.load(Ordering::Acquire) == SLOT_FREE && member_devices.is_empty() {
                continue;
            }
            processes.push(ProcessSnapshot {
                slot: index as u32,
                pid: slot.pid.load(Ordering::Relaxed) as i32,
                command: layout::load_text(&slot.command),
                alive: self.slot_is_alive(index),
                state,
                devices: member_devices,
                started_unix_ms: slot.started_unix_ms.load(Ordering::Relaxed),
            });
        }
        Snapshot { devices, processes }
    }
}
