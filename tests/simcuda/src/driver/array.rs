//! CUDA arrays and mipmapped arrays: charged by their element size and dimensions.

use super::Kind;
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

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

    pub(super) fn create_array_like(&mut self, bytes: u64, kind: Kind) -> CuOutcome<u64> {
        let (handle, context) = self.current_handle_and_context()?;
        self.charge(context.machine, bytes)?;
        let array = self.handle();
        self.track(array, context.machine, bytes, kind, Some(handle));
        Ok(array)
    }

    /// `cuArrayCreate` / `cuArray3DCreate` (depth 0 for 2D): charges width x height x depth x element.
    pub fn array_create(
        &mut self,
        width: u64,
        height: u64,
        depth: u64,
        format: u32,
        channels: u32,
    ) -> CuOutcome<u64> {
        self.current_context()?;
        let bytes = Self::volume(width, height, depth, Self::element_bytes(format, channels)?)?;
        self.create_array_like(bytes, Kind::Array)
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
    pub fn mipmapped_create(
        &mut self,
        width: u64,
        height: u64,
        depth: u64,
        format: u32,
        channels: u32,
        levels: u32,
    ) -> CuOutcome<u64> {
        self.current_context()?;
        let bytes = Self::mipmapped_bytes(
            width,
            height,
            depth,
            Self::element_bytes(format, channels)?,
            levels,
        )?;
        self.create_array_like(bytes, Kind::Mipmapped)
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
