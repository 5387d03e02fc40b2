//! What every hook shares: the attached process or the answer when there is none, and the three
//! patterns of an accounted call: [`allocate`] (admit, call, commit or roll back, record),
//! [`free`] (forget, call, release or restore), and [`record`] of what a call made.

use vramguard_core::cuda::{CuDevice, CuResult};
use vramguard_core::units::format_size;

use crate::driver::{self, current};
use crate::functions::Handle;
use crate::lookup::real;
use crate::process::Process;
use crate::process::devices::{Context, Device, NoDevice};
use crate::process::session::{Session, session};
use crate::process::tables::{Charge, Entry, Key, PoolKey};

/// Where an allocation lands.
#[derive(Clone, Copy)]
pub(super) enum On {
    /// The current context's device.
    Current,
    /// A given device ordinal.
    Ordinal(CuDevice),
}

/// The attached process, or `Err(code)` with the answer for a call that is not guarded
/// (`None`: pass it through).
pub(super) fn guarded_process() -> Result<&'static Process, Option<CuResult>> {
    match session() {
        Session::Guarded(process) => Ok(process),
        Session::PassThrough => Err(None),
        Session::Refuse => Err(Some(CuResult::OUT_OF_MEMORY)),
    }
}

/// The process to account `bytes` to, or `Err(code)` as [`guarded_process`] (nothing is
/// accounted for 0 bytes: `None`, pass the call through).
pub(super) fn accountable(bytes: u64) -> Result<&'static Process, Option<CuResult>> {
    let process = guarded_process()?;
    if bytes == 0 { Err(None) } else { Ok(process) }
}

fn resolve(process: &Process, on: On) -> Result<(&Device, Context), NoDevice> {
    match on {
        On::Current => process.current_device(),
        On::Ordinal(ordinal) => Ok((process.device(ordinal)?, Context::Named)),
    }
}

/// Admits `bytes`, runs the driver call, and on success records what `key` names.
pub(super) fn allocate(
    what: &str,
    bytes: u64,
    on: On,
    call: impl FnOnce() -> CuResult,
    key: impl FnOnce() -> Option<Key>,
) -> CuResult {
    let process = match accountable(bytes) {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let (device, context) = match resolve(process, on) {
        Ok(found) => found,
        Err(why) => return process.unaccounted(why, call),
    };
    let (admitted, result) = match process.call_admitted(device, context, bytes, what, call) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let charge = Charge {
        device: device.id,
        bytes: process.commit(admitted),
    };
    record(process, key(), charge, None, context);
    result
}

/// Records a held thing; a stale entry under the same key (freed behind our back, e.g. with its
/// context) is released. `context` is where the device was found: linear memory and arrays made
/// in the current context die with it.
#[inline]
pub(super) fn record(
    process: &Process,
    key: Option<Key>,
    charge: Charge,
    pool: Option<PoolKey>,
    context: Context,
) {
    crate::log::debug_with(|| {
        format!(
            "charged {} for {key:?} (pool {pool:?})",
            format_size(charge.bytes)
        )
    });
    match key {
        Some(key) => {
            // Pool and physical memory outlive contexts; everything else dies with its context.
            let context = match (pool, key, context) {
                (None, Key::Pointer(_) | Key::Array(_), Context::Current(handle)) => handle,
                _ => 0,
            };
            let stale = process.tables().insert(
                key,
                Entry {
                    charge,
                    pool,
                    context,
                },
            );
            process.release(stale.map(|e| e.charge));
        }
        // The driver reported success without a handle: nothing to free later, so no charge.
        None => process.release(Some(charge)),
    }
}

/// Forgets `key`, runs the driver's free, and releases (or, if the driver refused, restores).
/// `settle` says whether pool memory returned by this free is released at once (a synchronous
/// free is a synchronisation point for the pools).
pub(super) fn free(key: Key, settle: bool, call: impl FnOnce() -> CuResult) -> CuResult {
    let Ok(process) = guarded_process() else {
        return call();
    };
    let entry = process.tables().remove(key);
    let result = call();
    let Some(entry) = entry else { return result };
    crate::log::debug_with(|| {
        format!(
            "freed {key:?} ({}): {result}",
            format_size(entry.charge.bytes)
        )
    });
    if !result.is_success() {
        process.tables().restore(key, entry);
        return result;
    }
    match entry.pool {
        None => process.release(Some(entry.charge)),
        Some(pool) => {
            let gone = process.tables().return_to_pool(pool, entry.charge);
            process.release(gone);
            if settle {
                settle_pools(process, current::current_ordinal());
            }
        }
    }
    result
}

/// At a synchronisation point the driver releases what each pool caches beyond its release
/// threshold; the guard does the same for the pools whose threshold the driver tells.
pub(super) fn settle_pools(process: &Process, ordinal: Option<CuDevice>) {
    let pools = process.tables().pools_with_cache(ordinal);
    for (key, handle) in pools {
        let handle = match (key, handle) {
            (_, Some(handle)) => handle as Handle,
            (PoolKey::Default(device), None) => {
                let mut handle: Handle = std::ptr::null_mut();
                // SAFETY: `handle` is a live pointer-sized slot the driver writes.
                if !unsafe { real::cuDeviceGetDefaultMemPool(&mut handle, device) }.is_success() {
                    continue;
                }
                handle
            }
            (PoolKey::Handle(handle), None) => handle as Handle,
        };
        if let Some(threshold) = driver::pool_release_threshold(handle) {
            let released = process.tables().trim_pool(key, threshold);
            process.release(released);
        }
    }
}

/// Reads `*pointer` if non-null.
///
/// # Safety
/// `pointer` is null or valid for reads.
pub(super) unsafe fn read<T: Copy>(pointer: *const T) -> Option<T> {
    // SAFETY: the caller guarantees validity when non-null.
    (!pointer.is_null()).then(|| unsafe { *pointer })
}
