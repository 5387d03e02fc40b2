//! What the process is told about memory: `cuMemGetInfo` and `cuDeviceTotalMem` answer with
//! the guard's figures (what this process may really use), never more than the driver's.

use std::ffi::c_uint;

use vramguard_core::cuda::{CuDevice, CuResult};

use super::accounting::guarded_process;
use super::hooks;

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

/// A memory figure as a form of the call passes it: 32 bits in the legacy forms, `size_t` in
/// the `_v2` ones.
trait Figure: Copy {
    /// The figure in bytes, or `None` when it may have been clamped to the form's limit (a
    /// legacy form cannot say more than 4 GiB).
    fn bytes(self) -> Option<u64>;
    /// `bytes` in the form's width, clamped to its limit.
    fn clamped(bytes: u64) -> Self;
}

impl Figure for c_uint {
    fn bytes(self) -> Option<u64> {
        (self < c_uint::MAX).then_some(u64::from(self))
    }
    fn clamped(bytes: u64) -> Self {
        bytes.min(u64::from(c_uint::MAX)) as c_uint
    }
}

impl Figure for usize {
    fn bytes(self) -> Option<u64> {
        Some(self as u64)
    }
    fn clamped(bytes: u64) -> Self {
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// After the driver's `cuMemGetInfo` (either form) answered `result`: on success, `*free` and
/// `*total` become the guard's figures for this process.
///
/// # Safety
/// `free` and `total` are the caller's pointers the driver just wrote on success (or null).
unsafe fn told_memory<T: Figure>(result: CuResult, free: *mut T, total: *mut T) -> CuResult {
    if !result.is_success() || free.is_null() || total.is_null() {
        return result;
    }
    // SAFETY: both non-null and just written by the driver.
    let (driver_free, driver_total) = unsafe { (*free, *total) };
    // A free figure at a legacy form's limit is taken as the limit: the guard's is never more.
    let driver_free = driver_free.bytes().unwrap_or(u64::from(c_uint::MAX));
    if let Some((f, t)) = guarded_info(driver_free, driver_total.bytes()) {
        // SAFETY: as above.
        unsafe {
            *free = T::clamped(f);
            *total = T::clamped(t);
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

/// After the driver's `cuDeviceTotalMem` (either form) answered `result`: on success, `*bytes`
/// becomes the guard's total for this process, never more than the driver's.
///
/// # Safety
/// `bytes` is the caller's pointer the driver just wrote on success (or null).
unsafe fn told_total<T: Figure>(result: CuResult, bytes: *mut T, dev: CuDevice) -> CuResult {
    if result.is_success()
        && !bytes.is_null()
        && let Some(total) = guarded_total(dev)
    {
        // SAFETY: non-null, just written by the driver.
        let driver = unsafe { *bytes }.bytes().unwrap_or(u64::MAX);
        // SAFETY: as above.
        unsafe { *bytes = T::clamped(total.min(driver)) };
    }
    result
}

hooks! {
    cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) => |call| {
        // SAFETY: the pointers the driver is called with.
        unsafe { told_memory(call(), free, total) }
    };
    cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => |call| {
        // SAFETY: the pointers the driver is called with.
        unsafe { told_memory(call(), free, total) }
    };
    cuDeviceTotalMem(bytes: *mut c_uint, dev: CuDevice) => |call| {
        // SAFETY: the pointer the driver is called with.
        unsafe { told_total(call(), bytes, dev) }
    };
    cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice) => |call| {
        // SAFETY: the pointer the driver is called with.
        unsafe { told_total(call(), bytes, dev) }
    };
}
