//! Virtual memory management: physical allocations (`cuMemCreate`) are charged once, and kept
//! alive by their handle and their mappings; the charge goes with the last reference.

use std::ffi::c_void;

use vramguard_core::cuda::{CuDevicePtr, CuMemHandle, CuResult};

use super::accounting::{On, allocate, guarded_process, read};
use crate::boundary::Driver;
use crate::driver::layouts::{self, PropsHead};
use crate::process::tables::Key;

/// The guarded `cuMemCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemCreate`.
pub unsafe fn cuMemCreate(
    driver: Driver<'_, impl Fn() -> CuResult>,
    handle: *mut CuMemHandle,
    size: usize,
    prop: *const c_void,
    _flags: u64,
) -> CuResult {
    // SAFETY: the caller passes a CUmemAllocationProp, which starts with PropsHead.
    let on = match unsafe { read(prop.cast::<PropsHead>()) } {
        Some(h) if h.location.location_type == layouts::LOCATION_DEVICE => {
            On::Ordinal(h.location.id)
        }
        _ => On::Current,
    };
    allocate(
        "cuMemCreate",
        size as u64,
        on,
        || driver.call(),
        // SAFETY: written by the driver on success.
        || unsafe { read(handle) }.map(Key::Physical),
    )
}

/// The guarded `cuMemRelease`: drops the handle's reference; the charge goes with the last one
/// (the handle or its last mapping).
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemRelease`.
pub unsafe fn cuMemRelease(
    driver: Driver<'_, impl Fn() -> CuResult>,
    handle: CuMemHandle,
) -> CuResult {
    let call = || driver.call();
    let Ok(process) = guarded_process() else {
        return call();
    };
    let released = process.tables().physical_unreferenced(handle);
    let result = call();
    if result.is_success() {
        process.release(released.map(|e| e.charge));
    } else {
        process.tables().physical_restore(handle, released);
    }
    result
}

/// The guarded `cuMemMap`: a mapping keeps its physical allocation alive (never charged twice).
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemMap`.
pub unsafe fn cuMemMap(
    driver: Driver<'_, impl Fn() -> CuResult>,
    ptr: CuDevicePtr,
    size: usize,
    _offset: usize,
    handle: CuMemHandle,
    _flags: u64,
) -> CuResult {
    let result = driver.call();
    if result.is_success()
        && let Ok(process) = guarded_process()
    {
        process.tables().mapped(ptr, size as u64, handle);
    }
    result
}

/// The guarded `cuMemUnmap`: the physical allocations whose last reference was a mapping in the
/// range are released.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemUnmap`.
pub unsafe fn cuMemUnmap(
    driver: Driver<'_, impl Fn() -> CuResult>,
    ptr: CuDevicePtr,
    size: usize,
) -> CuResult {
    let call = || driver.call();
    let Ok(process) = guarded_process() else {
        return call();
    };
    let mappings = process.tables().unmapped(ptr, size as u64);
    let result = call();
    if !result.is_success() {
        process.tables().remap(&mappings);
        return result;
    }
    for (_, _, handle) in mappings {
        let released = process.tables().physical_unreferenced(handle);
        process.release(released.map(|e| e.charge));
    }
    result
}

/// The guarded `cuMemRetainAllocationHandle`: one more reference to a physical allocation.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemRetainAllocationHandle`.
pub unsafe fn cuMemRetainAllocationHandle(
    driver: Driver<'_, impl Fn() -> CuResult>,
    handle: *mut CuMemHandle,
    _addr: *mut c_void,
) -> CuResult {
    let result = driver.call();
    if result.is_success()
        && let Ok(process) = guarded_process()
        // SAFETY: written by the driver on success.
        && let Some(handle) = unsafe { read(handle) }
    {
        process.tables().physical_referenced(handle);
    }
    result
}
