//! How calls reach the guard, and how the guard reaches the driver.
//!
//! - [`dlsym`]: the interposed `dlsym` (a naked tail-jump trampoline), answering guarded names
//!   looked up in the driver's handle with our wrappers.
//! - [`procaddr`]: the `cuGetProcAddress` answers: which guarded variant a (name, version, flags)
//!   query names, from the list's cut-offs.
//! - [`real`]: the real function behind each guarded one, resolved once, with a typed caller.
//! - [`symbols`]: the real `dlsym`, our own handle on the driver, lock-free function slots.

pub mod dlsym;
pub mod procaddr;
pub mod real;
pub mod symbols;

/// Defines `pub unsafe fn $name(args) -> CuResult` that calls the function at the address
/// `$address` evaluates to (`Option<*mut c_void>`), typed once with the C signature given here,
/// or returns `CUDA_ERROR_NOT_INITIALIZED` when there is none.
macro_rules! typed_caller {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) at $address:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The arguments must satisfy the driver's contract for this function.
        #[allow(non_snake_case, clippy::too_many_arguments)]
        pub unsafe fn $name($($arg: $ty),*) -> vramguard_core::cuda::CuResult {
            type Real = unsafe extern "C" fn($($ty),*) -> vramguard_core::cuda::CuResult;
            let Some(address) = ($address) else {
                return vramguard_core::cuda::CuResult::NOT_INITIALIZED;
            };
            // SAFETY: the address is a definition of this exact name (or the driver's answer for
            // it), whose C signature is the one declared here.
            let real: Real = unsafe { std::mem::transmute::<*mut std::ffi::c_void, Real>(address) };
            // SAFETY: the caller upholds the driver's contract for these arguments.
            unsafe { real($($arg),*) }
        }
    };
}
pub(crate) use typed_caller;
