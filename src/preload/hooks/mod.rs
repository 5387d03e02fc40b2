//! The body of each guarded function, one file per API family. The exports
//! ([`crate::exports`]) call these by name; each turns the raw C arguments into plain values and
//! follows one of the patterns of [`accounting`]. The driver is always called with the caller's
//! exact arguments.
//!
//! - [`lookup`]: `cuInit`, `cuGetProcAddress`.
//! - [`linear`]: `cuMemAlloc`, `cuMemAllocPitch`, `cuMemAllocManaged`, `cuMemFree`.
//! - [`stream_ordered`]: stream-ordered allocation, pools, synchronisation points.
//! - [`virtual_memory`]: `cuMemCreate`, `cuMemMap`, `cuMemUnmap`, `cuMemRelease`, ...
//! - [`arrays`]: arrays and mipmapped arrays.
//! - [`contexts`]: created and primary contexts.
//! - [`memory_info`]: `cuMemGetInfo`, `cuDeviceTotalMem`.
#![allow(non_snake_case)] // the driver's names

mod accounting;
mod arrays;
mod contexts;
mod linear;
mod lookup;
mod memory_info;
mod stream_ordered;
mod virtual_memory;

pub use arrays::*;
pub use contexts::*;
pub use linear::*;
pub use lookup::*;
pub use memory_info::*;
pub use stream_ordered::*;
pub use virtual_memory::*;

/// Defines guarded functions from their bodies: `name(args) => |call, what| body;` makes
/// `pub unsafe fn name(driver, args) -> CuResult` where `call` is the real function with the
/// caller's exact arguments (a closure over the boundary's [`crate::boundary::Driver`], which
/// notes the driver's answer) and `what` (optional) the function's name, for messages. The
/// variants of one family (`_v2`, `_ptsz`, the `cuCtxCreate` forms) are one body each, written
/// once.
macro_rules! hooks {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?) => |$call:ident $(, $what:ident)?| $body:expr;)*) => {$(
        #[doc = concat!("The guarded `", stringify!($name), "`.")]
        ///
        /// # Safety
        #[doc = concat!("The caller upholds the driver's contract for `", stringify!($name), "`.")]
        // The boundary's driver call carries every argument; a body reads only some.
        #[allow(non_snake_case, clippy::too_many_arguments, unused_variables)]
        pub unsafe fn $name(
            driver: crate::boundary::Driver<'_, impl Fn() -> vramguard_core::cuda::CuResult>,
            $($arg: $ty),*
        ) -> vramguard_core::cuda::CuResult {
            let $call = move || driver.call();
            $(let $what = stringify!($name);)?
            $body
        }
    )*};
}
use hooks;
