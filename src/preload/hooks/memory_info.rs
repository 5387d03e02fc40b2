//! What the process is told about memory: `cuMemGetInfo` and `cuDeviceTotalMem` answer with
//! the guard's figures (what this process may really use), never more than the driver's.

use std::ffi::c_uint;

use vramguard_core::cuda::{CuDevice, CuResult};

use super::accounting::guarded_process;
use crate::lookup::real;

/// The guard's (free, total) for the current device, given the driver's free figure and its
/// total, which is recorded in the ledger when it is known (`None`: clamped by a legacy form).
fn guarded_info(driver_free: u64, driver_total: Option<u64>) -> Option<(u64, u64)> {
    let process = guarded_process().ok()?;
    let (device, _) = process.current_device().ok()?;
    if let Some(total) = driver_total {
        process.note_driver_memory(device, driver_free, total);
    }
    Some(process.memory_info(device, driver_free))
}

/// The guarded `cuMemGetInfo`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemGetInfo`.
pub unsafe fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemGetInfo(free, total) };
    if !result.is_success() || free.is_null() || total.is_null() {
        return result;
    }
    // SAFETY: both non-null and just written by the driver.
    let (driver_free, driver_total) = unsafe { (*free, *total) };
    // A figure at the 32-bit limit may have been clamped: not recorded.
    let unclamped = (driver_total < c_uint::MAX).then_some(u64::from(driver_total));
    if let Some((f, t)) = guarded_info(u64::from(driver_free), unclamped) {
        // SAFETY: as above.
        unsafe {
            *free = f.min(u64::from(c_uint::MAX)) as c_uint;
            *total = t.min(u64::from(c_uint::MAX)) as c_uint;
        }
    }
    result
}

/// The guarded `cuMemGetInfo_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemGetInfo_v2`.
pub unsafe fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemGetInfo_v2(free, total) };
    if !result.is_success() || free.is_null() || total.is_null() {
        return result;
    }
    // SAFETY: both non-null and just written by the driver.
    let (driver_free, driver_total) = unsafe { (*free, *total) };
    if let Some((f, t)) = guarded_info(driver_free as u64, Some(driver_total as u64)) {
        // SAFETY: as above.
        unsafe {
            *free = f as usize;
            *total = t as usize;
        }
    }
    result
}

/// The guard's total for device `dev`.
fn guarded_total(dev: CuDevice) -> Option<u64> {
    let process = guarded_process().ok()?;
    let device = process.device(dev).ok()?;
    Some(process.total_memory(device))
}

/// The guarded `cuDeviceTotalMem`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDeviceTotalMem`.
pub unsafe fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuDeviceTotalMem(bytes, dev) };
    if result.is_success()
        && !bytes.is_null()
        && let Some(total) = guarded_total(dev)
    {
        // SAFETY: non-null, just written by the driver.
        unsafe { *bytes = total.min(u64::from(*bytes)) as c_uint };
    }
    result
}

/// The guarded `cuDeviceTotalMem_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDeviceTotalMem_v2`.
pub unsafe fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuDeviceTotalMem_v2(bytes, dev) };
    if result.is_success()
        && !bytes.is_null()
        && let Some(total) = guarded_total(dev)
    {
        // SAFETY: non-null, just written by the driver.
        unsafe { *bytes = total.min(*bytes as u64) as usize };
    }
    result
}
