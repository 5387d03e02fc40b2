//! What the guard asks the driver for its own bookkeeping: a card's UUID and name, the current
//! device's memory, a pool's release threshold.

use std::ffi::{c_int, c_void};

use vramguard_core::cuda::{CuDevice, CuUuid};

use super::call;
use crate::lookup::real;

/// The driver's (free, total) memory on the current context's device (`cuMemGetInfo_v2`).
pub fn memory() -> Option<(u64, u64)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both are live usizes the driver writes.
    unsafe { real::cuMemGetInfo_v2(&mut free, &mut total) }
        .is_success()
        .then_some((free as u64, total as u64))
}

/// The total memory of device `ordinal` (`cuDeviceTotalMem_v2`, the driver's real figure).
pub fn total_memory(ordinal: CuDevice) -> Option<u64> {
    let mut total = 0usize;
    // SAFETY: `total` is a live usize the driver writes.
    unsafe { real::cuDeviceTotalMem_v2(&mut total, ordinal) }
        .is_success()
        .then_some(total as u64)
}

/// The UUID of device `ordinal` (`cuDeviceGetUuid_v2`, else the first form).
pub fn uuid(ordinal: CuDevice) -> Option<CuUuid> {
    let mut uuid = CuUuid::default();
    // SAFETY: `uuid` is a live 16-byte CUuuid the driver writes.
    let found = unsafe { call::cuDeviceGetUuid_v2(&mut uuid, ordinal) }.is_success()
        // SAFETY: as above.
        || unsafe { call::cuDeviceGetUuid(&mut uuid, ordinal) }.is_success();
    found.then_some(uuid)
}

/// The name of device `ordinal` (empty if the driver does not tell).
pub fn name(ordinal: CuDevice) -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is 256 live bytes; the driver writes at most `len` including the NUL.
    let told = unsafe {
        call::cuDeviceGetName(
            buffer.as_mut_ptr().cast(),
            buffer.len() as c_int - 1,
            ordinal,
        )
    };
    if !told.is_success() {
        return String::new();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The release threshold of a pool (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`), if the driver tells.
pub fn pool_release_threshold(pool: *mut c_void) -> Option<u64> {
    const RELEASE_THRESHOLD: c_int = 4;
    let mut threshold = 0u64;
    // SAFETY: the release threshold is a cuuint64_t, written into `threshold`.
    unsafe { call::cuMemPoolGetAttribute(pool, RELEASE_THRESHOLD, (&raw mut threshold).cast()) }
        .is_success()
        .then_some(threshold)
}
