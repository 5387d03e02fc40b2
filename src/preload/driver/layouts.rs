//! The sizes of the device memory that the driver structures the guard reads describe.
//!
//! The structures themselves are the shared `#[repr(C)]` mirrors of
//! [`vramguard_core::cuda::abi`] (plain integers where the driver has enums, layouts checked
//! against `cudarc::driver::sys` at compile time); only the fields the guard needs are read.
#![deny(unsafe_code)]

pub use vramguard_core::cuda::abi::{
    Array3dDescriptor, ArrayDescriptor, LOCATION_DEVICE, PropsHead,
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
