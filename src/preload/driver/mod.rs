//! The driver as the guard itself calls it, for its own bookkeeping (never intercepted).
//!
//! - [`call`]: the few helper functions the guard calls, each typed once from its C signature.
//! - [`queries`]: what the guard asks with them (a card's UUID and name, the current device's
//!   memory, a pool's release threshold).
//! - [`headroom`]: when an allocation asks the driver for its free memory, and the last answer.
//! - [`current`]: the current context and its device, cached for all threads.
//! - [`layouts`]: the driver structures the guard reads, and array sizes.

pub mod current;
pub mod headroom;
pub mod layouts;
mod queries;

pub use queries::{memory, name, pool_release_threshold, total_memory, uuid};

/// Generates a typed caller per helper function, each with its own lazily resolved slot.
macro_rules! helper_functions {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        /// The helper driver functions, typed once; `CUDA_ERROR_NOT_INITIALIZED` when the driver
        /// lacks one.
        pub mod call {
            use std::ffi::{c_char, c_int, c_void};

            use vramguard_core::cuda::{CuDevice, CuUuid};

            use crate::functions::Handle;
            use crate::lookup::symbols::Symbol;

            $(
                crate::lookup::typed_caller! {
                    #[doc = concat!("Calls the driver's `", stringify!($name), "`.")]
                    $name($($arg: $ty),*) at {
                        static SLOT: Symbol = Symbol::new(concat!(stringify!($name), "\0"));
                        SLOT.resolve()
                    }
                }
            )*
        }
    };
}

helper_functions! {
    cuCtxGetCurrent(ctx: *mut Handle);
    cuCtxGetDevice(device: *mut CuDevice);
    cuDeviceGetUuid_v2(uuid: *mut CuUuid, device: CuDevice);
    cuDeviceGetUuid(uuid: *mut CuUuid, device: CuDevice);
    cuDeviceGetName(name: *mut c_char, len: c_int, device: CuDevice);
    cuMemPoolGetAttribute(pool: Handle, attribute: c_int, value: *mut c_void);
}
