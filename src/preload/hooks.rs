//! The bodies of the guarded functions, one per entry of the list in [`crate::functions`].
//!
//! Each turns the raw C arguments into plain values, then follows one of a few patterns:
//! [`allocate`] (admit, call, commit or roll back, record), [`free`] (forget, call, release or
//! restore), or a lookup/information call that adjusts the driver's answer. The driver is always
//! called with the caller's exact arguments.
#![allow(non_snake_case, clippy::too_many_arguments)]

use std::ffi::{c_char, c_int, c_uint, c_void};

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuMemHandle, CuResult};
use vramguard_core::settings::ManagedPolicy;
use vramguard_core::units::format_size;

use crate::current;
use crate::functions::{Handle, real};
use crate::guard::{self, Context, Device, Process};
use crate::layouts::{self, Array3dDescriptor, ArrayDescriptor, PropsHead};
use crate::state::{Session, session};
use crate::tables::{Charge, Entry, Key, PoolKey};

/// Where an allocation lands.
#[derive(Clone, Copy)]
enum On {
    /// The current context's device.
    Current,
    /// A given device ordinal.
    Ordinal(CuDevice),
}

/// The attached process, or `Err(code)` with the answer for a call that is not guarded
/// (`None`: pass it through).
fn guarded_process() -> Result<&'static Process, Option<CuResult>> {
    match session() {
        Session::Guarded(process) => Ok(process),
        Session::PassThrough => Err(None),
        Session::Refuse => Err(Some(CuResult::OUT_OF_MEMORY)),
    }
}

/// The process to account `bytes` to, or `Err(code)` as [`guarded_process`] (nothing is
/// accounted for 0 bytes: `None`, pass the call through).
fn accountable(bytes: u64) -> Result<&'static Process, Option<CuResult>> {
    let process = guarded_process()?;
    if bytes == 0 { Err(None) } else { Ok(process) }
}

fn resolve(process: &Process, on: On) -> Result<(&Device, Context), guard::NoDevice> {
    match on {
        On::Current => process.current_device(),
        On::Ordinal(ordinal) => Ok((process.device(ordinal)?, Context::Named)),
    }
}

/// Admits `bytes`, runs the driver call, and on success records what `key` names.
fn allocate(
    what: &str,
    bytes: u64,
    on: On,
    call: impl FnOnce() -> CuResult,
    key: impl FnOnce() -> Option<Key>,
) -> CuResult {
    let process = match accountable(bytes) {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let (device, context) = match resolve(process, on) {
        Ok(found) => found,
        Err(why) => return process.unaccounted(why, call),
    };
    let (admitted, result) = match process.call_admitted(device, context, bytes, what, call) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let charge = Charge {
        device: device.id,
        bytes: process.commit(admitted),
    };
    record(process, key(), charge, None, context);
    result
}

/// Records a held thing; a stale entry under the same key (freed behind our back, e.g. with its
/// context) is released. `context` is where the device was found: linear memory and arrays made
/// in the current context die with it.
#[inline]
fn record(
    process: &Process,
    key: Option<Key>,
    charge: Charge,
    pool: Option<PoolKey>,
    context: Context,
) {
    crate::log::debug_with(|| {
        format!(
            "charged {} for {key:?} (pool {pool:?})",
            format_size(charge.bytes)
        )
    });
    match key {
        Some(key) => {
            // Pool and physical memory outlive contexts; everything else dies with its context.
            let context = match (pool, key, context) {
                (None, Key::Pointer(_) | Key::Array(_), Context::Current(handle)) => handle,
                _ => 0,
            };
            let stale = process.tables().insert(
                key,
                Entry {
                    charge,
                    pool,
                    context,
                },
            );
            process.release(stale.map(|e| e.charge));
        }
        // The driver reported success without a handle: nothing to free later, so no charge.
        None => process.release(Some(charge)),
    }
}

/// Forgets `key`, runs the driver's free, and releases (or, if the driver refused, restores).
/// `settle` says whether pool memory returned by this free is released at once (a synchronous
/// free is a synchronisation point for the pools).
fn free(key: Key, settle: bool, call: impl FnOnce() -> CuResult) -> CuResult {
    let Ok(process) = guarded_process() else {
        return call();
    };
    let entry = process.tables().remove(key);
    let result = call();
    let Some(entry) = entry else { return result };
    crate::log::debug_with(|| {
        format!(
            "freed {key:?} ({}): {result}",
            format_size(entry.charge.bytes)
        )
    });
    if !result.is_success() {
        process.tables().restore(key, entry);
        return result;
    }
    match entry.pool {
        None => process.release(Some(entry.charge)),
        Some(pool) => {
            let gone = process.tables().return_to_pool(pool, entry.charge);
            process.release(gone);
            if settle {
                settle_pools(process, current::current_ordinal());
            }
        }
    }
    result
}

/// At a synchronisation point the driver releases what each pool caches beyond its release
/// threshold; the guard does the same for the pools whose threshold the driver tells.
fn settle_pools(process: &Process, ordinal: Option<CuDevice>) {
    let pools = process.tables().pools_with_cache(ordinal);
    for (key, handle) in pools {
        let handle = match (key, handle) {
            (_, Some(handle)) => handle as Handle,
            (PoolKey::Default(device), None) => {
                let mut handle: Handle = std::ptr::null_mut();
                // SAFETY: `handle` is a live pointer-sized slot the driver writes.
                if !unsafe { real::cuDeviceGetDefaultMemPool(&mut handle, device) }.is_success() {
                    continue;
                }
                handle
            }
            (PoolKey::Handle(handle), None) => handle as Handle,
        };
        if let Some(threshold) = guard::pool_release_threshold(handle) {
            let released = process.tables().trim_pool(key, threshold);
            process.release(released);
        }
    }
}

/// Reads `*pointer` if non-null.
///
/// # Safety
/// `pointer` is null or valid for reads.
unsafe fn read<T: Copy>(pointer: *const T) -> Option<T> {
    // SAFETY: the caller guarantees validity when non-null.
    (!pointer.is_null()).then(|| unsafe { *pointer })
}

// ----- initialisation and lookups --------------------------------------------------------------

/// The guarded `cuInit`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuInit`.
pub unsafe fn cuInit(flags: c_uint) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuInit(flags) };
    if result.is_success() {
        // Attach now, so that a ledger problem is reported at start-up.
        let _ = session();
    }
    result
}

/// The guarded `cuGetProcAddress`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuGetProcAddress`.
pub unsafe fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuGetProcAddress(symbol, pfn, cuda_version, flags) };
    if result.is_success() {
        // SAFETY: the real lookup succeeded with these pointers.
        unsafe { crate::procaddr::substitute(symbol, pfn, cuda_version, flags) };
    }
    result
}

/// The guarded `cuGetProcAddress_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuGetProcAddress_v2`.
pub unsafe fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuGetProcAddress_v2(symbol, pfn, cuda_version, flags, status) };
    if result.is_success() {
        // SAFETY: the real lookup succeeded with these pointers.
        unsafe { crate::procaddr::substitute(symbol, pfn, cuda_version, flags) };
    }
    result
}

// ----- linear memory ---------------------------------------------------------------------------

/// The guarded `cuMemAlloc`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemAlloc`.
pub unsafe fn cuMemAlloc(dptr: *mut c_uint, bytesize: c_uint) -> CuResult {
    allocate(
        "cuMemAlloc",
        u64::from(bytesize),
        On::Current,
        // SAFETY: arguments passed unchanged.
        || unsafe { real::cuMemAlloc(dptr, bytesize) },
        // SAFETY: written by the driver on success.
        || unsafe { read(dptr) }.map(|p| Key::Pointer(u64::from(p))),
    )
}

/// The guarded `cuMemAlloc_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemAlloc_v2`.
pub unsafe fn cuMemAlloc_v2(dptr: *mut CuDevicePtr, bytesize: usize) -> CuResult {
    allocate(
        "cuMemAlloc_v2",
        bytesize as u64,
        On::Current,
        // SAFETY: arguments passed unchanged.
        || unsafe { real::cuMemAlloc_v2(dptr, bytesize) },
        // SAFETY: written by the driver on success.
        || unsafe { read(dptr) }.map(Key::Pointer),
    )
}

/// The guarded `cuMemFree`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemFree`.
pub unsafe fn cuMemFree(dptr: c_uint) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Pointer(u64::from(dptr)), true, || unsafe {
        real::cuMemFree(dptr)
    })
}

/// The guarded `cuMemFree_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemFree_v2`.
pub unsafe fn cuMemFree_v2(dptr: CuDevicePtr) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Pointer(dptr), true, || unsafe {
        real::cuMemFree_v2(dptr)
    })
}

/// The pitch the guard admits before the driver answers: the width rounded up to 512 bytes (the
/// usual pitch alignment); the charge is then corrected to the pitch actually returned.
fn pitch_estimate(width: u64, height: u64) -> u64 {
    width
        .div_ceil(512)
        .saturating_mul(512)
        .saturating_mul(height)
}

/// Shared body of both pitched forms: `call` allocates, `result` reads (pointer, pitch).
fn allocate_pitched(
    what: &str,
    width: u64,
    height: u64,
    call: impl FnOnce() -> CuResult,
    result: impl Fn() -> Option<(u64, u64)>,
    undo: impl FnOnce(u64),
) -> CuResult {
    let estimate = pitch_estimate(width, height);
    let process = match accountable(estimate) {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let (device, context) = match process.current_device() {
        Ok(found) => found,
        Err(why) => return process.unaccounted(why, call),
    };
    let (admitted, outcome) = match process.call_admitted(device, context, estimate, what, call) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let Some((pointer, pitch)) = result() else {
        process.rollback(admitted);
        return outcome;
    };
    match process.commit_actual(device, admitted, pitch.saturating_mul(height)) {
        Some(bytes) => {
            record(
                process,
                Some(Key::Pointer(pointer)),
                Charge {
                    device: device.id,
                    bytes,
                },
                None,
                context,
            );
            outcome
        }
        None => {
            crate::log::warn(&format!(
                "{what}: the driver's pitch ({pitch} bytes a row, {} in all) takes more than fits; allocation undone",
                format_size(pitch.saturating_mul(height))
            ));
            undo(pointer);
            CuResult::OUT_OF_MEMORY
        }
    }
}

/// The guarded `cuMemAllocPitch`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemAllocPitch`.
pub unsafe fn cuMemAllocPitch(
    dptr: *mut c_uint,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    element_size: c_uint,
) -> CuResult {
    allocate_pitched(
        "cuMemAllocPitch",
        u64::from(width),
        u64::from(height),
        // SAFETY: arguments passed unchanged.
        || unsafe { real::cuMemAllocPitch(dptr, pitch, width, height, element_size) },
        // SAFETY: written by the driver on success.
        || unsafe { Some((u64::from(read(dptr)?), u64::from(read(pitch)?))) },
        // SAFETY: the pointer was just returned by the driver's legacy allocator.
        |pointer| {
            let _ = unsafe { real::cuMemFree(pointer as c_uint) };
        },
    )
}

/// The guarded `cuMemAllocPitch_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemAllocPitch_v2`.
pub unsafe fn cuMemAllocPitch_v2(
    dptr: *mut CuDevicePtr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: c_uint,
) -> CuResult {
    allocate_pitched(
        "cuMemAllocPitch_v2",
        width as u64,
        height as u64,
        // SAFETY: arguments passed unchanged.
        || unsafe { real::cuMemAllocPitch_v2(dptr, pitch, width, height, element_size) },
        // SAFETY: written by the driver on success.
        || unsafe { Some((read(dptr)?, read(pitch)? as u64)) },
        // SAFETY: the pointer was just returned by the driver.
        |pointer| {
            let _ = unsafe { real::cuMemFree_v2(pointer) };
        },
    )
}

/// The guarded `cuMemAllocManaged`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemAllocManaged`.
pub unsafe fn cuMemAllocManaged(
    dptr: *mut CuDevicePtr,
    bytesize: usize,
    flags: c_uint,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuMemAllocManaged(dptr, bytesize, flags) };
    if crate::state::config().managed == ManagedPolicy::Ignore {
        return call();
    }
    allocate(
        "cuMemAllocManaged",
        bytesize as u64,
        On::Current,
        call,
        // SAFETY: written by the driver on success.
        || unsafe { read(dptr) }.map(Key::Pointer),
    )
}

// ----- what the process is told ----------------------------------------------------------------

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

// ----- stream-ordered allocation and pools -----------------------------------------------------

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

/// The four stream-ordered allocation entry points, `name(dptr, bytesize, args...)`: one body
/// ([`allocate_from_pool`]) with the pool the call names (`None`: the device's current pool).
macro_rules! stream_ordered_allocations {
    ($($name:ident($($arg:ident: $ty:ty),*) from $pool:expr;)*) => {$(
        #[doc = concat!("The guarded `", stringify!($name), "`.")]
        ///
        /// # Safety
        #[doc = concat!("The caller upholds the driver's contract for `", stringify!($name), "`.")]
        pub unsafe fn $name(dptr: *mut CuDevicePtr, bytesize: usize, $($arg: $ty),*) -> CuResult {
            allocate_from_pool(
                stringify!($name),
                bytesize as u64,
                $pool,
                // SAFETY: arguments passed unchanged.
                || unsafe { real::$name(dptr, bytesize, $($arg),*) },
                // SAFETY: written by the driver on success.
                || unsafe { read(dptr) },
            )
        }
    )*};
}

stream_ordered_allocations! {
    cuMemAllocAsync(stream: Handle) from None;
    cuMemAllocAsync_ptsz(stream: Handle) from None;
    cuMemAllocFromPoolAsync(pool: Handle, stream: Handle) from Some(pool);
    cuMemAllocFromPoolAsync_ptsz(pool: Handle, stream: Handle) from Some(pool);
}

/// The guarded `cuMemFreeAsync`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemFreeAsync`.
pub unsafe fn cuMemFreeAsync(dptr: CuDevicePtr, stream: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Pointer(dptr), false, || unsafe {
        real::cuMemFreeAsync(dptr, stream)
    })
}

/// The guarded `cuMemFreeAsync_ptsz`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemFreeAsync_ptsz`.
pub unsafe fn cuMemFreeAsync_ptsz(dptr: CuDevicePtr, stream: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Pointer(dptr), false, || unsafe {
        real::cuMemFreeAsync_ptsz(dptr, stream)
    })
}

/// The guarded `cuMemPoolCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemPoolCreate`.
pub unsafe fn cuMemPoolCreate(pool: *mut Handle, props: *const c_void) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemPoolCreate(pool, props) };
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
pub unsafe fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuDeviceGetDefaultMemPool(pool, dev) };
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
pub unsafe fn cuMemPoolDestroy(pool: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemPoolDestroy(pool) };
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
pub unsafe fn cuMemPoolTrimTo(pool: Handle, min_bytes_to_keep: usize) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemPoolTrimTo(pool, min_bytes_to_keep) };
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

/// The guarded `cuStreamSynchronize`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuStreamSynchronize`.
pub unsafe fn cuStreamSynchronize(stream: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    synchronized(unsafe { real::cuStreamSynchronize(stream) })
}

/// The guarded `cuStreamSynchronize_ptsz`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuStreamSynchronize_ptsz`.
pub unsafe fn cuStreamSynchronize_ptsz(stream: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    synchronized(unsafe { real::cuStreamSynchronize_ptsz(stream) })
}

/// The guarded `cuCtxSynchronize`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxSynchronize`.
pub unsafe fn cuCtxSynchronize() -> CuResult {
    // SAFETY: no arguments.
    synchronized(unsafe { real::cuCtxSynchronize() })
}

// ----- virtual memory --------------------------------------------------------------------------

/// The guarded `cuMemCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemCreate`.
pub unsafe fn cuMemCreate(
    handle: *mut CuMemHandle,
    size: usize,
    prop: *const c_void,
    flags: u64,
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
        // SAFETY: arguments passed unchanged.
        || unsafe { real::cuMemCreate(handle, size, prop, flags) },
        // SAFETY: written by the driver on success.
        || unsafe { read(handle) }.map(Key::Physical),
    )
}

/// The guarded `cuMemRelease`: drops the handle's reference; the charge goes with the last one
/// (the handle or its last mapping).
///
/// # Safety
/// The caller upholds the driver's contract for `cuMemRelease`.
pub unsafe fn cuMemRelease(handle: CuMemHandle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuMemRelease(handle) };
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
    ptr: CuDevicePtr,
    size: usize,
    offset: usize,
    handle: CuMemHandle,
    flags: u64,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemMap(ptr, size, offset, handle, flags) };
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
pub unsafe fn cuMemUnmap(ptr: CuDevicePtr, size: usize) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuMemUnmap(ptr, size) };
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
pub unsafe fn cuMemRetainAllocationHandle(handle: *mut CuMemHandle, addr: *mut c_void) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let result = unsafe { real::cuMemRetainAllocationHandle(handle, addr) };
    if result.is_success()
        && let Ok(process) = guarded_process()
        // SAFETY: written by the driver on success.
        && let Some(handle) = unsafe { read(handle) }
    {
        process.tables().physical_referenced(handle);
    }
    result
}

// ----- arrays ----------------------------------------------------------------------------------

/// The guarded `cuArrayCreate_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuArrayCreate_v2`.
pub unsafe fn cuArrayCreate_v2(array: *mut Handle, desc: *const c_void) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuArrayCreate_v2(array, desc) };
    // SAFETY: the caller passes a CUDA_ARRAY_DESCRIPTOR.
    let Some(d) = (unsafe { read(desc.cast::<ArrayDescriptor>()) }) else {
        return call();
    };
    let bytes = layouts::array_bytes(d.width, d.height, 0, d.format, d.channels);
    // SAFETY: written by the driver on success.
    allocate("cuArrayCreate_v2", bytes, On::Current, call, || {
        unsafe { read(array) }.map(|a| Key::Array(a as usize))
    })
}

/// The guarded `cuArray3DCreate_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuArray3DCreate_v2`.
pub unsafe fn cuArray3DCreate_v2(array: *mut Handle, desc: *const c_void) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuArray3DCreate_v2(array, desc) };
    // SAFETY: the caller passes a CUDA_ARRAY3D_DESCRIPTOR.
    let Some(d) = (unsafe { read(desc.cast::<Array3dDescriptor>()) }) else {
        return call();
    };
    let bytes = layouts::array_bytes(d.width, d.height, d.depth, d.format, d.channels);
    // SAFETY: written by the driver on success.
    allocate("cuArray3DCreate_v2", bytes, On::Current, call, || {
        unsafe { read(array) }.map(|a| Key::Array(a as usize))
    })
}

/// The guarded `cuMipmappedArrayCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMipmappedArrayCreate`.
pub unsafe fn cuMipmappedArrayCreate(
    array: *mut Handle,
    desc: *const c_void,
    levels: c_uint,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuMipmappedArrayCreate(array, desc, levels) };
    // SAFETY: the caller passes a CUDA_ARRAY3D_DESCRIPTOR.
    let Some(d) = (unsafe { read(desc.cast::<Array3dDescriptor>()) }) else {
        return call();
    };
    let bytes = layouts::mipmapped_bytes(&d, levels);
    allocate(
        "cuMipmappedArrayCreate",
        bytes,
        On::Current,
        call,
        // SAFETY: written by the driver on success.
        || unsafe { read(array) }.map(|a| Key::Array(a as usize)),
    )
}

/// The guarded `cuArrayDestroy`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuArrayDestroy`.
pub unsafe fn cuArrayDestroy(array: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Array(array as usize), false, || unsafe {
        real::cuArrayDestroy(array)
    })
}

/// The guarded `cuMipmappedArrayDestroy`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuMipmappedArrayDestroy`.
pub unsafe fn cuMipmappedArrayDestroy(array: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    free(Key::Array(array as usize), false, || unsafe {
        real::cuMipmappedArrayDestroy(array)
    })
}

// ----- contexts --------------------------------------------------------------------------------

/// Shared body of the `cuCtxCreate` forms: the context is charged what it takes on the card,
/// measured across its creation ([`Process::create_context`]).
fn create_context(
    what: &str,
    ctx: *mut Handle,
    dev: CuDevice,
    call: impl FnOnce() -> CuResult,
) -> CuResult {
    let process = match guarded_process() {
        Ok(process) => process,
        Err(answer) => return context_made(answer.unwrap_or_else(call)),
    };
    let device = match process.device(dev) {
        Ok(device) => device,
        Err(why) => return context_made(process.unaccounted(why, call)),
    };
    // A context that took more than fits is destroyed again (which also pops it off the
    // thread's stack, where creation pushed it).
    let undo = || {
        // SAFETY: written by the driver on success.
        if let Some(created) = unsafe { read(ctx) } {
            // SAFETY: the context the driver just created for this call, destroyed once.
            let _ = unsafe { real::cuCtxDestroy_v2(created) };
            // SAFETY: the caller's pointer, valid for writes per the driver's contract.
            unsafe { ctx.write(std::ptr::null_mut()) };
        }
    };
    let (bytes, result) = match process.create_context(device, what, call, undo) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let charge = Charge {
        device: device.id,
        bytes,
    };
    // SAFETY: written by the driver on success.
    let key = unsafe { read(ctx) }.map(|c| Key::Context(c as usize));
    record(process, key, charge, None, Context::Named);
    context_made(result)
}

/// After the driver's answer to a call that may have made a context: on success the handle may
/// be one the driver reused from a context destroyed a moment ago (on another device, perhaps),
/// whose device some thread may have cached before the destruction was seen; every cached
/// context device is forgotten before the program can use the new handle.
fn context_made(result: CuResult) -> CuResult {
    if result.is_success() {
        current::forget_contexts();
    }
    result
}

/// The guarded `cuCtxCreate`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxCreate`.
pub unsafe fn cuCtxCreate(ctx: *mut Handle, flags: c_uint, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    create_context("cuCtxCreate", ctx, dev, || unsafe {
        real::cuCtxCreate(ctx, flags, dev)
    })
}

/// The guarded `cuCtxCreate_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxCreate_v2`.
pub unsafe fn cuCtxCreate_v2(ctx: *mut Handle, flags: c_uint, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    create_context("cuCtxCreate_v2", ctx, dev, || unsafe {
        real::cuCtxCreate_v2(ctx, flags, dev)
    })
}

/// The guarded `cuCtxCreate_v3`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxCreate_v3`.
pub unsafe fn cuCtxCreate_v3(
    ctx: *mut Handle,
    params: *mut c_void,
    num_params: c_int,
    flags: c_uint,
    dev: CuDevice,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    create_context("cuCtxCreate_v3", ctx, dev, || unsafe {
        real::cuCtxCreate_v3(ctx, params, num_params, flags, dev)
    })
}

/// The guarded `cuCtxCreate_v4`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxCreate_v4`.
pub unsafe fn cuCtxCreate_v4(
    ctx: *mut Handle,
    params: *mut c_void,
    flags: c_uint,
    dev: CuDevice,
) -> CuResult {
    // SAFETY: arguments passed unchanged.
    create_context("cuCtxCreate_v4", ctx, dev, || unsafe {
        real::cuCtxCreate_v4(ctx, params, flags, dev)
    })
}

/// A created context is destroyed: its own charge and everything it owned are released.
fn destroy_context(ctx: Handle, call: impl FnOnce() -> CuResult) -> CuResult {
    let process = guarded_process().ok();
    let owned = process.map_or_else(Vec::new, |p| p.tables().take_context(ctx as usize));
    let result = free(Key::Context(ctx as usize), false, call);
    context_gone(process, owned, None, result)
}

/// After the driver's answer to a call that may have destroyed a context: on success, forgets
/// every cached context device and releases `own` (the context's own charge) and what the
/// context `owned`; on failure, puts `owned` back.
fn context_gone(
    process: Option<&Process>,
    owned: Vec<(Key, Entry)>,
    own: Option<Charge>,
    result: CuResult,
) -> CuResult {
    if result.is_success() {
        current::forget_contexts();
    }
    let Some(process) = process else {
        return result;
    };
    if !result.is_success() {
        process.tables().put_back(owned);
        return result;
    }
    let charges = own
        .into_iter()
        .chain(owned.into_iter().map(|(_, entry)| entry.charge))
        .collect();
    release_all(process, charges);
    result
}

/// Releases every charge of `charges`.
fn release_all(process: &Process, charges: Vec<Charge>) {
    for charge in charges {
        process.release(Some(charge));
    }
}

/// The guarded `cuCtxDestroy`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxDestroy`.
pub unsafe fn cuCtxDestroy(ctx: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    destroy_context(ctx, || unsafe { real::cuCtxDestroy(ctx) })
}

/// The guarded `cuCtxDestroy_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuCtxDestroy_v2`.
pub unsafe fn cuCtxDestroy_v2(ctx: Handle) -> CuResult {
    // SAFETY: arguments passed unchanged.
    destroy_context(ctx, || unsafe { real::cuCtxDestroy_v2(ctx) })
}

/// The guarded `cuDevicePrimaryCtxRetain`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxRetain`.
pub unsafe fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CuDevice) -> CuResult {
    // SAFETY: the caller's arguments, passed on unchanged.
    context_made(unsafe { retain_primary(ctx, dev) })
}

/// The body of [`cuDevicePrimaryCtxRetain`]: the context's memory is charged at the first retain.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxRetain`.
unsafe fn retain_primary(ctx: *mut Handle, dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    let call = || unsafe { real::cuDevicePrimaryCtxRetain(ctx, dev) };
    let process = match guarded_process() {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let device = match process.device(dev) {
        Ok(device) => device,
        Err(why) => return process.unaccounted(why, call),
    };
    let first = process.tables().primary_needs_charge(dev);
    let (charge, result) = if first {
        // The first retain creates the context: charged what it takes on the card; one that
        // took more than fits is released again.
        let undo = || {
            // SAFETY: releases the retain this call just made, once.
            let _ = unsafe { real::cuDevicePrimaryCtxRelease_v2(dev) };
        };
        match process.create_context(device, "the primary context", call, undo) {
            Ok((bytes, result)) => (
                Some(Charge {
                    device: device.id,
                    bytes,
                }),
                result,
            ),
            Err(code) => return code,
        }
    } else {
        let result = call();
        if !result.is_success() {
            return result;
        }
        (None, result)
    };
    // SAFETY: written by the driver on success.
    let handle = unsafe { read(ctx) }.map_or(0, |c| c as usize);
    let extra = process.tables().primary_retained(dev, handle, charge);
    process.release(extra);
    result
}

/// A primary-context release (`reset`: the context is gone whatever the count). When the
/// context goes, so does the memory it owned, taken out of the tables before the driver call.
fn primary_released(dev: CuDevice, reset: bool, call: impl FnOnce() -> CuResult) -> CuResult {
    let process = guarded_process().ok();
    let owned = process.map_or_else(Vec::new, |p| {
        let mut tables = p.tables();
        match tables.primary_handle_if_gone(dev, reset) {
            Some(handle) => tables.take_context(handle),
            None => Vec::new(),
        }
    });
    let result = call();
    let own = match process {
        Some(p) if result.is_success() && reset => p.tables().primary_reset(dev),
        Some(p) if result.is_success() => p.tables().primary_released(dev),
        _ => None,
    };
    context_gone(process, owned, own, result)
}

/// The guarded `cuDevicePrimaryCtxRelease`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxRelease`.
pub unsafe fn cuDevicePrimaryCtxRelease(dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    primary_released(dev, false, || unsafe {
        real::cuDevicePrimaryCtxRelease(dev)
    })
}

/// The guarded `cuDevicePrimaryCtxRelease_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxRelease_v2`.
pub unsafe fn cuDevicePrimaryCtxRelease_v2(dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    primary_released(dev, false, || unsafe {
        real::cuDevicePrimaryCtxRelease_v2(dev)
    })
}

/// The guarded `cuDevicePrimaryCtxReset`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxReset`.
pub unsafe fn cuDevicePrimaryCtxReset(dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    primary_released(dev, true, || unsafe { real::cuDevicePrimaryCtxReset(dev) })
}

/// The guarded `cuDevicePrimaryCtxReset_v2`.
///
/// # Safety
/// The caller upholds the driver's contract for `cuDevicePrimaryCtxReset_v2`.
pub unsafe fn cuDevicePrimaryCtxReset_v2(dev: CuDevice) -> CuResult {
    // SAFETY: arguments passed unchanged.
    primary_released(dev, true, || unsafe {
        real::cuDevicePrimaryCtxReset_v2(dev)
    })
}
