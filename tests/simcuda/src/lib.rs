//! The simulated CUDA driver: a stand-in for `libcuda.so.1` on machines without a GPU.
//!
//! Physical memory is shared by every process on the machine through a card-state file
//! ([`state`], from the `simcard` crate, which the simulated management library shares); each
//! process keeps the tables of its own allocations, contexts, pools and virtual-memory mappings
//! ([`driver`]); the exported entry points ([`exports`]) have the real
//! driver's names, signatures and `cuGetProcAddress` versioning ([`procaddr`]). The `simcuda`
//! tool creates, resets and reports the card ([`report`]). Environment: see [`config`].
#![deny(unsafe_code)]

pub mod driver;
pub mod exports;
pub mod procaddr;
pub mod report;
pub mod result;

pub use simcard::{config, state};

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::driver::{CuOutcome, Driver};
use crate::exports::Entry;
use crate::result::CuResult;

/// This process's driver, attached on the first call (again in a forked child), with the fork
/// generation it was attached in.
static DRIVER: Mutex<Option<Attached>> = Mutex::new(None);

/// A driver and the [`FORK_GENERATION`] of the process it was attached by.
struct Attached {
    generation: u64,
    driver: Driver,
}

/// Bumped in every forked child by the `pthread_atfork` child handler: a driver attached in an
/// earlier generation is the parent's. Cheaper than asking the kernel for the pid on every call.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The `pthread_atfork` child handler: async-signal-safe (one atomic add).
extern "C" fn on_fork_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Registers [`on_fork_child`] once per process (a forked child inherits the registration).
#[allow(unsafe_code)]
fn watch_forks() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: the handler is a plain function that stays valid as long as this library is
        // loaded (glibc unregisters a library's handlers when it is unloaded).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
        if rc != 0 {
            report_once("cannot watch for fork: a forked child would share its parent's session");
        }
    });
}

/// Runs one entry point's body: attaches the process, follows a card reset, counts the call,
/// and turns the outcome (or a panic) into a result code. Nothing unwinds into the caller. An
/// entry point named by `SIMCUDA_RETURN_DELAY` then waits before it returns, the driver's lock
/// released, so that other threads' calls run in between.
pub(crate) fn call(entry: Entry, body: impl FnOnce(&mut Driver) -> CuOutcome) -> CuResult {
    call_via(entry, false, body)
}

/// [`call`] for an entry point reached through an internal `cuGetProcAddress` answer
/// (`SIMCUDA_PROCADDR=internal`): also counted under [`state::INTERNAL_CALLS_COUNTER`], so that
/// a test can tell such answers were really called.
pub(crate) fn call_internal(entry: Entry, body: impl FnOnce(&mut Driver) -> CuOutcome) -> CuResult {
    call_via(entry, true, body)
}

/// [`call`], counting the call as internal or not.
fn call_via(entry: Entry, internal: bool, body: impl FnOnce(&mut Driver) -> CuOutcome) -> CuResult {
    let result = run(entry, internal, body);
    if let Some((delayed, delay)) = return_delay()
        && *delayed == entry
    {
        std::thread::sleep(*delay);
    }
    result
}

/// The entry point and delay of `SIMCUDA_RETURN_DELAY` (read once; ignored if unreadable).
fn return_delay() -> Option<&'static (Entry, Duration)> {
    static DELAY: std::sync::OnceLock<Option<(Entry, Duration)>> = std::sync::OnceLock::new();
    DELAY
        .get_or_init(|| {
            let (name, delay) = config::return_delay_from_env()?;
            let entry = Entry::ALL.iter().find(|e| e.name() == name)?;
            Some((*entry, delay))
        })
        .as_ref()
}

/// [`call`] without the delay.
fn run(entry: Entry, internal: bool, body: impl FnOnce(&mut Driver) -> CuOutcome) -> CuResult {
    catch_unwind(AssertUnwindSafe(|| {
        // Bounded: a child forked while another thread was inside the driver would otherwise
        // wait forever on a lock nobody will release.
        let Some(mut slot) = DRIVER.try_lock_for(LOCK_PATIENCE) else {
            report_once("the driver lock stayed taken (a fork during a driver call?)");
            return CuResult::UNKNOWN;
        };
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        if slot
            .as_ref()
            .is_none_or(|attached| attached.generation != generation)
        {
            // Registered before the first attach, so every later fork is seen.
            watch_forks();
            match Driver::attach() {
                Ok(driver) => {
                    // A forked child keeps its parent's state open (its descriptor keeps the
                    // parent's memory alive, as the real driver's device files do).
                    if let Some(inherited) = slot.replace(Attached { generation, driver }) {
                        std::mem::forget(inherited);
                    }
                }
                Err(message) => {
                    report_once(&format!("cannot attach to the simulated card: {message}"));
                    return CuResult::UNKNOWN;
                }
            }
        }
        let Some(Attached { driver, .. }) = slot.as_mut() else {
            return CuResult::UNKNOWN;
        };
        driver.follow_reset();
        driver.count(entry as usize);
        if internal {
            driver.count(state::INTERNAL_CALLS_COUNTER);
        }
        CuResult::from(body(driver))
    }))
    .unwrap_or(CuResult::UNKNOWN)
}

/// How long a call waits for another thread's call to finish.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Tells the user once per process why the simulator is failing its calls.
fn report_once(message: &str) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        eprintln!("simcuda: {message}");
    }
}
