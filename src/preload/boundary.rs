//! The FFI boundary: no panic ever crosses into the host program.
//!
//! Every export runs its hook inside `catch_unwind`; if the hook panics (a bug in the guard), the
//! call falls back to the real driver function, and the guard says so once on stderr.
#![deny(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use vramguard_core::cuda::CuResult;

static PANIC_REPORTED: AtomicBool = AtomicBool::new(false);

/// Runs `hook`; on panic runs `pass_through` instead (and, should that panic too, answers
/// `CUDA_ERROR_UNKNOWN`).
#[inline]
pub fn guarded(
    name: &str,
    hook: impl FnOnce() -> CuResult,
    pass_through: impl FnOnce() -> CuResult,
) -> CuResult {
    match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(result) => result,
        Err(_) => {
            if !PANIC_REPORTED.swap(true, Ordering::AcqRel) {
                let _ = catch_unwind(|| {
                    crate::log::line(&format!(
                        "internal error in {name}; passing calls through to the driver"
                    ))
                });
            }
            catch_unwind(AssertUnwindSafe(pass_through)).unwrap_or(CuResult::UNKNOWN)
        }
    }
}
