//! The simulated CUDA driver: a stand-in for `libcuda.so.1` on machines without a GPU.
//!
//! Physical memory is shared by every process on the machine through a card-state file
//! ([`state`]); each process keeps the tables of its own allocations, contexts, pools and
//! virtual-memory mappings ([`driver`]); the exported entry points ([`exports`]) have the real
//! driver's names, signatures and `cuGetProcAddress` versioning ([`procaddr`]). The `simcuda`
//! tool creates, resets and reports the card ([`report`]). Environment: see [`config`].

pub mod abi;
pub mod config;
pub mod driver;
pub mod exports;
pub mod procaddr;
pub mod report;
pub mod result;
pub mod state;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::driver::{CuOutcome, Driver};
use crate::exports::Entry;
use crate::result::CuResult;

/// This process's driver, attached on the first call (again in a forked child).
static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

/// Runs one entry point's body: attaches the process, follows a card reset, counts the call,
/// and turns the outcome (or a panic) into a result code. Nothing unwinds into the caller.
pub(crate) fn call(entry: Entry, body: impl FnOnce(&mut Driver) -> CuOutcome) -> CuResult {
    catch_unwind(AssertUnwindSafe(|| {
        // Bounded: a child forked while another thread was inside the driver would otherwise
        // wait forever on a lock nobody will release.
        let Some(mut slot) = DRIVER.try_lock_for(LOCK_PATIENCE) else {
            report_once("the driver lock stayed taken (a fork during a driver call?)");
            return CuResult::UNKNOWN;
        };
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if slot.as_ref().is_none_or(|driver| driver.pid() != pid) {
            match Driver::attach() {
                Ok(driver) => {
                    // A forked child keeps its parent's state open (its descriptor keeps the
                    // parent's memory alive, as the real driver's device files do).
                    if let Some(inherited) = slot.replace(driver) {
                        std::mem::forget(inherited);
                    }
                }
                Err(message) => {
                    report_once(&format!("cannot attach to the simulated card: {message}"));
                    return CuResult::UNKNOWN;
                }
            }
        }
        let Some(driver) = slot.as_mut() else {
            return CuResult::UNKNOWN;
        };
        driver.follow_reset();
        driver.count(entry as usize);
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
