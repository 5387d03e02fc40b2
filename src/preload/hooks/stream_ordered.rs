//! Stream-ordered allocation and pools: `cuMemAllocAsync`, `cuMemAllocFromPoolAsync`,
//! `cuMemFreeAsync`, the pools' life, and the synchronisation points where pools give memory
//! back to the driver.

use std::ffi::c_void;

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuResult};

use super::accounting::{accountable, free, guarded_process, read, record, settle_pools};
use super::hooks;
use crate::boundary::Driver;
use crate::driver::layouts::PropsHead;
use crate::driver::{current, layouts};
use crate::functions::Handle;
use crate::process::devices::Context;
use crate::process::tables::{Charge, Key, PoolKey};

/// Shared body of the pool allocations: draws on the pool's cached bytes first, admits the rest.
fn allocate_from_pool(
    what: &str,
    bytes: u64,
    pool: Option<Handle>,
    call: impl FnOnce() -> CuResult,
    pointer: impl FnOnce() -> Option<u64>,
) -> CuResult {
    let process = match accountable(bytes) {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let known = pool.and_then(|h| process.tables().pool_of_handle(h as usize));
    let found = match known {
        Some((_, ordinal)) => process.device(ordinal).map(|d| (d, Context::Named)),
        None => process.current_device(),
    };
    let (device, context) = match found {
        Ok(found) => found,
        Err(why) => return process.unaccounted(why, call),
    };
    let key = match (known, pool) {
        (Some((key, _)), _) => key,
        (None, Some(handle)) => {
            process.tables().learn_pool(
                handle as usize,
                PoolKey::Handle(handle as usize),
                device.ordinal,
            );
            PoolKey::Handle(handle as usize)
        }
        (None, None) => PoolKey::Default(device.ordinal),
    };
    let drawn = process.tables().draw_from_cache(key, device.id, bytes);
    let (admitted, result) = match process.call_admitted(device, context, bytes - drawn, what, call)
    {
        Ok(done) => done,
        Err(code) => {
            process.tables().undraw(key, drawn);
            return code;
        }
    };
    let charge = Charge {
        device: device.id,
        bytes: drawn + process.commit(admitted),
    };
    record(
        process,
        pointer().map(Key::Pointer),
        charge,
        Some(key),
        context,
    );
    result
}

hooks! {
    cuMemAllocAsync(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle) => |call, what| {
        // SAFETY: written by the driver on success.
        allocate_from_pool(what, bytesize as u64, None, call, || unsafe { read(dptr) })
    };
    cuMemAllocAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle) => |call, what| {
        // SAFETY: written by the driver on success.
        allocate_from_pool(what, bytesize as u64, None, call, || unsafe { read(dptr) })
    };
    cuMemAllocFromPoolAsync(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle) => |call, what| {
        // SAFETY: written by the driver on success.
        allocate_from_pool(what, bytesize as u64, Some(pool), call, || unsafe { read(dptr) })
    };
    cuMemAllocFromPoolAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle) => |call, what| {
        // SAFETY: written by the driver on success.
        allocate_from_pool(what, bytesize as u64, Some(pool), call, || unsafe { read(dptr) })
    };
    cuMemFreeAsync(dptr: CuDevicePtr, stream: Handle) => |call| free(Key::Pointer(dptr), false, call);
    cuMemFreeAsync_ptsz(dptr: CuDevicePtr, stream: Handle) => |call| free(Key::Pointer(dptr), false, call);
    cuStreamSynchronize(stream: Handle) => |call| synchronized(call());
    cuStreamSynchronize_ptsz(stream: Handle) => |call| synchronized(call());
    cuCtxSynchronize() => |call| synchronized(call());
}

/// The guarded `cuMemPoolCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemPoolCreate`.
pub unsafe fn cuMemPoolCreate(
    driver: Driver<'_, impl Fn() -> CuResult>,
    pool: *mut Handle,
    props: *const c_void,
) -> CuResult {
    let result = driver.call();
    if !result.is_success() {
        return result;
    }
    let Ok(process) = guarded_process() else {
        return result;
    };
    // SAFETY: the driver accepted `props` as a CUmemPoolProps, which starts with PropsHead.
    let head = unsafe { read(props.cast::<PropsHead>()) };
    let ordinal = match head {
        Some(h) if h.location.location_type == layouts::LOCATION_DEVICE => Some(h.location.id),
        _ => current::current_ordinal(),
    };
    // SAFETY: written by the driver on success.
    if let (Some(handle), Some(ordinal)) = (unsafe { read(pool) }, ordinal) {
        process
            .tables()
            .learn_pool(handle as usize, PoolKey::Handle(handle as usize), ordinal);
    }
    result
}

/// The guarded `cuDeviceGetDefaultMemPool`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDeviceGetDefaultMemPool`.
pub unsafe fn cuDeviceGetDefaultMemPool(
    driver: Driver<'_, impl Fn() -> CuResult>,
    pool: *mut Handle,
    dev: CuDevice,
) -> CuResult {
    let result = driver.call();
    if result.is_success()
        && let Ok(process) = guarded_process()
    {
        // SAFETY: written by the driver on success.
        if let Some(handle) = unsafe { read(pool) } {
            process
                .tables()
                .learn_pool(handle as usize, PoolKey::Default(dev), dev);
        }
    }
    result
}

/// The guarded `cuMemPoolDestroy`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemPoolDestroy`.
pub unsafe fn cuMemPoolDestroy(
    driver: Driver<'_, impl Fn() -> CuResult>,
    pool: Handle,
) -> CuResult {
    let result = driver.call();
    if result.is_success()
        && let Ok(process) = guarded_process()
    {
        let released = process.tables().destroy_pool(pool as usize);
        process.release(released);
    }
    result
}

/// The guarded `cuMemPoolTrimTo`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemPoolTrimTo`.
pub unsafe fn cuMemPoolTrimTo(
    driver: Driver<'_, impl Fn() -> CuResult>,
    pool: Handle,
    min_bytes_to_keep: usize,
) -> CuResult {
    let result = driver.call();
    if result.is_success()
        && let Ok(process) = guarded_process()
    {
        let key = process
            .tables()
            .pool_of_handle(pool as usize)
            .map_or(PoolKey::Handle(pool as usize), |(k, _)| k);
        let released = process.tables().trim_pool(key, min_bytes_to_keep as u64);
        process.release(released);
    }
    result
}

/// After a successful synchronisation of the current context's device.
fn synchronized(result: CuResult) -> CuResult {
    if result.is_success()
        && let Ok(process) = guarded_process()
    {
        settle_pools(process, current::current_ordinal());
    }
    result
}
