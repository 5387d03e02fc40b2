//! This process as a member of the ledger: its slot, its tables of what it holds, and the one
//! record per device ordinal that admission fills in ([`crate::admission`]).
//!
//! - [`devices`]: the devices as this process sees them, one slot per ordinal.
//! - [`session`]: when the process attaches (lazily, at its first guarded call), what a call does
//!   when it cannot, and what happens at fork and exit.
//! - [`tables`]: what this process holds (pointers, handles, arrays, contexts, pools).
//! - [`pointers`]: the map from device pointers to what they hold.
//! - [`watcher`]: the thread that checks the ledger and has it rebuilt when it is damaged.

pub mod devices;
pub mod pointers;
pub mod session;
pub mod tables;
pub mod watcher;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};
use vramguard_core::ledger::{Ledger, MAX_DEVICES, SlotId};
use vramguard_core::settings::Config;

use crate::log;
use crate::lookup::symbols;
use devices::{Device, DeviceSlot};
use tables::{Charge, Tables};

/// A process attached to the ledger.
pub struct Process {
    pub(crate) pid: i32,
    pub(crate) config: &'static Config,
    pub(crate) ledger: Ledger,
    pub(crate) slot: SlotId,
    pub(crate) left: AtomicBool,
    pub(crate) tables: Mutex<Tables>,
    /// One slot per device ordinal below [`MAX_DEVICES`] (a real device beyond is unusable:
    /// the ledger holds no more devices than that).
    pub(crate) devices: Box<[DeviceSlot]>,
    pub(crate) wait_announced: AtomicBool,
}

/// The process's command line, for `vramguard status` (first two words, short).
fn command_line() -> String {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let text: String = words.join(" ").chars().take(120).collect();
    if text.is_empty() { "?".into() } else { text }
}

impl Process {
    /// Opens the ledger and joins it as process `pid`. The error is the one message to print.
    pub fn attach(pid: i32, config: &'static Config) -> Result<Process, String> {
        if let Err(reason) = symbols::driver_handle() {
            return Err(format!("cannot open the CUDA driver {reason}"));
        }
        let ledger =
            Ledger::open(&config.dir).map_err(|e| format!("cannot use the ledger: {e}"))?;
        let slot = ledger
            .join(&command_line())
            .map_err(|e| format!("cannot join the ledger: {e}"))?;
        log::info(&format!(
            "pid {pid} joined the ledger {}",
            ledger.path().display()
        ));
        Ok(Process {
            pid,
            config,
            ledger,
            slot,
            left: AtomicBool::new(false),
            tables: Mutex::new(Tables::default()),
            devices: (0..MAX_DEVICES).map(|_| DeviceSlot::default()).collect(),
            wait_announced: AtomicBool::new(false),
        })
    }

    /// The pid that attached.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True once the process has left the ledger (at exit).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// Leaves the ledger (all bytes returned); later calls pass through.
    pub fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.ledger.leave(self.slot);
        }
    }

    /// The tables, locked. Never hold the guard across a driver call or a ledger wait.
    pub fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock()
    }

    /// Returns held bytes to the ledger.
    #[inline]
    pub fn release(&self, charge: Option<Charge>) {
        if let Some(charge) = charge.filter(|c| c.bytes > 0) {
            self.ledger.release(self.slot, charge.device, charge.bytes);
        }
    }

    /// Records what the driver just said about `device`'s memory in the ledger, for
    /// `vramguard status` (its "outside the guard" when the management library cannot say).
    pub fn note_driver_memory(&self, device: &Device, driver_free: u64, driver_total: u64) {
        self.ledger
            .note_driver_memory(device.id, driver_free, driver_total);
    }

    /// `cuMemGetInfo` as this process may use the device: (free, total).
    pub fn memory_info(&self, device: &Device, driver_free: u64) -> (u64, u64) {
        let limit = self.limit(device);
        let total = limit.map_or(device.budget, |limit| limit.min(device.budget));
        let reserve = device.reserve;
        let driver_room = driver_free
            .saturating_sub(reserve)
            .saturating_sub(self.ledger.unbacked_by_others(self.slot, device.id));
        let free = self
            .ledger
            .available(self.slot, device.id, limit)
            .min(driver_room)
            .min(driver_free)
            .min(total);
        (free, total)
    }

    /// `cuDeviceTotalMem` as this process may use the device.
    pub fn total_memory(&self, device: &Device) -> u64 {
        self.limit(device)
            .map_or(device.budget, |limit| limit.min(device.budget))
    }

    /// This process's `VRAMGUARD_LIMIT` on `device`, in bytes (a percentage is of its budget).
    #[inline]
    pub fn limit(&self, device: &Device) -> Option<u64> {
        self.config.limit_on(device.budget)
    }
}
