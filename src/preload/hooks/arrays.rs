//! Arrays and mipmapped arrays, charged the size their descriptors give ([`crate::driver::layouts`]).

use std::ffi::{c_uint, c_void};

use vramguard_core::cuda::CuResult;

use super::accounting::{On, allocate, free, read};
use super::hooks;
use crate::driver::layouts::{self, Array3dDescriptor, ArrayDescriptor};
use crate::functions::Handle;
use crate::lookup::real;
use crate::process::tables::Key;

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

hooks! {
    cuArrayDestroy(array: Handle) => |call| free(Key::Array(array as usize), false, call);
    cuMipmappedArrayDestroy(array: Handle) => |call| free(Key::Array(array as usize), false, call);
}
