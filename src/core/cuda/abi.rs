//! `#[repr(C)]` mirrors of the driver structures that callers pass by pointer, shared by the
//! preload (which reads them to size a request) and the simulated driver (which serves them).
//!
//! Each mirrors a `cudarc::driver::sys` layout (checked at compile time) with plain integers where
//! the driver has enums: a caller may pass any value, and an unlisted value in a Rust enum is
//! undefined behaviour.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

use super::sys;

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemLocation {
    /// `CUmemLocationType` ([`LOCATION_DEVICE`] = a device).
    pub location_type: u32,
    /// The device ordinal when `location_type` is [`LOCATION_DEVICE`].
    pub id: i32,
}

/// `CU_MEM_LOCATION_TYPE_DEVICE`
pub const LOCATION_DEVICE: u32 = 1;

/// The head of `CUmemAllocationProp` and of `CUmemPoolProps`: both start with two enums and a
/// location, so a reader that only needs the location can read this much of either.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PropsHead {
    /// `CUmemAllocationType`
    pub allocation_type: u32,
    /// requested / supported handle types
    pub handle_types: u32,
    /// where the memory lives
    pub location: MemLocation,
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocationProp {
    /// `CUmemAllocationType` (1 = pinned device memory)
    pub allocation_type: u32,
    /// `CUmemAllocationHandleType` flags
    pub requested_handle_types: u32,
    /// where the memory lives
    pub location: MemLocation,
    /// Windows only
    pub win32_handle_metadata: *mut c_void,
    /// `allocFlags` (compression, GPUDirect RDMA, usage, reserved)
    pub alloc_flags: [u8; 8],
}

/// `CUmemPoolProps`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PoolProps {
    /// `CUmemAllocationType` (1 = pinned device memory)
    pub allocation_type: u32,
    /// `CUmemAllocationHandleType` flags
    pub handle_types: u32,
    /// where the pool's memory lives
    pub location: MemLocation,
    /// Windows only
    pub win32_security_attributes: *mut c_void,
    /// the pool's maximum size (0: the device's)
    pub max_size: usize,
    /// `CUmemPoolProps::usage`
    pub usage: u16,
    /// reserved, zero
    pub reserved: [u8; 54],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AccessDesc {
    /// the location granted access
    pub location: MemLocation,
    /// `CUmemAccess_flags`
    pub flags: u32,
}

/// `CUDA_ARRAY_DESCRIPTOR` (the `_v2` form).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArrayDescriptor {
    /// width in elements
    pub width: usize,
    /// height in elements (0 for 1D)
    pub height: usize,
    /// `CUarray_format`
    pub format: u32,
    /// channels per element
    pub channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (the `_v2` form).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Array3dDescriptor {
    /// width in elements
    pub width: usize,
    /// height in elements
    pub height: usize,
    /// depth in elements
    pub depth: usize,
    /// `CUarray_format`
    pub format: u32,
    /// channels per element
    pub channels: u32,
    /// `CUDA_ARRAY3D_*` flags
    pub flags: u32,
}

/// `CUDA_ARRAY_DESCRIPTOR_v1` (legacy `cuArrayCreate`, 32-bit sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LegacyArrayDescriptor {
    /// width in elements
    pub width: u32,
    /// height in elements (0 for 1D)
    pub height: u32,
    /// `CUarray_format`
    pub format: u32,
    /// channels per element
    pub channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR_v1` (legacy `cuArray3DCreate`, 32-bit sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LegacyArray3dDescriptor {
    /// width in elements
    pub width: u32,
    /// height in elements
    pub height: u32,
    /// depth in elements
    pub depth: u32,
    /// `CUarray_format`
    pub format: u32,
    /// channels per element
    pub channels: u32,
    /// `CUDA_ARRAY3D_*` flags
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<MemLocation>() == size_of::<sys::CUmemLocation>());
    assert!(offset_of!(MemLocation, id) == offset_of!(sys::CUmemLocation, id));
    assert!(offset_of!(PropsHead, location) == offset_of!(sys::CUmemAllocationProp, location));
    assert!(offset_of!(PropsHead, location) == offset_of!(sys::CUmemPoolProps, location));
    assert!(size_of::<PropsHead>() <= size_of::<sys::CUmemAllocationProp>());
    assert!(size_of::<PropsHead>() <= size_of::<sys::CUmemPoolProps>());
    assert!(size_of::<AllocationProp>() == size_of::<sys::CUmemAllocationProp>());
    assert!(offset_of!(AllocationProp, location) == offset_of!(sys::CUmemAllocationProp, location));
    assert!(
        offset_of!(AllocationProp, alloc_flags) == offset_of!(sys::CUmemAllocationProp, allocFlags)
    );
    assert!(size_of::<PoolProps>() == size_of::<sys::CUmemPoolProps>());
    assert!(offset_of!(PoolProps, location) == offset_of!(sys::CUmemPoolProps, location));
    assert!(offset_of!(PoolProps, max_size) == offset_of!(sys::CUmemPoolProps, maxSize));
    assert!(size_of::<AccessDesc>() == size_of::<sys::CUmemAccessDesc>());
    assert!(offset_of!(AccessDesc, flags) == offset_of!(sys::CUmemAccessDesc, flags));
    assert!(size_of::<ArrayDescriptor>() == size_of::<sys::CUDA_ARRAY_DESCRIPTOR>());
    assert!(offset_of!(ArrayDescriptor, format) == offset_of!(sys::CUDA_ARRAY_DESCRIPTOR, Format));
    assert!(
        offset_of!(ArrayDescriptor, channels)
            == offset_of!(sys::CUDA_ARRAY_DESCRIPTOR, NumChannels)
    );
    assert!(size_of::<Array3dDescriptor>() == size_of::<sys::CUDA_ARRAY3D_DESCRIPTOR>());
    assert!(
        offset_of!(Array3dDescriptor, format) == offset_of!(sys::CUDA_ARRAY3D_DESCRIPTOR, Format)
    );
    assert!(
        offset_of!(Array3dDescriptor, flags) == offset_of!(sys::CUDA_ARRAY3D_DESCRIPTOR, Flags)
    );
    assert!(size_of::<LegacyArrayDescriptor>() == 16);
    assert!(size_of::<LegacyArray3dDescriptor>() == 24);
};
