//! CUDA arrays and mipmapped arrays: charged by their element size and dimensions.

use vramguard_core::cuda::abi::{
    Array3dDescriptor, ArrayDescriptor, LegacyArray3dDescriptor, LegacyArrayDescriptor,
};

use super::Kind;
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

/// What an array descriptor of any form says: dimensions in elements (height 0 for 1D, depth 0
/// for 1D and 2D) and the element's format and channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayShape {
    /// Elements in a row.
    pub width: u64,
    /// Rows (0 for a 1D array).
    pub height: u64,
    /// Layers (0 for a 1D or 2D array).
    pub depth: u64,
    /// The element format (`CUarray_format`).
    pub format: u32,
    /// Channels per element (1, 2 or 4).
    pub channels: u32,
}

impl From<ArrayDescriptor> for ArrayShape {
    fn from(d: ArrayDescriptor) -> Self {
        Self::new([d.width as u64, d.height as u64, 0], d.format, d.channels)
    }
}

impl From<LegacyArrayDescriptor> for ArrayShape {
    fn from(d: LegacyArrayDescriptor) -> Self {
        Self::new([d.width.into(), d.height.into(), 0], d.format, d.channels)
    }
}

impl From<Array3dDescriptor> for ArrayShape {
    fn from(d: Array3dDescriptor) -> Self {
        let dims = [d.width as u64, d.height as u64, d.depth as u64];
        Self::new(dims, d.format, d.channels)
    }
}

impl From<LegacyArray3dDescriptor> for ArrayShape {
    fn from(d: LegacyArray3dDescriptor) -> Self {
        Self::new(
            [d.width.into(), d.height.into(), d.depth.into()],
            d.format,
            d.channels,
        )
    }
}

impl ArrayShape {
    fn new([width, height, depth]: [u64; 3], format: u32, channels: u32) -> Self {
        Self {
            width,
            height,
            depth,
            format,
            channels,
        }
    }
}

impl Driver {
    /// Bytes of one element of `format` with `channels` channels.
    pub(super) fn element_bytes(format: u32, channels: u32) -> CuOutcome<u64> {
        let size = match format {
            0x01 | 0x08 => 1,
            0x02 | 0x09 | 0x10 => 2,
            0x03 | 0x0a | 0x20 => 4,
            _ => return Err(CuResult::INVALID_VALUE),
        };
        if !matches!(channels, 1 | 2 | 4) {
            return Err(CuResult::INVALID_VALUE);
        }
        Ok(size * u64::from(channels))
    }

    pub(super) fn volume(width: u64, height: u64, depth: u64, element: u64) -> CuOutcome<u64> {
        if width == 0 || (height == 0 && depth != 0) {
            return Err(CuResult::INVALID_VALUE);
        }
        width
            .checked_mul(height.max(1))
            .and_then(|v| v.checked_mul(depth.max(1)))
            .and_then(|v| v.checked_mul(element))
            .ok_or(CuResult::OUT_OF_MEMORY)
    }

    /// Charges and tracks a new array of `shape`, whose bytes `size` computes from its element
    /// size; needs a current context.
    fn create_shaped(
        &mut self,
        shape: ArrayShape,
        kind: Kind,
        size: impl FnOnce(u64) -> CuOutcome<u64>,
    ) -> CuOutcome<u64> {
        let (handle, context) = self.current_handle_and_context()?;
        let bytes = size(Self::element_bytes(shape.format, shape.channels)?)?;
        self.charge(context.machine, bytes)?;
        let array = self.handle();
        self.track(array, context.machine, bytes, kind, Some(handle));
        Ok(array)
    }

    /// `cuArrayCreate` / `cuArray3DCreate` (depth 0 for 2D): charges width x height x depth x element.
    pub fn array_create(&mut self, shape: ArrayShape) -> CuOutcome<u64> {
        self.create_shaped(shape, Kind::Array, |element| {
            Self::volume(shape.width, shape.height, shape.depth, element)
        })
    }

    /// Bytes of a mipmapped array: the sum over its levels.
    pub fn mipmapped_bytes(
        width: u64,
        height: u64,
        depth: u64,
        element: u64,
        levels: u32,
    ) -> CuOutcome<u64> {
        let largest = width.max(height).max(depth);
        if levels == 0 || u64::from(levels) > u64::from(64 - largest.leading_zeros()) {
            return Err(CuResult::INVALID_VALUE);
        }
        let mut total = 0u64;
        for level in 0..levels {
            let shrink = |d: u64| if d == 0 { 0 } else { (d >> level).max(1) };
            total = total
                .checked_add(Self::volume(
                    shrink(width),
                    shrink(height),
                    shrink(depth),
                    element,
                )?)
                .ok_or(CuResult::OUT_OF_MEMORY)?;
        }
        Ok(total)
    }

    /// `cuMipmappedArrayCreate`.
    pub fn mipmapped_create(&mut self, shape: ArrayShape, levels: u32) -> CuOutcome<u64> {
        self.create_shaped(shape, Kind::Mipmapped, |element| {
            Self::mipmapped_bytes(shape.width, shape.height, shape.depth, element, levels)
        })
    }

    /// `cuArrayDestroy` / `cuMipmappedArrayDestroy`.
    pub fn array_destroy(&mut self, handle: u64, kind: Kind) -> CuOutcome {
        self.require_init()?;
        let allocation = self
            .allocations
            .get(&handle)
            .copied()
            .filter(|a| a.kind == kind)
            .ok_or(CuResult::INVALID_HANDLE)?;
        self.allocations.remove(&handle);
        self.uncharge(allocation.machine, allocation.bytes);
        Ok(())
    }
}
