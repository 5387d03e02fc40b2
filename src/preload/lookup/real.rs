//! The real functions behind the guarded ones: one slot per entry of the list
//! ([`crate::functions`]), resolved on first use, and a typed caller of each.
//!
//! A call is forwarded to the next definition after this library in the preload order (so a
//! second interposer loaded after us still sees it), else to the driver's symbol from our own
//! handle, else to what the driver's `cuGetProcAddress` answered for the variant
//! ([`adopt_driver_answer`]).

use std::ffi::{c_char, c_int, c_uint, c_void};

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuMemHandle};

use std::sync::atomic::{AtomicBool, Ordering};

use super::symbols::{self, Symbol};
use crate::functions::{Func, Handle, guarded_functions};
use crate::log;

/// Generates the slots and the typed callers from the list.
macro_rules! real_functions {
    ($($name:ident($($arg:ident: $ty:ty),*) = $lookup:ident @ $since:literal $($ptsz:ident)?;)*) => {
        /// One slot per guarded function, in list order.
        static SLOTS: [Symbol; Func::ALL.len()] = [$(Symbol::new(Func::$name.c_name())),*];

        $(
            super::typed_caller! {
                #[doc = concat!("Calls the real `", stringify!($name), "`; `CUDA_ERROR_NOT_INITIALIZED` if there is none.")]
                $name($($arg: $ty),*) at resolve(Func::$name)
            }
        )*
    };
}

guarded_functions!(real_functions);

/// The function a call of `f` is forwarded to; when there is none because the driver cannot be
/// opened, that is said once.
#[inline]
fn resolve(f: Func) -> Option<*mut c_void> {
    let found = slot(f).resolve();
    if found.is_none() {
        say_driver_missing();
    }
    found
}

#[cold]
#[inline(never)]
fn say_driver_missing() {
    static SAID: AtomicBool = AtomicBool::new(false);
    if let Err(reason) = symbols::driver_handle()
        && !SAID.swap(true, Ordering::AcqRel)
    {
        log::error(&format!(
            "cannot open the CUDA driver {reason}: calls pass through unguarded"
        ));
    }
}

/// The real slot of `f`.
fn slot(f: Func) -> &'static Symbol {
    &SLOTS[f as usize]
}

/// Makes the driver's `cuGetProcAddress` answer for `f` what its wrapper forwards to, should no
/// definition of its name be found (a driver that hands the variant out without exporting it).
/// The name's definition is preferred: same ABI, same behaviour.
pub fn adopt_driver_answer(f: Func, answered: *mut c_void) {
    slot(f).adopt(answered);
}

/// The driver's own symbol of `f`'s name, from our handle on the driver (never an
/// interposer's): what `cuGetProcAddress` answers are checked against.
pub fn driver_address(f: Func) -> Option<*mut c_void> {
    symbols::driver_symbol(f.c_name()).ok().flatten()
}
