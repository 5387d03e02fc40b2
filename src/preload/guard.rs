//! Accounting: admission against the ledger and the driver, per-process tables, device identity.
//!
//! Every allocation follows one protocol: reserve in the ledger *before* the driver call (the
//! ledger refuses or queues what does not fit under the budget), check the driver's own free
//! figure (memory held by programs the guard does not see), call the driver, then commit on
//! success or roll back on failure. Devices are identified by UUID, so processes that see the
//! cards in different orders (`CUDA_VISIBLE_DEVICES`) share one record per physical card.
//!
//! The driver's free-memory figure is asked only near the edge of the card or when the last
//! figure is stale ([`crate::headroom`]). Devices are looked up without a lock (one slot per
//! ordinal); the in-process mutexes (parking_lot) are never held across a driver call or a ledger
//! wait.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use vramguard_core::cuda::{CuDevice, CuResult, CuUuid};
use vramguard_core::ledger::{
    ContextCreation, DeviceId, Ledger, MAX_DEVICES, Refusal, Request, Reservation, SlotId,
    WaitReport,
};
use vramguard_core::settings::{Config, OnError, Policy};
use vramguard_core::units::{format_duration, format_size};

use crate::context_cost;
use crate::current;
use crate::functions::real;
use crate::headroom::{self, Watch};
use crate::log;
use crate::symbols::{self, aux};
use crate::tables::{Charge, Tables};

/// How long a context creation waits for another process's creation on the same device before
/// it goes ahead unserialised (its measurement may then include the other context).
const CONTEXT_CREATION_PATIENCE: Duration = Duration::from_secs(30);

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
    /// This process's `VRAMGUARD_RESERVE` on this card, in bytes.
    pub reserve: u64,
    /// Up to where requests are admitted on the last driver figure ([`headroom::edge`]).
    pub edge: u64,
}

/// Why the current device could not be determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDevice {
    /// No current context: the driver will answer the call with its own error.
    NoContext,
    /// The device could not be registered in the ledger: `VRAMGUARD_ON_ERROR` decides.
    Unusable,
}

/// Where the device of an allocation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// The current context, which is on the device (its handle; 0 if unknown).
    Current(usize),
    /// A device named by the call (`cuMemCreate`, a context or pool creation): the current
    /// context may be elsewhere, or missing.
    Named,
}

/// What this process knows of one device ordinal.
#[derive(Default)]
struct DeviceSlot {
    /// Set once, at the first use of the ordinal.
    device: OnceLock<Device>,
    /// The last driver observation of memory the ledger does not account for.
    watch: Watch,
    /// The `VRAMGUARD_EXPECT` claim is in place (or given up on).
    claimed: AtomicBool,
}

/// A process attached to the ledger.
pub struct Process {
    pid: i32,
    config: &'static Config,
    ledger: Ledger,
    slot: SlotId,
    left: AtomicBool,
    tables: Mutex<Tables>,
    /// One slot per device ordinal below [`MAX_DEVICES`] (a real device beyond is unusable:
    /// the ledger holds no more devices than that).
    devices: Box<[DeviceSlot]>,
    wait_announced: AtomicBool,
}

/// A refusal of the ledger, said in sizes people read.
pub fn describe(refusal: &Refusal, uuid: CuUuid) -> String {
    match refusal {
        Refusal::NeverFits {
            requested,
            budget,
            limit: Some(limit),
        } => format!(
            "{} can never fit (budget {} on {uuid}, per-process limit {})",
            format_size(*requested),
            format_size(*budget),
            format_size(*limit)
        ),
        Refusal::NeverFits {
            requested,
            budget,
            limit: None,
        } => format!(
            "{} can never fit (budget {} on {uuid})",
            format_size(*requested),
            format_size(*budget)
        ),
        Refusal::NoRoom {
            requested,
            available,
        } => format!(
            "{} do not fit now ({} available on {uuid})",
            format_size(*requested),
            format_size(*available)
        ),
        Refusal::TimedOut { requested, waited } => format!(
            "waited {} for {} on {uuid} without room appearing",
            format_duration(*waited),
            format_size(*requested)
        ),
        Refusal::Deadlock { requested } => format!(
            "{} refused on {uuid}: every process holding memory on the device is waiting",
            format_size(*requested)
        ),
        other => other.to_string(),
    }
}

/// Bytes admitted by the ledger for one driver call: commit them when the call succeeds, roll
/// them back when it fails.
#[must_use = "an admission must be committed or rolled back"]
#[derive(Debug)]
pub struct Admitted {
    reservation: Option<Reservation>,
    ordinal: CuDevice,
}

impl Admitted {
    /// Nothing admitted (nothing asked, or the call passes through unaccounted).
    pub const NOTHING: Admitted = Admitted {
        reservation: None,
        ordinal: -1,
    };

    fn of(reservation: Reservation, device: &Device) -> Admitted {
        Admitted {
            reservation: Some(reservation),
            ordinal: device.ordinal,
        }
    }
}

/// What the driver's free-memory check found for a request.
enum DriverCheck {
    /// It fits (or the cached figure shows it is far from the edge).
    Fits,
    /// It does not fit: the room the driver leaves.
    Short(u64),
    /// The driver cannot tell (no current context on that device).
    Unknown,
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

    // ----- devices -----------------------------------------------------------------------------

    #[inline]
    fn slot_of(&self, ordinal: CuDevice) -> Option<&DeviceSlot> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|index| self.devices.get(index))
    }

    /// The device of `ordinal`, registered in the ledger on first use.
    #[inline]
    pub fn device(&self, ordinal: CuDevice) -> Result<&Device, NoDevice> {
        let Some(slot) = self.slot_of(ordinal) else {
            return Err(Self::without_slot(ordinal));
        };
        match slot.device.get() {
            Some(device) => Ok(device),
            None => self.first_use(ordinal, slot),
        }
    }

    /// [`Process::device`] for an ordinal not seen yet.
    #[cold]
    #[inline(never)]
    fn first_use<'a>(
        &self,
        ordinal: CuDevice,
        slot: &'a DeviceSlot,
    ) -> Result<&'a Device, NoDevice> {
        let device = self.register(ordinal)?;
        // A racing first use registered the same record: either copy will do.
        Ok(slot.device.get_or_init(|| device))
    }

    /// An ordinal without a slot: negative, or at or beyond [`MAX_DEVICES`]. One the driver does
    /// not know is the caller's mistake, which the driver answers (`CUDA_ERROR_INVALID_DEVICE`);
    /// a real device beyond the ledger's room is unusable (`VRAMGUARD_ON_ERROR` decides; said
    /// once).
    #[cold]
    #[inline(never)]
    fn without_slot(ordinal: CuDevice) -> NoDevice {
        static SAID: AtomicBool = AtomicBool::new(false);
        if ordinal < 0 || query_uuid(ordinal).is_none() {
            return NoDevice::NoContext;
        }
        if !SAID.swap(true, Ordering::Relaxed) {
            log::error(&format!(
                "device ordinal {ordinal} is beyond the {MAX_DEVICES} devices the ledger can track"
            ));
        }
        NoDevice::Unusable
    }

    /// Finds the card of `ordinal` and its ledger record (find-or-add by UUID).
    fn register(&self, ordinal: CuDevice) -> Result<Device, NoDevice> {
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
                crate::state::ledger_failed(&format!("cannot register {uuid} in the ledger"), &e);
                NoDevice::Unusable
            })?;
        let budget = self.ledger.budget(id);
        log::info(&format!(
            "device {ordinal} is {uuid} ({name}): {} of which {} may be used",
            format_size(capacity),
            format_size(budget)
        ));
        let reserve = self.config.reserve.of(capacity);
        Ok(Device {
            ordinal,
            id,
            uuid,
            capacity,
            budget,
            reserve,
            edge: headroom::edge(capacity, reserve),
        })
    }

    /// The device of the current context, and that context.
    #[inline]
    pub fn current_device(&self) -> Result<(&Device, Context), NoDevice> {
        let (context, ordinal) = current::context_and_device().ok_or(NoDevice::NoContext)?;
        Ok((self.device(ordinal)?, Context::Current(context)))
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
    /// The claim is the expected allocations plus one context (as last measured on the device,
    /// else `VRAMGUARD_CONTEXT_SIZE`), which the guard charges on its own: users state what
    /// their program loads.
    #[inline]
    fn ensure_claim(&self, device: &Device) -> Result<(), CuResult> {
        let Some(expect) = self.config.expect else {
            return Ok(());
        };
        let slot = self.slot_of(device.ordinal);
        if slot.is_some_and(|s| s.claimed.load(Ordering::Acquire)) {
            return Ok(());
        }
        self.claim(device, expect, slot)
    }

    /// [`Process::ensure_claim`] when the claim of `expect` bytes is not in place yet.
    #[cold]
    #[inline(never)]
    fn claim(
        &self,
        device: &Device,
        expect: u64,
        slot: Option<&DeviceSlot>,
    ) -> Result<(), CuResult> {
        let context = context_cost::estimate(&self.ledger, device.id, self.config.context_size);
        let expect = expect.saturating_add(context);
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
            Err(Refusal::Ledger(e)) => {
                crate::state::ledger_failed("cannot set the VRAMGUARD_EXPECT claim", &e);
                if self.config.on_error == OnError::Closed {
                    return Err(CuResult::OUT_OF_MEMORY);
                }
            }
            Err(refusal) => {
                log::warn(&format!(
                    "cannot reserve VRAMGUARD_EXPECT={}: {}",
                    format_size(expect),
                    describe(&refusal, device.uuid)
                ));
                return Err(CuResult::OUT_OF_MEMORY);
            }
        }
        if let Some(slot) = slot {
            slot.claimed.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// What the ledger has admitted on `device`, this request included: every process's held
    /// bytes, other processes' reservations in flight and unused claims, and this process's
    /// reservations in flight (the charged total less this process's unused claim, which this
    /// request may draw on without growing the total). `available_after` is the ledger's
    /// figure handed back with the reservation ([`Reservation::available_after`]), taken under
    /// the device lock at the grant, so no separate read of the totals is needed.
    fn admitted(device: &Device, available_after: u64) -> u64 {
        device.budget.saturating_sub(available_after)
    }

    /// Whether `bytes`, just reserved on `device` (the ledger's admitted total then `admitted`),
    /// also fit in what the driver says is free, less the reserve and less what other processes
    /// were admitted but have not taken yet. Asked only near the edge of the card or when the
    /// last figure is stale ([`Process::far_from_edge`], [`crate::headroom`]); the answer
    /// refreshes the figure.
    #[cold]
    #[inline(never)]
    fn ask_driver(
        &self,
        device: &Device,
        bytes: u64,
        admitted: u64,
        context: Context,
        now: u64,
    ) -> DriverCheck {
        let slot = self.slot_of(device.ordinal);
        // cuMemGetInfo answers for the current context's device.
        if context == Context::Named && current::current_ordinal() != Some(device.ordinal) {
            return DriverCheck::Unknown;
        }
        // Read before the driver: a guarded allocation racing with the query is then counted
        // twice rather than not at all.
        let unbacked = self.ledger.unbacked_by_others(self.slot, device.id);
        // This process's reservations in flight, this request included (the ledger's figure, or
        // at least this request when the ledger cannot tell).
        let own_in_flight = self.ledger.in_flight(self.slot, device.id).max(bytes);
        let Some((free, total)) = driver_memory() else {
            return DriverCheck::Unknown;
        };
        self.note_driver_memory(device, free, total);
        if let Some(slot) = slot {
            // What the ledger holds: its admitted total less what is admitted but not taken.
            let holds = admitted
                .saturating_sub(unbacked)
                .saturating_sub(own_in_flight);
            let unaccounted = headroom::unaccounted(device.capacity, free, holds);
            slot.watch.observe(unaccounted, now);
        }
        let room = free.saturating_sub(device.reserve).saturating_sub(unbacked);
        if bytes <= room {
            DriverCheck::Fits
        } else {
            DriverCheck::Short(room)
        }
    }

    /// Admits `bytes` on `device` for `what`: an admission to commit or roll back (empty when
    /// the ledger cannot decide and `ON_ERROR=open` lets the call through unaccounted), or the
    /// code to return (`CUDA_ERROR_OUT_OF_MEMORY`).
    pub fn admit(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
    ) -> Result<Admitted, CuResult> {
        if bytes == 0 {
            return Ok(Admitted::NOTHING);
        }
        self.ensure_claim(device)?;
        let deadline = self.deadline();
        let announce = |report: &WaitReport| self.announce_wait(what, report);
        let request = self.request(deadline, &announce);
        match self.ledger.reserve(self.slot, device.id, bytes, &request) {
            Ok(reservation) if self.far_from_edge(device, reservation.available_after()) => {
                Ok(Admitted::of(reservation, device))
            }
            Ok(reservation) => {
                self.admit_near_edge(device, context, bytes, what, reservation, &request)
            }
            Err(refusal) => self.refused(device, what, &refusal),
        }
    }

    /// Whether the driver's last figure is fresh and leaves the ledger's admitted total
    /// (`available_after` the grant) far from the edge of the card: then the driver is not asked.
    #[inline]
    fn far_from_edge(&self, device: &Device, available_after: u64) -> bool {
        let Some(slot) = self.slot_of(device.ordinal) else {
            return false;
        };
        slot.watch
            .fresh(headroom::now())
            .is_some_and(|unaccounted| {
                headroom::far_from_edge(
                    Self::admitted(device, available_after),
                    unaccounted,
                    device.edge,
                )
            })
    }

    /// [`Process::admit`] once the ledger granted `first` but the driver's figure is stale or
    /// near the edge: the driver decides; while it is short, the reservation is returned and
    /// asked for again after a pause as long as `request`'s deadline allows.
    #[cold]
    #[inline(never)]
    fn admit_near_edge(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
        first: Reservation,
        request: &Request,
    ) -> Result<Admitted, CuResult> {
        let mut reservation = first;
        let mut driver_wait_announced = false;
        loop {
            let admitted_total = Self::admitted(device, reservation.available_after());
            let admitted = Admitted::of(reservation, device);
            let now = headroom::now();
            let room = match self.ask_driver(device, bytes, admitted_total, context, now) {
                DriverCheck::Fits | DriverCheck::Unknown => return Ok(admitted),
                DriverCheck::Short(room) => room,
            };
            self.rollback(admitted);
            Self::driver_short(
                device,
                bytes,
                room,
                what,
                request.wait_until,
                &mut driver_wait_announced,
            )?;
            reservation = match self.ledger.reserve(self.slot, device.id, bytes, request) {
                Ok(reservation) if self.far_from_edge(device, reservation.available_after()) => {
                    return Ok(Admitted::of(reservation, device));
                }
                Ok(reservation) => reservation,
                Err(refusal) => return self.refused(device, what, &refusal),
            };
        }
    }

    /// The driver leaves only `room` for `bytes` just rolled back: waits a little before the next
    /// attempt while `deadline` allows (saying so once), else refuses.
    #[cold]
    #[inline(never)]
    fn driver_short(
        device: &Device,
        bytes: u64,
        room: u64,
        what: &str,
        deadline: Option<Instant>,
        announced: &mut bool,
    ) -> Result<(), CuResult> {
        let now = Instant::now();
        let driver_short = format!(
            "the driver reports only {} free beyond the reserve and memory admitted to others",
            format_size(room)
        );
        match deadline {
            Some(deadline) if now < deadline => {
                if !*announced {
                    *announced = true;
                    log::warn(&format!(
                        "waiting for {} on {} ({what}): {driver_short} (programs not using the guard hold the rest)",
                        format_size(bytes),
                        device.uuid,
                    ));
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
                Ok(())
            }
            _ => {
                log::warn(&format!(
                    "refused {what} of {} on {}: {driver_short}",
                    format_size(bytes),
                    device.uuid,
                ));
                Err(CuResult::OUT_OF_MEMORY)
            }
        }
    }

    /// Admits `bytes` on `device`, then runs the driver call `call`: `Ok` with the admission to
    /// commit and the driver's success, or `Err` with the code to return (refused, or the driver
    /// failed and the admission was rolled back).
    #[inline]
    pub fn call_admitted(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
        call: impl FnOnce() -> CuResult,
    ) -> Result<(Admitted, CuResult), CuResult> {
        let admitted = self.admit(device, context, bytes, what)?;
        let result = call();
        if result.is_success() {
            Ok((admitted, result))
        } else {
            self.rollback_after(admitted, result);
            Err(result)
        }
    }

    /// The answer to a request the ledger did not grant.
    #[cold]
    #[inline(never)]
    fn refused(
        &self,
        device: &Device,
        what: &str,
        refusal: &Refusal,
    ) -> Result<Admitted, CuResult> {
        if let Refusal::Ledger(e) = refusal {
            crate::state::ledger_failed(&format!("the ledger cannot decide {what}"), e);
            return match self.config.on_error {
                OnError::Open => Ok(Admitted::NOTHING),
                OnError::Closed => Err(CuResult::OUT_OF_MEMORY),
            };
        }
        log::warn(&format!(
            "refused {what}: {}",
            describe(refusal, device.uuid)
        ));
        Err(CuResult::OUT_OF_MEMORY)
    }

    /// The driver call succeeded: the reservation becomes held. Returns the bytes charged.
    #[inline]
    pub fn commit(&self, admitted: Admitted) -> u64 {
        admitted.reservation.map_or(0, |r| {
            let bytes = r.bytes();
            self.ledger.commit(r);
            bytes
        })
    }

    /// The driver call failed: the reservation is returned. A refusal by the driver of what the
    /// guard admitted means its last figure was wrong: the next request asks it again.
    #[cold]
    #[inline(never)]
    fn rollback_after(&self, admitted: Admitted, result: CuResult) {
        if result == CuResult::OUT_OF_MEMORY
            && let Some(slot) = self.slot_of(admitted.ordinal)
        {
            slot.watch.invalidate();
        }
        self.rollback(admitted);
    }

    /// The reservation is returned.
    pub fn rollback(&self, admitted: Admitted) {
        if let Some(r) = admitted.reservation {
            self.ledger.rollback(r);
        }
    }

    /// Commits `admitted` and adjusts the charge to `actual` bytes (pitched allocations learn
    /// their size from the driver). Returns the bytes charged, or `None` when more was taken than
    /// admitted and the difference does not fit (the caller undoes the allocation).
    pub fn commit_actual(&self, device: &Device, admitted: Admitted, actual: u64) -> Option<u64> {
        if admitted.reservation.is_none() {
            return Some(0);
        }
        let admitted = self.commit(admitted);
        if actual <= admitted {
            self.ledger.release(self.slot, device.id, admitted - actual);
            return Some(actual);
        }
        if self.charge_now(device, actual - admitted) {
            Some(actual)
        } else {
            self.ledger.release(self.slot, device.id, admitted);
            None
        }
    }

    /// Charges `bytes` more on `device` at once if they fit (never waits).
    fn charge_now(&self, device: &Device, bytes: u64) -> bool {
        let no_wait = Request {
            limit: self.config.limit,
            wait_until: None,
            on_wait: None,
        };
        match self.ledger.reserve(self.slot, device.id, bytes, &no_wait) {
            Ok(extra) => {
                self.ledger.commit(extra);
                true
            }
            Err(_) => false,
        }
    }

    /// Creates a context on `device` with `call`, charging what it really takes: one creation
    /// at a time on the device (the ledger's context-creation lock), the estimate
    /// ([`context_cost::estimate`]) admitted up front as for any allocation (under `wait`, an
    /// estimate that does not fit is waited for with the lock let go), the card read
    /// before and after the call ([`context_cost::Probe`]), and the charge set to the measured
    /// figure (the estimate when it cannot be measured). When the context took more than
    /// fits, `undo` destroys it and the caller gets `CUDA_ERROR_OUT_OF_MEMORY`. On success:
    /// the bytes charged and the driver's result.
    pub fn create_context(
        &self,
        device: &Device,
        what: &str,
        call: impl FnOnce() -> CuResult,
        undo: impl FnOnce(),
    ) -> Result<(u64, CuResult), CuResult> {
        // The up-front claim may wait its turn: never while holding the creation lock, which
        // would keep every other process's context (and its own wait in the ledger) back.
        self.ensure_claim(device)?;
        let mut one_at_a_time = self.lock_context_creation(device, what);
        let estimate = context_cost::estimate(&self.ledger, device.id, self.config.context_size);
        // Under `wait`, an estimate that does not fit now is waited for in the ledger's line
        // (seen by `vramguard status`, first come first served), the lock let go meanwhile.
        let waits = self.config.policy == Policy::Wait
            && self
                .ledger
                .available(self.slot, device.id, self.config.limit)
                < estimate;
        if waits {
            one_at_a_time = None;
        }
        let admitted = self.admit(device, Context::Named, estimate, what)?;
        if waits {
            one_at_a_time = self.lock_context_creation(device, what);
        }
        let probe = context_cost::Probe::start(&self.ledger, self.slot, device);
        let result = call();
        if !result.is_success() {
            self.rollback_after(admitted, result);
            return Err(result);
        }
        let measured = probe.finish();
        drop(one_at_a_time);
        let actual = measured.unwrap_or(estimate);
        let charged = if estimate == 0 {
            // Nothing was admitted up front (the device's contexts measured free so far).
            (actual == 0 || self.charge_now(device, actual)).then_some(actual)
        } else {
            self.commit_actual(device, admitted, actual)
        };
        if let Some(cost) = measured {
            self.ledger
                .note_context_cost(device.id, cost, context_cost::unix_ms());
        }
        match charged {
            Some(bytes) => Ok((bytes, result)),
            None => {
                undo();
                log::warn(&format!(
                    "refused {what}: it took {} on {}, more than this process may still hold there ({} available); it was destroyed again",
                    format_size(actual),
                    device.uuid,
                    format_size(
                        self.ledger
                            .available(self.slot, device.id, self.config.limit)
                    )
                ));
                Err(CuResult::OUT_OF_MEMORY)
            }
        }
    }

    /// `device`'s context-creation lock (`None`, said once, when it stayed busy: the creation
    /// then goes ahead, and its measurement may include another process's context).
    fn lock_context_creation(&self, device: &Device, what: &str) -> Option<ContextCreation> {
        self.ledger
            .lock_context_creation(device.id, Instant::now() + CONTEXT_CREATION_PATIENCE)
            .map_err(|e| log::warn(&format!("{what} is created unserialised: {e}")))
            .ok()
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
        let total = self
            .config
            .limit
            .map_or(device.budget, |limit| limit.min(device.budget));
        let reserve = device.reserve;
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
}

/// The driver's (free, total) memory on the current context's device (`cuMemGetInfo_v2`).
fn driver_memory() -> Option<(u64, u64)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both are live usizes the driver writes.
    unsafe { real::cuMemGetInfo_v2(&mut free, &mut total) }
        .is_success()
        .then_some((free as u64, total as u64))
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
