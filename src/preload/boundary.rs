//! The FFI boundary: no panic ever crosses into the host program, and the driver is never called
//! twice for one call.
//!
//! Every export runs its hook inside `catch_unwind`, and the hook reaches the real driver
//! function only through the [`Driver`] handle the boundary gives it, which notes the driver's
//! answer. If the hook panics (a bug in the guard), the boundary looks at that note:
//! - the driver was not called yet: the call is passed through to the driver, once;
//! - the driver answered: that answer is the call's answer (the allocation it made, the free it
//!   did) and the driver is not called again: a second call would make a second allocation, or
//!   free a second time a pointer another thread may already have been given;
//! - the driver call began but never returned (it cannot unwind, so only in theory):
//!   `CUDA_ERROR_UNKNOWN`, never a second call.
//!
//! Either way the guard says once on stderr that it passed a call through after an internal
//! error. What the hook had not yet accounted stays unaccounted; the call itself is never lost
//! nor repeated.
#![deny(unsafe_code)]

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use vramguard_core::cuda::CuResult;

static PANIC_REPORTED: AtomicBool = AtomicBool::new(false);

/// How far one call got with the real driver function.
#[derive(Clone, Copy)]
enum Reached {
    /// Not called.
    NotCalled,
    /// Called, no answer yet.
    Called,
    /// The driver answered this.
    Answered(CuResult),
}

/// The real driver function of one call, as its hook sees it: [`Driver::call`] calls it with
/// the caller's exact arguments and notes the answer for the boundary.
pub struct Driver<'a, R> {
    name: &'static str,
    real: &'a R,
    reached: &'a Cell<Reached>,
}

impl<R> Clone for Driver<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Driver<'_, R> {}

impl<R: Fn() -> CuResult> Driver<'_, R> {
    /// Calls the real function and returns its answer.
    #[inline]
    pub fn call(self) -> CuResult {
        self.reached.set(Reached::Called);
        let result = (self.real)();
        self.reached.set(Reached::Answered(result));
        crate::config::test_fault_after_call(self.name);
        result
    }
}

/// Runs `hook` with the real function `real`; if the hook panics, answers as the module doc
/// says: `real` is called at most once per call, by the hook or by the boundary.
#[inline]
pub fn guarded<R: Fn() -> CuResult>(
    name: &'static str,
    real: R,
    hook: impl FnOnce(Driver<'_, R>) -> CuResult,
) -> CuResult {
    let reached = Cell::new(Reached::NotCalled);
    let driver = Driver {
        name,
        real: &real,
        reached: &reached,
    };
    match catch_unwind(AssertUnwindSafe(|| hook(driver))) {
        Ok(result) => result,
        Err(_) => after_panic(name, reached.get(), &real),
    }
}

/// The answer of a call whose hook panicked, having reached `reached`.
#[cold]
#[inline(never)]
fn after_panic(name: &str, reached: Reached, real: &impl Fn() -> CuResult) -> CuResult {
    let (result, when) = match reached {
        Reached::NotCalled => (
            catch_unwind(AssertUnwindSafe(real)).unwrap_or(CuResult::UNKNOWN),
            "before the driver's call; the call went to the driver unguarded",
        ),
        Reached::Answered(result) => (
            result,
            "after the driver's call; the driver's answer was returned as it was, not accounted",
        ),
        Reached::Called => (
            CuResult::UNKNOWN,
            "during the driver's call; CUDA_ERROR_UNKNOWN returned, the driver not called again",
        ),
    };
    if !PANIC_REPORTED.swap(true, Ordering::AcqRel) {
        let _ = catch_unwind(|| {
            crate::log::line(&format!(
                "internal error in {name} {when}; later internal errors pass calls through the \
                 same way without a word"
            ))
        });
    }
    result
}
