//! The current context and the device it belongs to, for one driver call per allocation.
//!
//! An allocation needs both: the device to charge, and the context that owns the memory (its
//! destruction frees it). The driver is asked only for the current context (`cuCtxGetCurrent`, a
//! thread-local read in the real driver); the context's device comes from a one-entry cache per
//! thread, filled by `cuCtxGetDevice` when the thread's current context changes. A context's
//! device never changes while it lives, but a destroyed context's handle may be reused for a new
//! one on another device: every destruction the guard sees (`cuCtxDestroy`, a primary context's
//! release or reset) and every attach (a forked child) bumps a generation that empties all the
//! caches.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use vramguard_core::cuda::{CuDevice, CuResult};

use crate::symbols::aux;

/// The context this thread found current last time, with its device and the generation then.
#[derive(Clone, Copy)]
struct Remembered {
    context: usize,
    ordinal: CuDevice,
    generation: u64,
}

/// Bumped whenever a context may have gone (its handle may then be reused).
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LAST: Cell<Remembered> = const {
        Cell::new(Remembered { context: 0, ordinal: -1, generation: 0 })
    };
}

/// The current context (non-null) and its device ordinal; `None` when no context is current or
/// the driver cannot tell.
pub fn context_and_device() -> Option<(usize, CuDevice)> {
    let context = current_context();
    if context == 0 {
        return None;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    // A thread being torn down has no cache: it asks the driver.
    let last = LAST.try_with(Cell::get).ok();
    if let Some(last) = last
        && last.context == context
        && last.generation == generation
    {
        return Some((context, last.ordinal));
    }
    let ordinal = current_ordinal()?;
    let _ = LAST.try_with(|cell| {
        cell.set(Remembered {
            context,
            ordinal,
            generation,
        })
    });
    Some((context, ordinal))
}

/// Contexts may have been destroyed (or the process is a fresh child): forget every cached
/// context-to-device answer.
pub fn forget_contexts() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The current context's handle (0 if none or unknown).
pub fn current_context() -> usize {
    type GetCurrent = unsafe extern "C" fn(*mut *mut c_void) -> CuResult;
    let Some(address) = aux::CU_CTX_GET_CURRENT.resolve() else {
        return 0;
    };
    // SAFETY: cuCtxGetCurrent has this signature.
    let get: GetCurrent = unsafe { std::mem::transmute::<*mut c_void, GetCurrent>(address) };
    let mut context: *mut c_void = std::ptr::null_mut();
    // SAFETY: `context` is a live pointer-sized slot the driver writes.
    if unsafe { get(&mut context) }.is_success() {
        context as usize
    } else {
        0
    }
}

/// The ordinal of the current context's device, asked of the driver (`cuCtxGetDevice`).
pub fn current_ordinal() -> Option<CuDevice> {
    type GetDevice = unsafe extern "C" fn(*mut CuDevice) -> CuResult;
    let address = aux::CU_CTX_GET_DEVICE.resolve()?;
    // SAFETY: cuCtxGetDevice has this signature.
    let get: GetDevice = unsafe { std::mem::transmute::<*mut c_void, GetDevice>(address) };
    let mut ordinal: CuDevice = -1;
    // SAFETY: `ordinal` is a live int the driver writes.
    unsafe { get(&mut ordinal) }.is_success().then_some(ordinal)
}
