//! The virtual memory API: physical handles charged at `cuMemCreate`, address reservations,
//! mappings, access, and handles returned to the card once released and unmapped.

use super::{GRANULARITY, Mapping, Physical};
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

impl Driver {
    /// Checks properties that must describe pinned memory on a device (allocation type 1,
    /// location type 1) and returns the device's machine index; an unknown ordinal gives
    /// `bad_device` (the virtual memory API and the pool API answer it differently).
    pub(super) fn check_device_memory(
        &self,
        allocation_type: u32,
        location_type: u32,
        device: i32,
        bad_device: CuResult,
    ) -> CuOutcome<usize> {
        self.require_init()?;
        if allocation_type != 1 || location_type != 1 {
            return Err(CuResult::INVALID_VALUE);
        }
        self.machine(device).map_err(|_| bad_device)
    }

    /// `cuMemGetAllocationGranularity`.
    pub fn granularity(
        &self,
        allocation_type: u32,
        location_type: u32,
        device: i32,
        option: u32,
    ) -> CuOutcome<u64> {
        self.check_device_memory(
            allocation_type,
            location_type,
            device,
            CuResult::INVALID_DEVICE,
        )?;
        if option > 1 {
            return Err(CuResult::INVALID_VALUE);
        }
        Ok(GRANULARITY)
    }

    /// `cuMemCreate`: physical memory, charged at once.
    pub fn mem_create(
        &mut self,
        bytes: u64,
        allocation_type: u32,
        location_type: u32,
        device: i32,
        flags: u64,
    ) -> CuOutcome<u64> {
        let machine = self.check_device_memory(
            allocation_type,
            location_type,
            device,
            CuResult::INVALID_DEVICE,
        )?;
        self.current_context()?;
        if flags != 0 || bytes == 0 || !bytes.is_multiple_of(GRANULARITY) {
            return Err(CuResult::INVALID_VALUE);
        }
        self.charge(machine, bytes)?;
        let handle = self.handle();
        self.physical.insert(
            handle,
            Physical {
                machine,
                bytes,
                references: 1,
                mappings: 0,
            },
        );
        Ok(handle)
    }

    pub(super) fn drop_physical_if_unused(&mut self, handle: u64) {
        if let Some(physical) = self.physical.get(&handle).copied()
            && physical.references == 0
            && physical.mappings == 0
        {
            self.physical.remove(&handle);
            self.uncharge(physical.machine, physical.bytes);
        }
    }

    /// `cuMemRelease`: the memory goes back once released and unmapped everywhere.
    pub fn mem_release(&mut self, handle: u64) -> CuOutcome {
        self.require_init()?;
        let physical = self
            .physical
            .get_mut(&handle)
            .filter(|p| p.references > 0)
            .ok_or(CuResult::INVALID_VALUE)?;
        physical.references -= 1;
        self.drop_physical_if_unused(handle);
        Ok(())
    }

    /// `cuMemAddressReserve`.
    pub fn address_reserve(&mut self, size: u64, alignment: u64, flags: u64) -> CuOutcome<u64> {
        self.require_init()?;
        if size == 0
            || !size.is_multiple_of(GRANULARITY)
            || flags != 0
            || (alignment != 0 && !alignment.is_power_of_two())
        {
            return Err(CuResult::INVALID_VALUE);
        }
        let start = self.address(size, alignment);
        self.reservations.insert(start, size);
        Ok(start)
    }

    /// `cuMemAddressFree`: the whole reservation, once nothing is mapped in it.
    pub fn address_free(&mut self, start: u64, size: u64) -> CuOutcome {
        self.require_init()?;
        if self.reservations.get(&start) != Some(&size) {
            return Err(CuResult::INVALID_VALUE);
        }
        if self
            .mappings
            .range(start..start.saturating_add(size))
            .next()
            .is_some()
        {
            return Err(CuResult::INVALID_VALUE);
        }
        self.reservations.remove(&start);
        Ok(())
    }

    pub(super) fn inside_reservation(&self, start: u64, size: u64) -> bool {
        self.reservations
            .range(..=start)
            .next_back()
            .is_some_and(|(base, length)| {
                start
                    .checked_add(size)
                    .is_some_and(|end| end <= base + length)
            })
    }

    pub(super) fn overlaps_mapping(&self, start: u64, size: u64) -> bool {
        let end = start.saturating_add(size);
        self.mappings
            .range(..end)
            .next_back()
            .is_some_and(|(base, m)| base + m.size > start)
    }

    /// `cuMemMap`.
    pub fn mem_map(
        &mut self,
        start: u64,
        size: u64,
        offset: u64,
        handle: u64,
        flags: u64,
    ) -> CuOutcome {
        self.require_init()?;
        let physical = self
            .physical
            .get(&handle)
            .copied()
            .ok_or(CuResult::INVALID_HANDLE)?;
        if flags != 0
            || offset != 0
            || size == 0
            || !size.is_multiple_of(GRANULARITY)
            || !start.is_multiple_of(GRANULARITY)
            || size > physical.bytes
        {
            return Err(CuResult::INVALID_VALUE);
        }
        if !self.inside_reservation(start, size) || self.overlaps_mapping(start, size) {
            return Err(CuResult::INVALID_VALUE);
        }
        self.mappings.insert(
            start,
            Mapping {
                size,
                handle,
                accessible: false,
            },
        );
        if let Some(p) = self.physical.get_mut(&handle) {
            p.mappings += 1;
        }
        Ok(())
    }

    /// `cuMemUnmap`: every mapping in the range, which must cover them whole.
    pub fn mem_unmap(&mut self, start: u64, size: u64) -> CuOutcome {
        self.require_init()?;
        let end = start.checked_add(size).ok_or(CuResult::INVALID_VALUE)?;
        if size == 0
            || self
                .mappings
                .range(..start)
                .next_back()
                .is_some_and(|(b, m)| b + m.size > start)
        {
            return Err(CuResult::INVALID_VALUE);
        }
        let inside: Vec<(u64, Mapping)> = self
            .mappings
            .range(start..end)
            .map(|(b, m)| (*b, *m))
            .collect();
        if inside.is_empty() || inside.iter().any(|(b, m)| b + m.size > end) {
            return Err(CuResult::INVALID_VALUE);
        }
        for (base, mapping) in inside {
            self.mappings.remove(&base);
            if let Some(p) = self.physical.get_mut(&mapping.handle) {
                p.mappings -= 1;
            }
            self.drop_physical_if_unused(mapping.handle);
        }
        Ok(())
    }

    /// `cuMemSetAccess`: the range must be mapped; each descriptor names a visible device.
    pub fn mem_set_access(
        &mut self,
        start: u64,
        size: u64,
        descriptors: &[(u32, i32, u32)],
    ) -> CuOutcome {
        self.require_init()?;
        if descriptors.is_empty() || size == 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        for &(location_type, device, flags) in descriptors {
            if location_type != 1 || !matches!(flags, 0 | 1 | 3) {
                return Err(CuResult::INVALID_VALUE);
            }
            self.machine(device).map_err(|_| CuResult::INVALID_DEVICE)?;
        }
        let end = start.checked_add(size).ok_or(CuResult::INVALID_VALUE)?;
        let mut cursor = start;
        let covered: Vec<u64> = self
            .mappings
            .range(..end)
            .filter(|(b, m)| *b + m.size > start)
            .map(|(b, _)| *b)
            .collect();
        for base in &covered {
            if *base > cursor {
                return Err(CuResult::INVALID_VALUE);
            }
            cursor = base + self.mappings[base].size;
        }
        if cursor < end {
            return Err(CuResult::INVALID_VALUE);
        }
        for base in covered {
            if let Some(m) = self.mappings.get_mut(&base) {
                m.accessible = true;
            }
        }
        Ok(())
    }

    /// `cuMemRetainAllocationHandle`: the handle mapped at `address`, with one more reference.
    pub fn retain_allocation_handle(&mut self, address: u64) -> CuOutcome<u64> {
        self.require_init()?;
        let (_, mapping) = self
            .mappings
            .range(..=address)
            .next_back()
            .filter(|(b, m)| address < *b + m.size)
            .ok_or(CuResult::INVALID_VALUE)?;
        let handle = mapping.handle;
        let physical = self
            .physical
            .get_mut(&handle)
            .ok_or(CuResult::INVALID_VALUE)?;
        physical.references += 1;
        Ok(handle)
    }
}
