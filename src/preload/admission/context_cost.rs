//! What a CUDA context really takes on the card, measured across its creation.
//!
//! A context costs device memory that no allocation call shows: well under 100 MiB on one card,
//! over 500 MiB on another, depending on the driver and lazy module loading. A fixed estimate is
//! wrong both ways (it refuses programs that would fit, or lets the card fill up), so the guard
//! reads the card's used memory just before and just after the driver creates the context, and
//! charges the difference, corrected for what the ledger saw others take and give back in
//! between. Creations on one device are serialised across processes by the ledger's
//! context-creation lock, so no other guarded context appears during a measurement.
//!
//! The figure comes from the first of these that can answer, the same source before and after:
//! 1. the management library's per-process figure (`nvmlDeviceGetComputeRunningProcesses`),
//!    trusted only in the host's pid namespace, where NVML's pids are ours;
//! 2. the management library's used memory of the whole card (`nvmlDeviceGetMemoryInfo`: works
//!    inside containers too);
//! 3. the driver's own free figure (`cuMemGetInfo_v2`), which a real driver answers only for
//!    the current context's device: so only when a context on that device is current before and
//!    after the creation.
//!
//! When none can answer the estimate stays charged (`VRAMGUARD_CONTEXT_SIZE`, or the last
//! figure measured on the device).

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use vramguard_core::cuda::CuDevice;
use vramguard_core::ledger::{DeviceId, Ledger, SlotId};
use vramguard_core::nvml::Nvml;

use crate::driver::{self, current};
use crate::log;
use crate::process::devices::Device;

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`): a process whose
/// `/proc/self/ns/pid` has it sees the host's pids, the ones NVML lists.
const HOST_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// Where a reading of the card's used memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// NVML's figure for this process.
    NvmlProcess,
    /// NVML's used memory of the whole card.
    NvmlDevice,
    /// The driver's `total - free` for the current context's device.
    Driver,
}

/// Whether a reading is taken before the creation or after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Before,
    After,
}

/// One reading: memory in use by the source's measure, and what the ledger recorded as held at
/// that moment (by everyone, and by this process).
#[derive(Clone, Copy, Debug)]
struct Reading {
    source: Source,
    used: u64,
    held_by_all: u64,
    held_by_us: u64,
}

/// The readings taken before a context is created, one per source that answered;
/// [`Probe::finish`] turns the first source that answers again into a figure.
pub struct Probe<'a> {
    ledger: &'a Ledger,
    slot: SlotId,
    device: &'a Device,
    before: Vec<Reading>,
}

/// Every source, in order of preference.
const SOURCES: [Source; 3] = [Source::NvmlProcess, Source::NvmlDevice, Source::Driver];

impl<'a> Probe<'a> {
    /// Reads the card before a context is created on `device` by member `slot`.
    pub fn start(ledger: &'a Ledger, slot: SlotId, device: &'a Device) -> Probe<'a> {
        let mut probe = Probe {
            ledger,
            slot,
            device,
            before: Vec::new(),
        };
        probe.before = SOURCES
            .into_iter()
            .filter(|source| *source != Source::Driver)
            .filter_map(|source| probe.read(source, When::Before))
            .collect();
        // The driver is asked only when the management library cannot answer: its figure needs
        // a current context on the device, and asking costs driver calls at every creation.
        if probe.before.is_empty() {
            probe
                .before
                .extend(probe.read(Source::Driver, When::Before));
        }
        probe
    }

    /// What the context created since [`Probe::start`] took on the card, or `None` when it
    /// could not be measured.
    pub fn finish(self) -> Option<u64> {
        let (before, after) = self
            .before
            .iter()
            .find_map(|before| Some((before, self.read(before.source, When::After)?)))?;
        let cost = cost_between(before, &after).min(self.device.capacity);
        log::debug_with(|| {
            format!(
                "a context on {} took {} ({:?}: {} -> {})",
                self.device.uuid,
                vramguard_core::units::format_size(cost),
                before.source,
                before.used,
                after.used
            )
        });
        Some(cost)
    }

    /// A reading of `source`, taken while the ledger stands still: no other process's
    /// allocation between its admission and its commit (the card may or may not hold it yet, so
    /// a reading then could count it or not), and nothing committed or released while the card
    /// is read. Retried a little while it does not; the last attempt is taken as it is.
    fn read(&self, source: Source, when: When) -> Option<Reading> {
        for attempt in 1..=SETTLE_ATTEMPTS {
            let ledger_before = self.ledger_view();
            let used = self.read_card(source, when)?;
            let ledger_after = self.ledger_view();
            let settled = ledger_before.still(&ledger_after, source);
            if settled || attempt == SETTLE_ATTEMPTS {
                return Some(Reading {
                    source,
                    used,
                    held_by_all: ledger_after.held_by_all,
                    held_by_us: ledger_after.held_by_us,
                });
            }
            std::thread::sleep(SETTLE_PAUSE);
        }
        None
    }

    /// What the ledger says of the device now.
    fn ledger_view(&self) -> LedgerView {
        let in_flight = self.ledger.in_flight_on_device(self.device.id);
        LedgerView {
            held_by_all: self.ledger.held_on_device(self.device.id),
            held_by_us: self.ledger.held_by(self.slot, self.device.id),
            others_in_flight: in_flight
                .saturating_sub(self.ledger.in_flight(self.slot, self.device.id)),
        }
    }

    /// The card's used memory by `source` (this process's, or the whole card's).
    fn read_card(&self, source: Source, when: When) -> Option<u64> {
        Some(match source {
            Source::NvmlProcess => {
                if !in_host_pid_namespace() {
                    return None;
                }
                let uuid = self.device.uuid.0;
                let listed = ask_nvml(move |nvml| {
                    let device = nvml.device_by_uuid(&uuid).ok()?;
                    nvml.process_memory(device, std::process::id()).ok()
                })?;
                match (listed, when) {
                    (Some(used), _) => used,
                    // Before its first context the process is not listed: it holds nothing yet.
                    (None, When::Before) => 0,
                    // With a context it must be listed, or NVML does not list this process at
                    // all (another pid namespace after all): the card's figure will do.
                    (None, When::After) => return None,
                }
            }
            Source::NvmlDevice => {
                let uuid = self.device.uuid.0;
                ask_nvml(move |nvml| {
                    let device = nvml.device_by_uuid(&uuid).ok()?;
                    Some(nvml.memory(device).ok()?.used)
                })?
            }
            Source::Driver => driver_used(self.device.ordinal)?,
        })
    }
}

/// What the ledger holds on the device around a reading of the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LedgerView {
    held_by_all: u64,
    held_by_us: u64,
    /// Other processes' allocations admitted and not yet answered by the driver.
    others_in_flight: u64,
}

impl LedgerView {
    /// Whether nothing the reading of `source` covers moved between this view and `later`:
    /// this process's holdings for its own figure, every member's (and no allocation in flight)
    /// for the whole card's.
    fn still(&self, later: &LedgerView, source: Source) -> bool {
        match source {
            Source::NvmlProcess => self.held_by_us == later.held_by_us,
            Source::NvmlDevice | Source::Driver => self == later && later.others_in_flight == 0,
        }
    }
}

/// How often a reading is tried for a still ledger, and the pause between tries: a driver
/// allocation takes microseconds to milliseconds, so a tenth of a second at most in all.
const SETTLE_ATTEMPTS: u32 = 50;
const SETTLE_PAUSE: Duration = Duration::from_millis(2);

/// The context's figure between two readings of the same source: the growth of the measure,
/// less the growth of what the ledger saw held in the meantime by the allocations the measure
/// also covers (this process's other threads for the per-process figure, every guarded
/// process's otherwise). Never negative.
fn cost_between(before: &Reading, after: &Reading) -> u64 {
    let grown = after.used.saturating_sub(before.used);
    let (held_before, held_after) = match before.source {
        Source::NvmlProcess => (before.held_by_us, after.held_by_us),
        Source::NvmlDevice | Source::Driver => (before.held_by_all, after.held_by_all),
    };
    let others = held_after.saturating_sub(held_before);
    let given_back = held_before.saturating_sub(held_after);
    grown.saturating_add(given_back).saturating_sub(others)
}

/// Whether this process sees the host's pids.
fn in_host_pid_namespace() -> bool {
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == HOST_PID_NAMESPACE_INODE)
}

/// How long the management library may take to answer one question (opening it included)
/// before the guard stops asking it: on a wedged GPU NVML can hang, and the program's context
/// creation must go on.
const NVML_PATIENCE: Duration = Duration::from_secs(5);

/// Set once the management library failed to answer in time: it is not asked again.
static NVML_GAVE_UP: AtomicBool = AtomicBool::new(false);

/// Asks the management library `question` in a thread of its own, waiting at most
/// [`NVML_PATIENCE`]; `None` when it cannot be loaded, does not know, or did not answer in time
/// (said once; the thread is left behind and goes with the process).
fn ask_nvml<T: Send + 'static>(
    question: impl FnOnce(&'static Nvml) -> Option<T> + Send + 'static,
) -> Option<T> {
    if NVML_GAVE_UP.load(Ordering::Acquire) {
        return None;
    }
    let (answer, answered) = mpsc::channel();
    let asked = std::thread::Builder::new()
        .name("vramguard-nvml".into())
        .spawn(move || {
            let _ = answer.send(nvml().and_then(question));
        });
    if asked.is_err() {
        return None;
    }
    match answered.recv_timeout(NVML_PATIENCE) {
        Ok(found) => found,
        Err(_) => {
            if !NVML_GAVE_UP.swap(true, Ordering::AcqRel) {
                log::warn(&format!(
                    "the management library did not answer within {NVML_PATIENCE:?}: contexts are measured without it"
                ));
            }
            None
        }
    }
}

/// The management library, opened at the first question (`VRAMGUARD_NVML`); `None` (said once,
/// at debug level: most machines without it measure through the driver) when it cannot be
/// loaded. Only [`ask_nvml`]'s thread calls this.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        let path = &crate::config::config().nvml;
        Nvml::open(path)
            .map_err(|e| {
                log::debug(&format!(
                    "contexts are measured without the management library: {e}"
                ))
            })
            .ok()
    })
    .as_ref()
}

/// The driver's used memory (`total - free`) on `ordinal`, if the current context is there.
fn driver_used(ordinal: CuDevice) -> Option<u64> {
    if current::current_ordinal() != Some(ordinal) {
        return None;
    }
    driver::memory().map(|(free, total)| total.saturating_sub(free))
}

/// Wall-clock Unix milliseconds, when a measurement is recorded in the ledger.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The estimate charged for a context on `dev` before it exists: the last figure measured on
/// the device, else `configured` (`VRAMGUARD_CONTEXT_SIZE`).
pub fn estimate(ledger: &Ledger, dev: DeviceId, configured: u64) -> u64 {
    ledger.context_cost(dev).unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(source: Source, used: u64, held_by_all: u64, held_by_us: u64) -> Reading {
        Reading {
            source,
            used,
            held_by_all,
            held_by_us,
        }
    }

    #[test]
    fn the_cost_is_the_growth_less_what_the_ledger_saw_taken_meanwhile() {
        let card = |used, all| reading(Source::NvmlDevice, used, all, 0);
        // Nothing else happened: the growth.
        assert_eq!(cost_between(&card(1000, 0), &card(1700, 0)), 700);
        // Another process took 200 meanwhile (recorded as held): not the context's.
        assert_eq!(cost_between(&card(1000, 500), &card(1900, 700)), 700);
        // Another process gave back 300 meanwhile: the card shrank by that much, so the context
        // took more than the growth shows.
        assert_eq!(cost_between(&card(1000, 500), &card(1400, 200)), 700);
        // A context that costs nothing, with others' memory freed behind the ledger's back.
        assert_eq!(cost_between(&card(1000, 0), &card(900, 0)), 0);
        // The per-process figure is corrected by this process's own allocations only.
        let ours = |used, all, us| reading(Source::NvmlProcess, used, all, us);
        assert_eq!(cost_between(&ours(0, 100, 0), &ours(764, 9000, 64)), 700);
    }
}
