//! The exported driver entry points, declared once. The `entry_points!` list generates each
//! `#[no_mangle] extern "C"` function (its body runs inside [`crate::call`]: counted, panics
//! caught), the [`Entry`] numbering used by the per-process call counters, and each entry's name
//! and address for `cuGetProcAddress`.
//!
//! Bodies turn the caller's raw pointers into values with the small helpers below and call the
//! safe [`Driver`] methods. Every pointer is the caller's, per the driver API's contract: null is
//! rejected with `CUDA_ERROR_INVALID_VALUE`, anything else is trusted to point where the API says.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

use crate::driver::{ArrayShape, CuOutcome, DRIVER_VERSION, Driver, Kind};
use crate::procaddr::{self, Lookup};
use crate::result::CuResult;
use vramguard_core::cuda::abi::{
    AccessDesc, AllocationProp, Array3dDescriptor, ArrayDescriptor, LegacyArray3dDescriptor,
    LegacyArrayDescriptor, PoolProps,
};

/// An opaque driver handle (`CUcontext`, `CUstream`, `CUarray`, `CUmemoryPool`...).
pub type Handle = *mut c_void;

/// Writes `value` to the caller's `target`.
///
/// # Safety
/// `target` is null or valid for writing one `T`.
unsafe fn put<T>(target: *mut T, value: T) -> CuOutcome {
    if target.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: non-null, and valid for writes per this function's contract.
    unsafe { target.write(value) };
    Ok(())
}

/// Reads the caller's `source`.
///
/// # Safety
/// `source` is null or valid for reading one `T`.
unsafe fn get<T: Copy>(source: *const T) -> CuOutcome<T> {
    if source.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: non-null, and valid for reads per this function's contract.
    Ok(unsafe { source.read() })
}

/// Copies `text` into the caller's buffer of `len` bytes, NUL-terminated (truncated to fit).
///
/// # Safety
/// `buffer` is null or valid for writing `len` bytes.
unsafe fn put_string(buffer: *mut c_char, len: c_int, text: &str) -> CuOutcome {
    let len = usize::try_from(len).map_err(|_| CuResult::INVALID_VALUE)?;
    if buffer.is_null() || len == 0 {
        return Err(CuResult::INVALID_VALUE);
    }
    let bytes = text.as_bytes();
    let copied = bytes.len().min(len - 1);
    // SAFETY: `buffer` holds `len` bytes; we write `copied + 1 <= len` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), copied);
        buffer.add(copied).write(0);
    }
    Ok(())
}

fn handle(value: u64) -> Handle {
    value as usize as Handle
}

fn raw(handle: Handle) -> u64 {
    handle as usize as u64
}

/// `cuGetProcAddress` in both its forms.
///
/// # Safety
/// `symbol` is null or a NUL-terminated string; `pfn` and `status` are null or writable.
unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CuOutcome {
    if symbol.is_null() || pfn.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: non-null and NUL-terminated per the driver API.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let (address, code, outcome) = match procaddr::lookup(name, version, flags) {
        Lookup::Found(entry) => (
            entry.answer(procaddr::answer_mode()),
            procaddr::STATUS_SUCCESS,
            Ok(()),
        ),
        Lookup::VersionNotSufficient => (
            std::ptr::null_mut(),
            procaddr::STATUS_VERSION_NOT_SUFFICIENT,
            Err(CuResult::NOT_FOUND),
        ),
        Lookup::SymbolNotFound => (
            std::ptr::null_mut(),
            procaddr::STATUS_SYMBOL_NOT_FOUND,
            Err(CuResult::NOT_FOUND),
        ),
    };
    // SAFETY: `pfn` is non-null and writable per the driver API.
    unsafe { pfn.write(address) };
    if !status.is_null() {
        // SAFETY: non-null and writable per the driver API.
        unsafe { status.write(code) };
    }
    outcome
}

macro_rules! entry_points {
    ($( $(#[$meta:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) |$driver:ident| $body:block )*) => {
        /// Every exported entry point, numbered for the per-process call counters.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Entry { $($(#[$meta])* $name,)* }

        impl Entry {
            /// All entry points, in counter order.
            pub const ALL: &'static [Entry] = &[$(Entry::$name,)*];

            /// The exported symbol name.
            pub fn name(self) -> &'static str {
                match self { $(Entry::$name => stringify!($name),)* }
            }

            /// The exported function's address (what `dlsym` finds).
            pub fn address(self) -> *mut c_void {
                match self { $(Entry::$name => $name as *const () as *mut c_void,)* }
            }

            /// The address of the same entry point under no symbol ([`internal`]): what a
            /// driver's lookup may answer instead of its export.
            pub fn internal_address(self) -> *mut c_void {
                match self { $(Entry::$name => internal::$name as *const () as *mut c_void,)* }
            }

            /// What `cuGetProcAddress` answers for this entry point in the given mode.
            pub fn answer(self, mode: procaddr::AnswerMode) -> *mut c_void {
                match mode {
                    procaddr::AnswerMode::Exported => self.address(),
                    procaddr::AnswerMode::Internal => self.internal_address(),
                }
            }
        }

        /// Every entry point again, under no symbol name: `dlsym` cannot find these, and only
        /// `cuGetProcAddress` hands them out (with `SIMCUDA_PROCADDR=internal`), as a real driver
        /// may answer a lookup with an internal entry point. Same bodies; each call is also
        /// counted as made through an internal answer.
        #[allow(non_snake_case)]
        mod internal {
            use super::*;
            $(
                $(#[$meta])*
                ///
                /// # Safety
                /// Pointer arguments follow the CUDA driver API's contract for this function.
                pub(super) unsafe extern "C" fn $name($($arg: $ty),*) -> CuResult {
                    crate::call_internal(Entry::$name, |$driver: &mut Driver| -> CuOutcome { $body })
                }
            )*
        }

        $(
            $(#[$meta])*
            ///
            /// # Safety
            /// Pointer arguments follow the CUDA driver API's contract for this function.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CuResult {
                crate::call(Entry::$name, |$driver: &mut Driver| -> CuOutcome { $body })
            }
        )*
    };
}

const _: () = assert!(Entry::ALL.len() <= crate::state::INTERNAL_CALLS_COUNTER);

entry_points! {
    /// `cuInit`.
    fn cuInit(flags: c_uint) |d| { d.init(flags) }
    /// `cuDriverGetVersion`.
    fn cuDriverGetVersion(version: *mut c_int) |_d| {
        // SAFETY: per the driver API.
        unsafe { put(version, DRIVER_VERSION) }
    }
    /// `cuDeviceGetCount`.
    fn cuDeviceGetCount(count: *mut c_int) |d| {
        let value = d.device_count()?;
        // SAFETY: per the driver API.
        unsafe { put(count, value) }
    }
    /// `cuDeviceGet`.
    fn cuDeviceGet(device: *mut c_int, ordinal: c_int) |d| {
        let value = d.device_get(ordinal)?;
        // SAFETY: per the driver API.
        unsafe { put(device, value) }
    }
    /// `cuDeviceGetName`.
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) |d| {
        let value = d.device_name(dev)?;
        // SAFETY: per the driver API, `name` holds `len` bytes.
        unsafe { put_string(name, len, &value) }
    }
    /// `cuDeviceGetUuid`.
    fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: c_int) |d| {
        let value = d.device_uuid(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(uuid, value) }
    }
    /// `cuDeviceGetUuid_v2`.
    fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: c_int) |d| {
        let value = d.device_uuid(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(uuid, value) }
    }
    /// `cuDeviceTotalMem_v2`.
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) |d| {
        let value = d.device_total_mem(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(bytes, value as usize) }
    }
    /// Legacy `cuDeviceTotalMem` (32-bit size, saturated).
    fn cuDeviceTotalMem(bytes: *mut c_uint, dev: c_int) |d| {
        let value = d.device_total_mem(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(bytes, value.min(u64::from(u32::MAX)) as c_uint) }
    }
    /// `cuDeviceGetAttribute`.
    fn cuDeviceGetAttribute(value: *mut c_int, attribute: c_int, dev: c_int) |d| {
        let result = d.device_attribute(attribute, dev)?;
        // SAFETY: per the driver API.
        unsafe { put(value, result) }
    }
    /// `cuDeviceGetPCIBusId`.
    fn cuDeviceGetPCIBusId(pci: *mut c_char, len: c_int, dev: c_int) |d| {
        let value = d.device_pci_bus_id(dev)?;
        // SAFETY: per the driver API, `pci` holds `len` bytes.
        unsafe { put_string(pci, len, &value) }
    }

    /// Legacy `cuCtxCreate` (same ABI as `_v2`).
    fn cuCtxCreate(pctx: *mut Handle, flags: c_uint, dev: c_int) |d| { create_context(d, pctx, flags, dev) }
    /// `cuCtxCreate_v2`.
    fn cuCtxCreate_v2(pctx: *mut Handle, flags: c_uint, dev: c_int) |d| { create_context(d, pctx, flags, dev) }
    /// `cuCtxCreate_v3` (execution-affinity parameters accepted and ignored).
    fn cuCtxCreate_v3(pctx: *mut Handle, params: *mut c_void, num_params: c_int, flags: c_uint, dev: c_int) |d| {
        if num_params < 0 || (num_params > 0 && params.is_null()) {
            return Err(CuResult::INVALID_VALUE);
        }
        create_context(d, pctx, flags, dev)
    }
    /// `cuCtxCreate_v4` (creation parameters accepted and ignored).
    fn cuCtxCreate_v4(pctx: *mut Handle, params: *mut c_void, flags: c_uint, dev: c_int) |d| {
        let _ = params;
        create_context(d, pctx, flags, dev)
    }
    /// Legacy `cuCtxDestroy`.
    fn cuCtxDestroy(ctx: Handle) |d| { d.context_destroy(raw(ctx)) }
    /// `cuCtxDestroy_v2`.
    fn cuCtxDestroy_v2(ctx: Handle) |d| { d.context_destroy(raw(ctx)) }
    /// `cuCtxGetCurrent`.
    fn cuCtxGetCurrent(pctx: *mut Handle) |d| {
        let value = d.current()?;
        // SAFETY: per the driver API.
        unsafe { put(pctx, handle(value)) }
    }
    /// `cuCtxSetCurrent`.
    fn cuCtxSetCurrent(ctx: Handle) |d| { d.set_current(raw(ctx)) }
    /// Legacy `cuCtxPushCurrent`.
    fn cuCtxPushCurrent(ctx: Handle) |d| { d.push_current(raw(ctx)) }
    /// `cuCtxPushCurrent_v2`.
    fn cuCtxPushCurrent_v2(ctx: Handle) |d| { d.push_current(raw(ctx)) }
    /// Legacy `cuCtxPopCurrent`.
    fn cuCtxPopCurrent(pctx: *mut Handle) |d| { pop_context(d, pctx) }
    /// `cuCtxPopCurrent_v2`.
    fn cuCtxPopCurrent_v2(pctx: *mut Handle) |d| { pop_context(d, pctx) }
    /// `cuCtxGetDevice`.
    fn cuCtxGetDevice(device: *mut c_int) |d| {
        let value = d.context_device()?;
        // SAFETY: per the driver API.
        unsafe { put(device, value) }
    }
    /// `cuCtxSynchronize`.
    fn cuCtxSynchronize() |d| { d.context_synchronize() }
    /// `cuDevicePrimaryCtxRetain`.
    fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: c_int) |d| {
        if pctx.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.primary_retain(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(pctx, handle(value)) }
    }
    /// Legacy `cuDevicePrimaryCtxRelease`.
    fn cuDevicePrimaryCtxRelease(dev: c_int) |d| { d.primary_release(dev) }
    /// `cuDevicePrimaryCtxRelease_v2`.
    fn cuDevicePrimaryCtxRelease_v2(dev: c_int) |d| { d.primary_release(dev) }
    /// Legacy `cuDevicePrimaryCtxReset`.
    fn cuDevicePrimaryCtxReset(dev: c_int) |d| { d.primary_reset(dev) }
    /// `cuDevicePrimaryCtxReset_v2`.
    fn cuDevicePrimaryCtxReset_v2(dev: c_int) |d| { d.primary_reset(dev) }
    /// `cuDevicePrimaryCtxGetState`.
    fn cuDevicePrimaryCtxGetState(dev: c_int, flags: *mut c_uint, active: *mut c_int) |d| {
        let (value, is_active) = d.primary_state(dev)?;
        // SAFETY: per the driver API.
        unsafe {
            put(flags, value)?;
            put(active, c_int::from(is_active))
        }
    }
    /// Legacy `cuDevicePrimaryCtxSetFlags` (refused while the context is active).
    fn cuDevicePrimaryCtxSetFlags(dev: c_int, flags: c_uint) |d| { d.primary_set_flags(dev, flags, true) }
    /// `cuDevicePrimaryCtxSetFlags_v2`.
    fn cuDevicePrimaryCtxSetFlags_v2(dev: c_int, flags: c_uint) |d| { d.primary_set_flags(dev, flags, false) }

    /// `cuMemGetInfo_v2`.
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) |d| {
        let (free_bytes, total_bytes) = d.mem_get_info()?;
        // SAFETY: per the driver API.
        unsafe {
            put(free, free_bytes as usize)?;
            put(total, total_bytes as usize)
        }
    }
    /// Legacy `cuMemGetInfo` (32-bit sizes, saturated).
    fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) |d| {
        let (free_bytes, total_bytes) = d.mem_get_info()?;
        let clamp = |v: u64| v.min(u64::from(u32::MAX)) as c_uint;
        // SAFETY: per the driver API.
        unsafe {
            put(free, clamp(free_bytes))?;
            put(total, clamp(total_bytes))
        }
    }
    /// `cuMemAlloc_v2`.
    fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) |d| {
        if dptr.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let pointer = d.mem_alloc(bytes as u64)?;
        // SAFETY: per the driver API.
        unsafe { put(dptr, pointer) }
    }
    /// Legacy `cuMemAlloc` (32-bit pointer and size).
    fn cuMemAlloc(dptr: *mut u32, bytes: c_uint) |d| {
        if dptr.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let pointer = d.mem_alloc_legacy(u64::from(bytes))?;
        // SAFETY: per the driver API.
        unsafe { put(dptr, pointer) }
    }
    /// `cuMemAllocPitch_v2`.
    fn cuMemAllocPitch_v2(dptr: *mut u64, pitch: *mut usize, width: usize, height: usize, element: c_uint) |d| {
        if dptr.is_null() || pitch.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let (pointer, row) = d.mem_alloc_pitch(width as u64, height as u64, element, false)?;
        // SAFETY: per the driver API.
        unsafe {
            put(dptr, pointer)?;
            put(pitch, row as usize)
        }
    }
    /// Legacy `cuMemAllocPitch` (32-bit pointer and sizes).
    fn cuMemAllocPitch(dptr: *mut u32, pitch: *mut c_uint, width: c_uint, height: c_uint, element: c_uint) |d| {
        if dptr.is_null() || pitch.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let (pointer, row) = d.mem_alloc_pitch(u64::from(width), u64::from(height), element, true)?;
        // SAFETY: per the driver API.
        unsafe {
            put(dptr, pointer as u32)?;
            put(pitch, row as c_uint)
        }
    }
    /// `cuMemAllocManaged`.
    fn cuMemAllocManaged(dptr: *mut u64, bytes: usize, flags: c_uint) |d| {
        if dptr.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let pointer = d.mem_alloc_managed(bytes as u64, flags)?;
        // SAFETY: per the driver API.
        unsafe { put(dptr, pointer) }
    }
    /// `cuMemFree_v2`.
    fn cuMemFree_v2(dptr: u64) |d| { d.mem_free(dptr, false) }
    /// Legacy `cuMemFree` (32-bit pointer).
    fn cuMemFree(dptr: u32) |d| { d.mem_free(u64::from(dptr), true) }

    /// `cuStreamCreate`.
    fn cuStreamCreate(stream: *mut Handle, flags: c_uint) |d| {
        if stream.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.stream_create(flags)?;
        // SAFETY: per the driver API.
        unsafe { put(stream, handle(value)) }
    }
    /// Legacy `cuStreamDestroy`.
    fn cuStreamDestroy(stream: Handle) |d| { d.stream_destroy(raw(stream)) }
    /// `cuStreamDestroy_v2`.
    fn cuStreamDestroy_v2(stream: Handle) |d| { d.stream_destroy(raw(stream)) }
    /// `cuStreamSynchronize`.
    fn cuStreamSynchronize(stream: Handle) |d| { d.stream_synchronize(raw(stream)) }
    /// `cuStreamSynchronize_ptsz`.
    fn cuStreamSynchronize_ptsz(stream: Handle) |d| { d.stream_synchronize(raw(stream)) }
    /// `cuMemAllocAsync`.
    fn cuMemAllocAsync(dptr: *mut u64, bytes: usize, stream: Handle) |d| { alloc_async(d, dptr, bytes, None, stream) }
    /// `cuMemAllocAsync_ptsz`.
    fn cuMemAllocAsync_ptsz(dptr: *mut u64, bytes: usize, stream: Handle) |d| { alloc_async(d, dptr, bytes, None, stream) }
    /// `cuMemFreeAsync`.
    fn cuMemFreeAsync(dptr: u64, stream: Handle) |d| { d.mem_free_async(dptr, raw(stream)) }
    /// `cuMemFreeAsync_ptsz`.
    fn cuMemFreeAsync_ptsz(dptr: u64, stream: Handle) |d| { d.mem_free_async(dptr, raw(stream)) }
    /// `cuMemAllocFromPoolAsync`.
    fn cuMemAllocFromPoolAsync(dptr: *mut u64, bytes: usize, pool: Handle, stream: Handle) |d| {
        alloc_async(d, dptr, bytes, Some(raw(pool)), stream)
    }
    /// `cuMemAllocFromPoolAsync_ptsz`.
    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut u64, bytes: usize, pool: Handle, stream: Handle) |d| {
        alloc_async(d, dptr, bytes, Some(raw(pool)), stream)
    }
    /// `cuDeviceGetDefaultMemPool`.
    fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: c_int) |d| {
        if pool.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.device_default_pool(dev)?;
        // SAFETY: per the driver API.
        unsafe { put(pool, handle(value)) }
    }
    /// `cuMemPoolCreate`.
    fn cuMemPoolCreate(pool: *mut Handle, props: *const PoolProps) |d| {
        // SAFETY: per the driver API.
        let props = unsafe { get(props) }?;
        if pool.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.pool_create(props.allocation_type, props.location.location_type, props.location.id)?;
        // SAFETY: per the driver API.
        unsafe { put(pool, handle(value)) }
    }
    /// `cuMemPoolDestroy`.
    fn cuMemPoolDestroy(pool: Handle) |d| { d.pool_destroy(raw(pool)) }
    /// `cuMemPoolTrimTo`.
    fn cuMemPoolTrimTo(pool: Handle, keep: usize) |d| { d.pool_trim_to(raw(pool), keep as u64) }
    /// `cuMemPoolSetAttribute`: the release threshold (4) is kept; reuse flags (1-3) are accepted.
    fn cuMemPoolSetAttribute(pool: Handle, attribute: c_int, value: *mut c_void) |d| {
        match attribute {
            1..=3 => d.pool_usage(raw(pool)).map(|_| ()),
            4 => {
                // SAFETY: per the driver API, attribute 4 takes a cuuint64_t.
                let threshold = unsafe { get(value.cast::<u64>()) }?;
                d.pool_release_threshold(raw(pool), Some(threshold)).map(|_| ())
            }
            _ => Err(CuResult::INVALID_VALUE),
        }
    }
    /// `cuMemPoolGetAttribute`: reuse flags (1-3), release threshold (4), reserved (5, 6) and used (7, 8) bytes.
    fn cuMemPoolGetAttribute(pool: Handle, attribute: c_int, value: *mut c_void) |d| {
        let (reserved, in_use) = d.pool_usage(raw(pool))?;
        let threshold = d.pool_release_threshold(raw(pool), None)?;
        // SAFETY: per the driver API, attributes 1-3 take an int, the others a cuuint64_t.
        unsafe {
            match attribute {
                1..=3 => put(value.cast::<c_int>(), 1),
                4 => put(value.cast::<u64>(), threshold),
                5 | 6 => put(value.cast::<u64>(), reserved),
                7 | 8 => put(value.cast::<u64>(), in_use),
                _ => Err(CuResult::INVALID_VALUE),
            }
        }
    }

    /// `cuMemGetAllocationGranularity`.
    fn cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const AllocationProp, option: c_uint) |d| {
        // SAFETY: per the driver API.
        let prop = unsafe { get(prop) }?;
        let value = d.granularity(prop.allocation_type, prop.location.location_type, prop.location.id, option)?;
        // SAFETY: per the driver API.
        unsafe { put(granularity, value as usize) }
    }
    /// `cuMemCreate`.
    fn cuMemCreate(mem: *mut u64, size: usize, prop: *const AllocationProp, flags: u64) |d| {
        // SAFETY: per the driver API.
        let prop = unsafe { get(prop) }?;
        if mem.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.mem_create(size as u64, prop.allocation_type, prop.location.location_type, prop.location.id, flags)?;
        // SAFETY: per the driver API.
        unsafe { put(mem, value) }
    }
    /// `cuMemRelease`.
    fn cuMemRelease(mem: u64) |d| { d.mem_release(mem) }
    /// `cuMemAddressReserve`.
    fn cuMemAddressReserve(ptr: *mut u64, size: usize, alignment: usize, addr: u64, flags: u64) |d| {
        let _ = addr;
        if ptr.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.address_reserve(size as u64, alignment as u64, flags)?;
        // SAFETY: per the driver API.
        unsafe { put(ptr, value) }
    }
    /// `cuMemAddressFree`.
    fn cuMemAddressFree(ptr: u64, size: usize) |d| { d.address_free(ptr, size as u64) }
    /// `cuMemMap`.
    fn cuMemMap(ptr: u64, size: usize, offset: usize, mem: u64, flags: u64) |d| {
        d.mem_map(ptr, size as u64, offset as u64, mem, flags)
    }
    /// `cuMemUnmap`.
    fn cuMemUnmap(ptr: u64, size: usize) |d| { d.mem_unmap(ptr, size as u64) }
    /// `cuMemSetAccess`.
    fn cuMemSetAccess(ptr: u64, size: usize, desc: *const AccessDesc, count: usize) |d| {
        if desc.is_null() || count == 0 || count > 64 {
            return Err(CuResult::INVALID_VALUE);
        }
        // SAFETY: per the driver API, `desc` points to `count` descriptors (bounded above).
        let descriptors = unsafe { std::slice::from_raw_parts(desc, count) };
        let list: Vec<(u32, i32, u32)> = descriptors.iter().map(|x| (x.location.location_type, x.location.id, x.flags)).collect();
        d.mem_set_access(ptr, size as u64, &list)
    }
    /// `cuMemRetainAllocationHandle`.
    fn cuMemRetainAllocationHandle(mem: *mut u64, addr: *mut c_void) |d| {
        if mem.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.retain_allocation_handle(addr as usize as u64)?;
        // SAFETY: per the driver API.
        unsafe { put(mem, value) }
    }

    /// `cuArrayCreate_v2`.
    fn cuArrayCreate_v2(array: *mut Handle, desc: *const ArrayDescriptor) |d| {
        // SAFETY: per the driver API.
        unsafe { create_array(d, array, desc) }
    }
    /// Legacy `cuArrayCreate` (32-bit descriptor).
    fn cuArrayCreate(array: *mut Handle, desc: *const LegacyArrayDescriptor) |d| {
        // SAFETY: per the driver API.
        unsafe { create_array(d, array, desc) }
    }
    /// `cuArray3DCreate_v2`.
    fn cuArray3DCreate_v2(array: *mut Handle, desc: *const Array3dDescriptor) |d| {
        // SAFETY: per the driver API.
        unsafe { create_array(d, array, desc) }
    }
    /// Legacy `cuArray3DCreate` (32-bit descriptor).
    fn cuArray3DCreate(array: *mut Handle, desc: *const LegacyArray3dDescriptor) |d| {
        // SAFETY: per the driver API.
        unsafe { create_array(d, array, desc) }
    }
    /// `cuArrayDestroy`.
    fn cuArrayDestroy(array: Handle) |d| { d.array_destroy(raw(array), Kind::Array) }
    /// `cuMipmappedArrayCreate`.
    fn cuMipmappedArrayCreate(array: *mut Handle, desc: *const Array3dDescriptor, levels: c_uint) |d| {
        // SAFETY: per the driver API.
        let desc = unsafe { get(desc) }?;
        if array.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let value = d.mipmapped_create(desc.into(), levels)?;
        // SAFETY: per the driver API.
        unsafe { put(array, handle(value)) }
    }
    /// `cuMipmappedArrayDestroy`.
    fn cuMipmappedArrayDestroy(array: Handle) |d| { d.array_destroy(raw(array), Kind::Mipmapped) }

    /// `cuGetErrorName`.
    fn cuGetErrorName(error: CuResult, text: *mut *const c_char) |_d| { describe_error(error, text, true) }
    /// `cuGetErrorString`.
    fn cuGetErrorString(error: CuResult, text: *mut *const c_char) |_d| { describe_error(error, text, false) }
    /// `cuGetExportTable`: the simulator has no private tables; every id gets `CUDA_ERROR_NOT_SUPPORTED`.
    fn cuGetExportTable(table: *mut *const c_void, id: *const [u8; 16]) |_d| {
        if table.is_null() || id.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        // SAFETY: per the driver API.
        unsafe { put(table, std::ptr::null()) }?;
        Err(CuResult::NOT_SUPPORTED)
    }
    /// `cuGetProcAddress` (CUDA 11.3 to 11.8 form, no status).
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) |_d| {
        // SAFETY: per the driver API.
        unsafe { get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut()) }
    }
    /// `cuGetProcAddress_v2` (CUDA 12 form, with the symbol status).
    fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) |_d| {
        // SAFETY: per the driver API.
        unsafe { get_proc_address(symbol, pfn, version, flags, status) }
    }
}

fn create_context(d: &mut Driver, pctx: *mut Handle, flags: c_uint, dev: c_int) -> CuOutcome {
    if pctx.is_null() || flags & !0xff != 0 {
        return Err(CuResult::INVALID_VALUE);
    }
    let value = d.context_create(dev)?;
    // SAFETY: non-null; the caller passes a writable CUcontext per the driver API.
    unsafe { put(pctx, handle(value)) }
}

fn pop_context(d: &mut Driver, pctx: *mut Handle) -> CuOutcome {
    let value = d.pop_current()?;
    if pctx.is_null() {
        return Ok(());
    }
    // SAFETY: non-null; the caller passes a writable CUcontext per the driver API.
    unsafe { put(pctx, handle(value)) }
}

fn alloc_async(
    d: &mut Driver,
    dptr: *mut u64,
    bytes: usize,
    pool: Option<u64>,
    stream: Handle,
) -> CuOutcome {
    if dptr.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let pointer = d.mem_alloc_async(bytes as u64, raw(stream), pool)?;
    // SAFETY: non-null; the caller passes a writable CUdeviceptr per the driver API.
    unsafe { put(dptr, pointer) }
}

/// Creates an array from a descriptor of any of its forms.
///
/// # Safety
/// `desc` is null or valid for reading one `D`; `array` is null or writable.
unsafe fn create_array<D: Copy + Into<ArrayShape>>(
    d: &mut Driver,
    array: *mut Handle,
    desc: *const D,
) -> CuOutcome {
    // SAFETY: per this function's contract.
    let shape = unsafe { get(desc) }?.into();
    if array.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let value = d.array_create(shape)?;
    // SAFETY: non-null; the caller passes a writable CUarray per the driver API.
    unsafe { put(array, handle(value)) }
}

fn describe_error(error: CuResult, text: *mut *const c_char, name: bool) -> CuOutcome {
    if text.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let found = error
        .describe()
        .map(|(n, t)| if name { n.as_ptr() } else { t.as_ptr() });
    // SAFETY: non-null; the caller passes a writable `const char*` per the driver API.
    unsafe { put(text, found.unwrap_or(std::ptr::null())) }?;
    found.map(|_| ()).ok_or(CuResult::INVALID_VALUE)
}
