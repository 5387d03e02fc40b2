//! Accounting: admission against the ledger and the driver, per-process tables, device identity.
//!
//! Every allocation follows one protocol: reserve in the ledger *before* the driver call (the
//! ledger refuses or queues what does not fit under the budget), check the driver's own free
//! figure (memory held by programs the guard does not see), call the driver, then commit on
//! success or roll back on failure. Devices are identified by UUID, so processes that see the
//! cards in different orders (`CUDA_VISIBLE_DEVICES`) share one record per physical card.
//!
//! The in-process mutexes (parking_lot) are never held across a driver call or a ledger wait.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use vramguard_core::cuda::{CuDevice, CuResult, CuUuid};
use vramguard_core::ledger::{DeviceId, Ledger, Refusal, Request, Reservation, SlotId, WaitReport};
use vramguard_core::settings::{Config, OnError, Policy};
use vramguard_core::units::format_size;

use crate::functions::real;
use crate::log;
use crate::symbols::{self, aux};
use crate::tables::{Charge, Tables};

/// A device as this process sees it, with its ledger record.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// The ordinal in this process (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: CuDevice,
    /// The ledger record (shared by every process using the same physical card).
    pub id: DeviceId,
    /// The card's UUID.
    pub uuid: CuUuid,
    /// The driver's total memory figure.
    pub capacity: u64,
    /// The budget: capacity less the reserve.
    pub budget: u64,
}

/// Why the current device could not be determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDevice {
    /// No current context: the driver will answer the call with its own error.
    NoContext,
    /// The device could not be registered in the ledger: `VRAMGUARD_ON_ERROR` decides.
    Unusable,
}

/// A process attached to the ledger.
pub struct Process {
    pid: i32,
    config: &'static Config,
    ledger: Ledger,
    slot: SlotId,
    left: AtomicBool,
    tables: Mutex<Tables>,
    devices: Mutex<HashMap<CuDevice, Device>>,
    /// Devices whose `VRAMGUARD_EXPECT` claim is in place (or given up on).
    claimed: Mutex<Vec<CuDevice>>,
    wait_announced: AtomicBool,
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
        if symbols::driver_handle().is_none() {
            return Err(format!(
                "the CUDA driver `{}` cannot be loaded",
                config.driver.display()
            ));
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
            devices: Mutex::new(HashMap::new()),
            claimed: Mutex::new(Vec::new()),
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

    // ----- devices -----------------------------------------------------------------------------

    /// The device of `ordinal`, registered in the ledger on first use.
    pub fn device(&self, ordinal: CuDevice) -> Result<Device, NoDevice> {
        if let Some(device) = self.devices.lock().get(&ordinal) {
            return Ok(*device);
        }
        let uuid = query_uuid(ordinal).ok_or(NoDevice::NoContext)?;
        let mut capacity = 0usize;
        // SAFETY: `capacity` is a live usize the driver writes.
        if !unsafe { real::cuDeviceTotalMem_v2(&mut capacity, ordinal) }.is_success() {
            return Err(NoDevice::NoContext);
        }
        let capacity = capacity as u64;
        let name = query_name(ordinal);
        let budget = self.config.budget_for(capacity);
        let id = self
            .ledger
            .register_device(uuid.0, &name, capacity, budget)
            .map_err(|e| {
                log::error(&format!("cannot register {uuid} in the ledger: {e}"));
                NoDevice::Unusable
            })?;
        let budget = self.ledger.budget(id);
        log::info(&format!(
            "device {ordinal} is {uuid} ({name}): {} of which {} may be used",
            format_size(capacity),
            format_size(budget)
        ));
        let device = Device {
            ordinal,
            id,
            uuid,
            capacity,
            budget,
        };
        Ok(*self.devices.lock().entry(ordinal).or_insert(device))
    }

    /// The device of the current context.
    pub fn current_device(&self) -> Result<Device, NoDevice> {
        let ordinal = current_ordinal().ok_or(NoDevice::NoContext)?;
        self.device(ordinal)
    }

    /// What a call does when the device is unknown: pass it through, or refuse it under
    /// `ON_ERROR=closed` when the ledger is the problem.
    pub fn unaccounted(&self, why: NoDevice, pass_through: impl FnOnce() -> CuResult) -> CuResult {
        match (why, self.config.on_error) {
            (NoDevice::Unusable, OnError::Closed) => CuResult::OUT_OF_MEMORY,
            _ => pass_through(),
        }
    }

    // ----- admission ---------------------------------------------------------------------------

    fn deadline(&self) -> Option<Instant> {
        match self.config.policy {
            Policy::Deny => None,
            Policy::Wait => {
                let now = Instant::now();
                let wait = self
                    .config
                    .wait_timeout
                    .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));
                Some(
                    now.checked_add(wait)
                        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
                )
            }
        }
    }

    fn announce_wait(&self, what: &str, report: &WaitReport) {
        let holders: Vec<String> = report
            .holders
            .iter()
            .map(|(pid, command, bytes)| format!("pid {pid} ({command}) {}", format_size(*bytes)))
            .collect();
        let text = format!(
            "waiting for {} on {} ({what}): {} available; held by {}",
            format_size(report.requested),
            CuUuid(report.device_uuid),
            format_size(report.available),
            if holders.is_empty() {
                "nobody (queued behind earlier requests)".into()
            } else {
                holders.join(", ")
            }
        );
        if !self.wait_announced.swap(true, Ordering::AcqRel) {
            log::warn(&text)
        } else {
            log::debug(&text)
        }
    }

    fn request<'a>(
        &self,
        deadline: Option<Instant>,
        on_wait: &'a dyn Fn(&WaitReport),
    ) -> Request<'a> {
        Request {
            limit: self.config.limit,
            wait_until: deadline,
            on_wait: Some(on_wait),
        }
    }

    /// Sets the `VRAMGUARD_EXPECT` claim at the first charge on a device (waiting under `wait`).
    /// The claim is the expected allocations plus one context (`VRAMGUARD_CONTEXT_SIZE`), which
    /// the guard charges on its own: users state what their program loads.
    fn ensure_claim(&self, device: &Device) -> Result<(), CuResult> {
        let Some(expect) = self.config.expect else {
            return Ok(());
        };
        let expect = expect.saturating_add(self.config.context_size);
        if self.claimed.lock().contains(&device.ordinal) {
            return Ok(());
        }
        let announce = |report: &WaitReport| self.announce_wait("VRAMGUARD_EXPECT", report);
        match self.ledger.set_claim(
            self.slot,
            device.id,
            expect,
            &self.request(self.deadline(), &announce),
        ) {
            Ok(()) => {
                log::info(&format!(
                    "claimed {} on {} (VRAMGUARD_EXPECT)",
                    format_size(expect),
                    device.uuid
                ));
            }
            Err(Refusal::Ledger(e)) if self.config.on_error == OnError::Open => {
                log::error(&format!("cannot set the VRAMGUARD_EXPECT claim: {e}"));
            }
            Err(refusal) => {
                log::warn(&format!(
                    "cannot reserve VRAMGUARD_EXPECT={} on {}: {refusal}",
                    format_size(expect),
                    device.uuid
                ));
                return Err(CuResult::OUT_OF_MEMORY);
            }
        }
        self.claimed.lock().push(device.ordinal);
        Ok(())
    }

    /// Memory the driver says is free for a request on `device`, less the reserve and less what
    /// other processes were admitted but have not taken yet. `None` when the driver cannot tell
    /// (no current context on that device).
    fn driver_room(&self, device: &Device) -> Option<u64> {
        if current_ordinal()? != device.ordinal {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: both are live usizes the driver writes.
        if !unsafe { real::cuMemGetInfo_v2(&mut free, &mut total) }.is_success() {
            return None;
        }
        let reserve = self.config.reserve.of(device.capacity);
        Some(
            (free as u64)
                .saturating_sub(reserve)
                .saturating_sub(self.ledger.unbacked_by_others(self.slot, device.id)),
        )
    }

    /// Admits `bytes` on `device` for `what`: a reservation to commit or roll back, `None` when
    /// the ledger cannot decide and `ON_ERROR=open` lets the call through unaccounted, or the
    /// code to return (`CUDA_ERROR_OUT_OF_MEMORY`).
    pub fn admit(
        &self,
        device: &Device,
        bytes: u64,
        what: &str,
    ) -> Result<Option<Reservation>, CuResult> {
        if bytes == 0 {
            return Ok(None);
        }
        self.ensure_claim(device)?;
        let deadline = self.deadline();
        let announce = |report: &WaitReport| self.announce_wait(what, report);
        let mut driver_wait_announced = false;
        loop {
            let reservation = match self.ledger.reserve(
                self.slot,
                device.id,
                bytes,
                &self.request(deadline, &announce),
            ) {
                Ok(reservation) => reservation,
                Err(Refusal::Ledger(e)) => {
                    log::error(&format!("the ledger cannot decide {what}: {e}"));
                    return match self.config.on_error {
                        OnError::Open => Ok(None),
                        OnError::Closed => Err(CuResult::OUT_OF_MEMORY),
                    };
                }
                Err(refusal) => {
                    log::warn(&format!(
                        "refused {what} of {} on {}: {refusal}",
                        format_size(bytes),
                        device.uuid
                    ));
                    return Err(CuResult::OUT_OF_MEMORY);
                }
            };
            let Some(room) = self.driver_room(device) else {
                return Ok(Some(reservation));
            };
            if bytes <= room {
                return Ok(Some(reservation));
            }
            self.ledger.rollback(reservation);
            let now = Instant::now();
            match deadline {
                Some(deadline) if now < deadline => {
                    if !driver_wait_announced {
                        driver_wait_announced = true;
                        log::warn(&format!(
                            "waiting for {} on {} ({what}): the driver reports only {} free beyond the reserve and memory admitted to others (programs not using the guard hold the rest)",
                            format_size(bytes),
                            device.uuid,
                            format_size(room)
                        ));
                    }
                    std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
                }
                _ => {
                    log::warn(&format!(
                        "refused {what} of {} on {}: the driver reports only {} free beyond the reserve and memory admitted to others",
                        format_size(bytes),
                        device.uuid,
                        format_size(room)
                    ));
                    return Err(CuResult::OUT_OF_MEMORY);
                }
            }
        }
    }

    /// The driver call succeeded: the reservation becomes held. Returns the bytes charged.
    pub fn commit(&self, reservation: Option<Reservation>) -> u64 {
        reservation.map_or(0, |r| {
            let bytes = r.bytes();
            self.ledger.commit(r);
            bytes
        })
    }

    /// The driver call failed: the reservation is returned.
    pub fn rollback(&self, reservation: Option<Reservation>) {
        if let Some(r) = reservation {
            self.ledger.rollback(r);
        }
    }

    /// Commits `reservation` and adjusts the charge to `actual` bytes (pitched allocations learn
    /// their size from the driver). Returns the bytes charged, or `None` when more was taken than
    /// admitted and the difference does not fit (the caller undoes the allocation).
    pub fn commit_actual(
        &self,
        device: &Device,
        reservation: Option<Reservation>,
        actual: u64,
    ) -> Option<u64> {
        let Some(reservation) = reservation else {
            return Some(0);
        };
        let admitted = self.commit(Some(reservation));
        if actual <= admitted {
            self.ledger.release(self.slot, device.id, admitted - actual);
            return Some(actual);
        }
        let no_wait = Request {
            limit: self.config.limit,
            wait_until: None,
            on_wait: None,
        };
        match self
            .ledger
            .reserve(self.slot, device.id, actual - admitted, &no_wait)
        {
            Ok(extra) => {
                self.ledger.commit(extra);
                Some(actual)
            }
            Err(_) => {
                self.ledger.release(self.slot, device.id, admitted);
                None
            }
        }
    }

    /// Returns held bytes to the ledger.
    pub fn release(&self, charge: Option<Charge>) {
        if let Some(charge) = charge.filter(|c| c.bytes > 0) {
            self.ledger.release(self.slot, charge.device, charge.bytes);
        }
    }

    /// `cuMemGetInfo` as this process may use the device: (free, total).
    pub fn memory_info(&self, device: &Device, driver_free: u64) -> (u64, u64) {
        let total = self
            .config
            .limit
            .map_or(device.budget, |limit| limit.min(device.budget));
        let reserve = self.config.reserve.of(device.capacity);
        let driver_room = driver_free
            .saturating_sub(reserve)
            .saturating_sub(self.ledger.unbacked_by_others(self.slot, device.id));
        let free = self
            .ledger
            .available(self.slot, device.id, self.config.limit)
            .min(driver_room)
            .min(driver_free)
            .min(total);
        (free, total)
    }

    /// `cuDeviceTotalMem` as this process may use the device.
    pub fn total_memory(&self, device: &Device) -> u64 {
        self.config
            .limit
            .map_or(device.budget, |limit| limit.min(device.budget))
    }

    /// The context size charged for each context.
    pub fn context_size(&self) -> u64 {
        self.config.context_size
    }
}

/// The ordinal of the current context's device.
pub fn current_ordinal() -> Option<CuDevice> {
    type GetDevice = unsafe extern "C" fn(*mut CuDevice) -> CuResult;
    let address = aux::CU_CTX_GET_DEVICE.resolve()?;
    // SAFETY: cuCtxGetDevice has this signature.
    let get: GetDevice = unsafe { std::mem::transmute::<*mut c_void, GetDevice>(address) };
    let mut ordinal: CuDevice = -1;
    // SAFETY: `ordinal` is a live int the driver writes.
    unsafe { get(&mut ordinal) }.is_success().then_some(ordinal)
}

/// The current context's handle (0 if none or unknown).
pub fn current_context() -> usize {
    type GetCurrent = unsafe extern "C" fn(*mut *mut c_void) -> CuResult;
    let Some(address) = aux::CU_CTX_GET_CURRENT.resolve() else {
        return 0;
    };
    // SAFETY: cuCtxGetCurrent has this signature.
    let get: GetCurrent = unsafe { std::mem::transmute::<*mut c_void, GetCurrent>(address) };
    let mut context: *mut c_void = std::ptr::null_mut();
    // SAFETY: `context` is a live pointer-sized slot the driver writes.
    if unsafe { get(&mut context) }.is_success() {
        context as usize
    } else {
        0
    }
}

fn query_uuid(ordinal: CuDevice) -> Option<CuUuid> {
    type GetUuid = unsafe extern "C" fn(*mut CuUuid, CuDevice) -> CuResult;
    for symbol in [&aux::CU_DEVICE_GET_UUID_V2, &aux::CU_DEVICE_GET_UUID] {
        let Some(address) = symbol.resolve() else {
            continue;
        };
        // SAFETY: both cuDeviceGetUuid forms have this signature.
        let get: GetUuid = unsafe { std::mem::transmute::<*mut c_void, GetUuid>(address) };
        let mut uuid = CuUuid::default();
        // SAFETY: `uuid` is a live 16-byte CUuuid the driver writes.
        if unsafe { get(&mut uuid, ordinal) }.is_success() {
            return Some(uuid);
        }
    }
    None
}

fn query_name(ordinal: CuDevice) -> String {
    type GetName = unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult;
    let Some(address) = aux::CU_DEVICE_GET_NAME.resolve() else {
        return String::new();
    };
    // SAFETY: cuDeviceGetName has this signature.
    let get: GetName = unsafe { std::mem::transmute::<*mut c_void, GetName>(address) };
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is 256 live bytes; the driver writes at most `len` including the NUL.
    if !unsafe {
        get(
            buffer.as_mut_ptr().cast(),
            buffer.len() as c_int - 1,
            ordinal,
        )
    }
    .is_success()
    {
        return String::new();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The release threshold of a pool (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`), if the driver tells.
pub fn pool_release_threshold(pool: *mut c_void) -> Option<u64> {
    const RELEASE_THRESHOLD: c_int = 4;
    type GetAttribute = unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> CuResult;
    let address = aux::CU_MEM_POOL_GET_ATTRIBUTE.resolve()?;
    // SAFETY: cuMemPoolGetAttribute has this signature.
    let get: GetAttribute = unsafe { std::mem::transmute::<*mut c_void, GetAttribute>(address) };
    let mut threshold = 0u64;
    // SAFETY: the release threshold is a cuuint64_t, written into `threshold`.
    unsafe { get(pool, RELEASE_THRESHOLD, (&raw mut threshold).cast()) }
        .is_success()
        .then_some(threshold)
}
