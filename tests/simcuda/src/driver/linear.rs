//! Linear device memory: `cuMemAlloc` (and its legacy 32-bit form), pitched and managed
//! allocations, `cuMemFree`, and `cuMemGetInfo`.

use super::{Allocation, Kind, PITCH_ALIGNMENT, round_up};
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

/// How stale `cuMemGetInfo` may be about processes that died without freeing their memory.
pub(super) const DEAD_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The time since boot from the kernel's coarse monotonic clock: a few nanoseconds to read
/// (the precise clock costs several times more), and precise to a few milliseconds, which is all
/// the interval above needs.
#[allow(unsafe_code)]
fn coarse_now() -> std::time::Duration {
    // SAFETY: all-zero is a valid `timespec`.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux
    // the simulator runs on (on failure `now` stays zero and the scan merely happens less often).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

impl Driver {
    /// `cuMemGetInfo_v2`: (free, total) of the current context's device, all processes counted.
    pub fn mem_get_info(&self) -> CuOutcome<(u64, u64)> {
        let context = self.current_context()?;
        let total = self.capacity(context.machine);
        // The real driver frees an exited process's memory at once; give back what dead
        // processes still hold before answering, so the figure matches (within the interval).
        let now = coarse_now();
        if self
            .last_dead_scan
            .get()
            .is_none_or(|last| now.saturating_sub(last) >= DEAD_SCAN_INTERVAL)
        {
            self.last_dead_scan.set(Some(now));
            let guard = self.state.lock();
            self.state.reclaim_dead_locked(Some(self.slot));
            drop(guard);
        }
        Ok((total.saturating_sub(self.used(context.machine)), total))
    }

    /// The live allocation at `pointer` (`CUDA_ERROR_INVALID_VALUE` when unknown or freed).
    pub(super) fn allocation(&self, pointer: u64) -> CuOutcome<Allocation> {
        self.allocations
            .get(&pointer)
            .copied()
            .ok_or(CuResult::INVALID_VALUE)
    }

    pub(super) fn track(
        &mut self,
        pointer: u64,
        machine: usize,
        bytes: u64,
        kind: Kind,
        context: Option<u64>,
    ) {
        self.allocations.insert(
            pointer,
            Allocation {
                machine,
                bytes,
                kind,
                context,
            },
        );
    }

    /// `cuMemAlloc_v2`, `cuMemAllocManaged`, and the body of `cuMemAllocPitch_v2`.
    pub fn mem_alloc(&mut self, bytes: u64) -> CuOutcome<u64> {
        let (handle, context) = self.current_handle_and_context()?;
        if bytes == 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        self.charge(context.machine, bytes)?;
        let pointer = self.address(bytes, 512);
        self.track(pointer, context.machine, bytes, Kind::Linear, Some(handle));
        Ok(pointer)
    }

    /// The legacy 32-bit `cuMemAlloc`: the pointer fits in 32 bits.
    pub fn mem_alloc_legacy(&mut self, bytes: u64) -> CuOutcome<u32> {
        let (handle, context) = self.current_handle_and_context()?;
        if bytes == 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let pointer = round_up(self.next_legacy_address, 512).ok_or(CuResult::OUT_OF_MEMORY)?;
        let end = pointer
            .checked_add(bytes)
            .filter(|end| *end <= u64::from(u32::MAX))
            .ok_or(CuResult::OUT_OF_MEMORY)?;
        self.charge(context.machine, bytes)?;
        self.next_legacy_address = end;
        self.track(pointer, context.machine, bytes, Kind::Legacy, Some(handle));
        Ok(pointer as u32)
    }

    /// `cuMemAllocPitch`: (pointer, pitch); the width rounds up to the pitch alignment.
    pub fn mem_alloc_pitch(
        &mut self,
        width: u64,
        height: u64,
        element: u32,
        legacy: bool,
    ) -> CuOutcome<(u64, u64)> {
        if width == 0 || height == 0 || !matches!(element, 4 | 8 | 16) {
            self.current_context()?;
            return Err(CuResult::INVALID_VALUE);
        }
        let pitch = round_up(width, PITCH_ALIGNMENT).ok_or(CuResult::INVALID_VALUE)?;
        let bytes = pitch.checked_mul(height).ok_or(CuResult::OUT_OF_MEMORY)?;
        let pointer = if legacy {
            u64::from(self.mem_alloc_legacy(bytes)?)
        } else {
            self.mem_alloc(bytes)?
        };
        Ok((pointer, pitch))
    }

    /// `cuMemAllocManaged`: charged to the current context's device.
    pub fn mem_alloc_managed(&mut self, bytes: u64, flags: u32) -> CuOutcome<u64> {
        if flags != 1 && flags != 2 {
            self.current_context()?;
            return Err(CuResult::INVALID_VALUE);
        }
        self.mem_alloc(bytes)
    }

    /// `cuMemFree_v2` (and the legacy form): frees linear or pooled memory.
    pub fn mem_free(&mut self, pointer: u64, legacy: bool) -> CuOutcome {
        self.current_context()?;
        if pointer == 0 {
            return Ok(());
        }
        let allocation = self.allocation(pointer)?;
        match allocation.kind {
            Kind::Legacy if !legacy => return Err(CuResult::INVALID_VALUE),
            Kind::Linear if legacy => return Err(CuResult::INVALID_VALUE),
            Kind::Array | Kind::Mipmapped => return Err(CuResult::INVALID_VALUE),
            Kind::Pooled(pool) => {
                self.allocations.remove(&pointer);
                self.return_to_pool(pool, allocation.bytes);
                self.settle_pools(Some(allocation.machine));
                return Ok(());
            }
            Kind::Linear | Kind::Legacy => {}
        }
        self.allocations.remove(&pointer);
        self.uncharge(allocation.machine, allocation.bytes);
        Ok(())
    }
}
