//! The few driver structures the guard reads, and the device memory they describe.
//!
//! Each mirrors a `cudarc::driver::sys` layout (checked at compile time) with plain integers where
//! the driver has enums: the caller may pass any value, and an unlisted value in a Rust enum is
//! undefined behaviour. Only the fields the guard needs are read.

use std::mem::{offset_of, size_of};

use vramguard_core::cuda::sys;

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemLocation {
    /// `CUmemLocationType` (1 = device).
    pub location_type: u32,
    /// The device ordinal when `location_type` is 1.
    pub id: i32,
}

/// `CU_MEM_LOCATION_TYPE_DEVICE`
pub const LOCATION_DEVICE: u32 = 1;

/// The head of `CUmemAllocationProp` and of `CUmemPoolProps`: both start with two enums and a
/// location.
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

const _: () = {
    assert!(offset_of!(PropsHead, location) == offset_of!(sys::CUmemAllocationProp, location));
    assert!(offset_of!(PropsHead, location) == offset_of!(sys::CUmemPoolProps, location));
    assert!(size_of::<PropsHead>() <= size_of::<sys::CUmemAllocationProp>());
    assert!(size_of::<ArrayDescriptor>() == size_of::<sys::CUDA_ARRAY_DESCRIPTOR>());
    assert!(offset_of!(ArrayDescriptor, format) == offset_of!(sys::CUDA_ARRAY_DESCRIPTOR, Format));
    assert!(size_of::<Array3dDescriptor>() == size_of::<sys::CUDA_ARRAY3D_DESCRIPTOR>());
    assert!(
        offset_of!(Array3dDescriptor, flags) == offset_of!(sys::CUDA_ARRAY3D_DESCRIPTOR, Flags)
    );
};

/// Bytes per channel of a `CUarray_format`; formats the guard does not know count as 16 bytes
/// (over-counting is safe, under-counting is not).
fn channel_bytes(format: u32) -> u64 {
    match format {
        0x01 | 0x08 => 1,
        0x02 | 0x09 | 0x10 => 2,
        0x03 | 0x0a | 0x20 => 4,
        _ => 16,
    }
}

/// Bytes of a width x height x depth array (0 dimensions count as 1), saturating.
pub fn array_bytes(width: usize, height: usize, depth: usize, format: u32, channels: u32) -> u64 {
    let element = channel_bytes(format).saturating_mul(u64::from(channels.max(1)));
    [width, height, depth]
        .iter()
        .fold(element, |total, d| total.saturating_mul((*d as u64).max(1)))
}

/// Bytes of a mipmapped array: the sum over its levels, each dimension halved per level.
pub fn mipmapped_bytes(desc: &Array3dDescriptor, levels: u32) -> u64 {
    (0..levels.clamp(1, 64)).fold(0u64, |total, level| {
        let shrink = |d: usize| if d == 0 { 0 } else { (d >> level).max(1) };
        total.saturating_add(array_bytes(
            shrink(desc.width),
            shrink(desc.height),
            shrink(desc.depth),
            desc.format,
            desc.channels,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_sizes() {
        assert_eq!(array_bytes(1024, 1024, 0, 0x20, 4), 16 << 20);
        assert_eq!(array_bytes(10, 0, 0, 0x01, 1), 10);
        assert_eq!(array_bytes(10, 10, 10, 0x10, 2), 4000);
        assert_eq!(
            array_bytes(1, 1, 1, 0x99, 1),
            16,
            "unknown formats over-count"
        );
        assert_eq!(array_bytes(usize::MAX, usize::MAX, 2, 0x20, 4), u64::MAX);
        let desc = Array3dDescriptor {
            width: 1024,
            height: 1024,
            depth: 0,
            format: 0x20,
            channels: 1,
            flags: 0,
        };
        assert_eq!(mipmapped_bytes(&desc, 2), (4 << 20) + (1 << 20));
    }
}
