//! C structures the simulated entry points read. Each mirrors a `cudarc::driver::sys` layout
//! field for field (checked at compile time) but with plain integers where the driver has enums:
//! the caller may pass any value, and an unlisted value in a Rust enum is undefined behaviour.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

use cudarc::driver::sys;

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemLocation {
    pub location_type: u32,
    pub id: i32,
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocationProp {
    pub allocation_type: u32,
    pub requested_handle_types: u32,
    pub location: MemLocation,
    pub win32_handle_metadata: *mut c_void,
    pub alloc_flags: [u8; 8],
}

/// `CUmemPoolProps`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PoolProps {
    pub allocation_type: u32,
    pub handle_types: u32,
    pub location: MemLocation,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AccessDesc {
    pub location: MemLocation,
    pub flags: u32,
}

/// `CUDA_ARRAY_DESCRIPTOR` (the `_v2` form).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArrayDescriptor {
    pub width: usize,
    pub height: usize,
    pub format: u32,
    pub channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (the `_v2` form).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Array3dDescriptor {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

/// `CUDA_ARRAY_DESCRIPTOR_v1` (legacy `cuArrayCreate`, 32-bit sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LegacyArrayDescriptor {
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR_v1` (legacy `cuArray3DCreate`, 32-bit sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LegacyArray3dDescriptor {
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<MemLocation>() == size_of::<sys::CUmemLocation>());
    assert!(offset_of!(MemLocation, id) == offset_of!(sys::CUmemLocation, id));
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
