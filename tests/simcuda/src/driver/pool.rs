//! Streams and memory pools: stream-ordered allocation keeps freed blocks in their pool until
//! a synchronisation, a trim, or the pool's destruction gives them back to the card.

use super::{Context, Kind, Pool, STREAM_LEGACY, STREAM_PER_THREAD};
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

impl Driver {
    pub(super) fn check_stream(&self, stream: u64) -> CuOutcome<Context> {
        let context = self.current_context()?;
        if stream == 0
            || stream == STREAM_LEGACY
            || stream == STREAM_PER_THREAD
            || self.streams.contains_key(&stream)
        {
            Ok(context)
        } else {
            Err(CuResult::INVALID_HANDLE)
        }
    }

    /// `cuStreamCreate`.
    pub fn stream_create(&mut self, flags: u32) -> CuOutcome<u64> {
        let context = self.current_context()?;
        if flags & !1 != 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let handle = self.handle();
        self.streams.insert(handle, context.ordinal);
        Ok(handle)
    }

    /// `cuStreamDestroy`.
    pub fn stream_destroy(&mut self, stream: u64) -> CuOutcome {
        self.current_context()?;
        self.streams
            .remove(&stream)
            .map(|_| ())
            .ok_or(CuResult::INVALID_HANDLE)
    }

    /// `cuStreamSynchronize`: completes pending frees; pools release down to their threshold.
    pub fn stream_synchronize(&mut self, stream: u64) -> CuOutcome {
        let context = self.check_stream(stream)?;
        self.settle_pools(Some(context.machine));
        Ok(())
    }

    /// Pools on `machine` (or all) give back what they hold beyond their release threshold.
    pub(super) fn settle_pools(&mut self, machine: Option<usize>) {
        let handles: Vec<u64> = self
            .pools
            .iter()
            .filter(|(_, p)| machine.is_none_or(|m| p.machine == m))
            .map(|(h, _)| *h)
            .collect();
        for handle in handles {
            let threshold = self.pools[&handle].release_threshold;
            self.trim_pool(handle, threshold);
        }
    }

    pub(super) fn trim_pool(&mut self, handle: u64, keep: u64) {
        let Some(pool) = self.pools.get_mut(&handle) else {
            return;
        };
        let idle = pool.reserved - pool.in_use;
        let release = idle.saturating_sub(keep);
        if release == 0 {
            return;
        }
        pool.reserved -= release;
        let machine = pool.machine;
        self.uncharge(machine, release);
    }

    pub(super) fn return_to_pool(&mut self, handle: u64, bytes: u64) {
        if let Some(pool) = self.pools.get_mut(&handle) {
            pool.in_use = pool.in_use.saturating_sub(bytes);
        }
    }

    pub(super) fn default_pool(&mut self, ordinal: usize, machine: usize) -> u64 {
        if let Some(handle) = self.default_pools.get(&ordinal) {
            return *handle;
        }
        let handle = self.new_pool(machine, true);
        self.default_pools.insert(ordinal, handle);
        handle
    }

    /// An empty pool on `machine` (release threshold 0, the driver's default).
    fn new_pool(&mut self, machine: usize, is_default: bool) -> u64 {
        let handle = self.handle();
        self.pools.insert(
            handle,
            Pool {
                machine,
                reserved: 0,
                in_use: 0,
                release_threshold: 0,
                is_default,
            },
        );
        handle
    }

    /// The pool `handle` (`CUDA_ERROR_INVALID_VALUE` when unknown).
    fn pool(&self, handle: u64) -> CuOutcome<Pool> {
        self.pools
            .get(&handle)
            .copied()
            .ok_or(CuResult::INVALID_VALUE)
    }

    /// `cuDeviceGetDefaultMemPool`.
    pub fn device_default_pool(&mut self, device: i32) -> CuOutcome<u64> {
        let machine = self.machine(device)?;
        Ok(self.default_pool(device as usize, machine))
    }

    /// `cuMemPoolCreate` on a device location (`location_type` 1) of ordinal `device`.
    pub fn pool_create(
        &mut self,
        allocation_type: u32,
        location_type: u32,
        device: i32,
    ) -> CuOutcome<u64> {
        let machine = self.check_device_memory(
            allocation_type,
            location_type,
            device,
            CuResult::INVALID_VALUE,
        )?;
        Ok(self.new_pool(machine, false))
    }

    /// `cuMemPoolDestroy`: everything the pool holds goes back to the card.
    pub fn pool_destroy(&mut self, handle: u64) -> CuOutcome {
        self.require_init()?;
        let pool = self.pool(handle)?;
        if pool.is_default {
            return Err(CuResult::INVALID_VALUE);
        }
        self.pools.remove(&handle);
        self.allocations
            .retain(|_, a| a.kind != Kind::Pooled(handle));
        self.uncharge(pool.machine, pool.reserved);
        Ok(())
    }

    /// `cuMemPoolTrimTo`.
    pub fn pool_trim_to(&mut self, handle: u64, keep: u64) -> CuOutcome {
        self.require_init()?;
        if !self.pools.contains_key(&handle) {
            return Err(CuResult::INVALID_VALUE);
        }
        self.trim_pool(handle, keep);
        Ok(())
    }

    /// `cuMemPoolSetAttribute` / `GetAttribute` for the release threshold (attribute 4).
    pub fn pool_release_threshold(&mut self, handle: u64, set: Option<u64>) -> CuOutcome<u64> {
        self.require_init()?;
        let pool = self.pools.get_mut(&handle).ok_or(CuResult::INVALID_VALUE)?;
        if let Some(value) = set {
            pool.release_threshold = value;
        }
        Ok(pool.release_threshold)
    }

    /// (reserved, in use) bytes of a pool.
    pub fn pool_usage(&self, handle: u64) -> CuOutcome<(u64, u64)> {
        self.require_init()?;
        self.pools
            .get(&handle)
            .map(|p| (p.reserved, p.in_use))
            .ok_or(CuResult::INVALID_VALUE)
    }

    /// `cuMemAllocAsync` (`pool` None: the device's default pool) and `cuMemAllocFromPoolAsync`.
    pub fn mem_alloc_async(
        &mut self,
        bytes: u64,
        stream: u64,
        pool: Option<u64>,
    ) -> CuOutcome<u64> {
        let context = self.check_stream(stream)?;
        if bytes == 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let handle = match pool {
            Some(handle) => handle,
            None => self.default_pool(context.ordinal, context.machine),
        };
        let pool = self.pool(handle)?;
        let idle = pool.reserved - pool.in_use;
        let grow = bytes.saturating_sub(idle);
        if grow > 0 {
            self.charge(pool.machine, grow)?;
        }
        if let Some(pool) = self.pools.get_mut(&handle) {
            pool.reserved += grow;
            pool.in_use += bytes;
        }
        let pointer = self.address(bytes, 512);
        self.track(pointer, pool.machine, bytes, Kind::Pooled(handle), None);
        Ok(pointer)
    }

    /// `cuMemFreeAsync`: pooled memory goes back to its pool; other linear memory is freed.
    pub fn mem_free_async(&mut self, pointer: u64, stream: u64) -> CuOutcome {
        self.check_stream(stream)?;
        let allocation = self.allocation(pointer)?;
        match allocation.kind {
            Kind::Pooled(pool) => {
                self.allocations.remove(&pointer);
                self.return_to_pool(pool, allocation.bytes);
                Ok(())
            }
            Kind::Linear => self.mem_free(pointer, false),
            _ => Err(CuResult::INVALID_VALUE),
        }
    }
}
