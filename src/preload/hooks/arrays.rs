//! Arrays and mipmapped arrays, charged the size their descriptors give ([`crate::driver::layouts`]).

use std::ffi::{c_uint, c_void};

use super::accounting::{On, allocate, free, read};
use super::hooks;
use crate::driver::layouts::{self, Array3dDescriptor, ArrayDescriptor};
use crate::functions::Handle;
use crate::process::tables::Key;

hooks! {
    cuArrayCreate_v2(array: *mut Handle, desc: *const c_void) => |call, what| {
        // SAFETY: the caller passes a CUDA_ARRAY_DESCRIPTOR.
        let Some(d) = (unsafe { read(desc.cast::<ArrayDescriptor>()) }) else {
            return call();
        };
        let bytes = layouts::array_bytes(d.width, d.height, 0, d.format, d.channels);
        // SAFETY: the caller's out-pointer, read after the driver's success.
        allocate(what, bytes, On::Current, call, || unsafe { created(array) })
    };
    cuArray3DCreate_v2(array: *mut Handle, desc: *const c_void) => |call, what| {
        // SAFETY: the caller passes a CUDA_ARRAY3D_DESCRIPTOR.
        let Some(d) = (unsafe { read(desc.cast::<Array3dDescriptor>()) }) else {
            return call();
        };
        let bytes = layouts::array_bytes(d.width, d.height, d.depth, d.format, d.channels);
        // SAFETY: the caller's out-pointer, read after the driver's success.
        allocate(what, bytes, On::Current, call, || unsafe { created(array) })
    };
    cuMipmappedArrayCreate(array: *mut Handle, desc: *const c_void, levels: c_uint) => |call, what| {
        // SAFETY: the caller passes a CUDA_ARRAY3D_DESCRIPTOR.
        let Some(d) = (unsafe { read(desc.cast::<Array3dDescriptor>()) }) else {
            return call();
        };
        let bytes = layouts::mipmapped_bytes(&d, levels);
        // SAFETY: the caller's out-pointer, read after the driver's success.
        allocate(what, bytes, On::Current, call, || unsafe { created(array) })
    };
    cuArrayDestroy(array: Handle) => |call| free(Key::Array(array as usize), false, call);
    cuMipmappedArrayDestroy(array: Handle) => |call| free(Key::Array(array as usize), false, call);
}

/// The key of the array the driver just wrote to `array`.
///
/// # Safety
/// `array` is null or the out-pointer of a creation the driver just reported successful.
unsafe fn created(array: *mut Handle) -> Option<Key> {
    // SAFETY: per the contract, null or written by the driver.
    unsafe { read(array) }.map(|a| Key::Array(a as usize))
}
