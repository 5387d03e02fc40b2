//! The exported driver symbols, generated from the one list ([`crate::functions`]): what programs
//! linked with `-lcuda` call, and what the `dlsym` and `cuGetProcAddress` answers hand out
//! ([`wrapper`]). Each runs its body in [`crate::hooks`] inside the panic boundary
//! ([`crate::boundary`]), which hands the body the real function and, if the body panics, answers
//! without ever calling the driver twice.
#![allow(non_snake_case, clippy::too_many_arguments)]

use std::ffi::{c_char, c_int, c_uint, c_void};

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuMemHandle, CuResult};

use crate::functions::{Func, Handle, guarded_functions};
use crate::lookup::real;

/// Generates the exports and [`wrapper`] from the list.
macro_rules! exports {
    ($($name:ident($($arg:ident: $ty:ty),*) = $lookup:ident @ $since:literal $($ptsz:ident)?;)*) => {
        $(
            #[doc = concat!("The exported `", stringify!($name), "`: the guard's hook around the driver's function.")]
            ///
            /// # Safety
            /// The caller upholds the driver's contract for this function.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CuResult {
                crate::boundary::guarded(
                    stringify!($name),
                    // SAFETY: the caller's arguments, passed unchanged to the real function.
                    || unsafe { real::$name($($arg),*) },
                    // SAFETY: the caller passes the arguments of the driver's contract,
                    // which the hook relies on exactly as the driver would.
                    |driver| unsafe { crate::hooks::$name(driver, $($arg),*) },
                )
            }
        )*

        /// The address of our wrapper of `f` (the exported symbol of the same name).
        pub fn wrapper(f: Func) -> *mut c_void {
            match f {
                $(Func::$name => $name as *const () as *mut c_void,)*
            }
        }
    };
}

guarded_functions!(exports);
