//! The one list of driver functions the guard intercepts, and everything generated from it.
//!
//! [`guarded_functions!`] names each entry point with its exact C signature (every one returns a
//! `CUresult`). From that single list come:
//! - [`Func`], an index of the functions, with their C names and the address of our wrapper;
//! - [`real`], one lazily resolved slot per function and a typed caller for the real function;
//! - [`exports`], the `#[no_mangle] extern "C"` symbols seen by programs linked with `-lcuda`,
//!   each a thin boundary around the hand-written body in [`crate::hooks`];
//! - the answers of the interposed `dlsym` (by exact name) and of `cuGetProcAddress`
//!   ([`crate::procaddr`] maps a (name, version, flags) query onto a [`Func`]).
//!
//! `tests/guard_symbols.rs` reads this list and compares it with `nm -D` of the library.
//! Legacy (pre-3020) entry points are listed with their own 32-bit signatures: a caller always gets
//! a wrapper of exactly the ABI it asked for. Legacy array creation (`cuArrayCreate`,
//! `cuArray3DCreate` with 32-bit descriptors) is not listed and passes through untouched.

use std::ffi::{c_int, c_uint, c_void};

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuMemHandle, CuResult};

use crate::symbols::Symbol;

/// `CUstream`, `CUcontext`, `CUarray`, `CUmipmappedArray`, `CUmemoryPool`: opaque driver handles.
pub type Handle = *mut c_void;

/// Calls `$callback!` with the list of guarded functions: `name(arg: type, ...);`.
macro_rules! guarded_functions {
    ($callback:ident) => {
        $callback! {
            cuInit(flags: c_uint);
            cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64);
            cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64, status: *mut c_int);
            cuMemAlloc(dptr: *mut c_uint, bytesize: c_uint);
            cuMemAlloc_v2(dptr: *mut CuDevicePtr, bytesize: usize);
            cuMemFree(dptr: c_uint);
            cuMemFree_v2(dptr: CuDevicePtr);
            cuMemAllocPitch(dptr: *mut c_uint, pitch: *mut c_uint, width: c_uint, height: c_uint, element_size: c_uint);
            cuMemAllocPitch_v2(dptr: *mut CuDevicePtr, pitch: *mut usize, width: usize, height: usize, element_size: c_uint);
            cuMemAllocManaged(dptr: *mut CuDevicePtr, bytesize: usize, flags: c_uint);
            cuMemGetInfo(free: *mut c_uint, total: *mut c_uint);
            cuMemGetInfo_v2(free: *mut usize, total: *mut usize);
            cuDeviceTotalMem(bytes: *mut c_uint, dev: CuDevice);
            cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice);
            cuMemAllocAsync(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle);
            cuMemAllocAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle);
            cuMemFreeAsync(dptr: CuDevicePtr, stream: Handle);
            cuMemFreeAsync_ptsz(dptr: CuDevicePtr, stream: Handle);
            cuMemAllocFromPoolAsync(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle);
            cuMemAllocFromPoolAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle);
            cuMemPoolCreate(pool: *mut Handle, props: *const c_void);
            cuMemPoolDestroy(pool: Handle);
            cuMemPoolTrimTo(pool: Handle, min_bytes_to_keep: usize);
            cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CuDevice);
            cuMemCreate(handle: *mut CuMemHandle, size: usize, prop: *const c_void, flags: u64);
            cuMemRelease(handle: CuMemHandle);
            cuMemMap(ptr: CuDevicePtr, size: usize, offset: usize, handle: CuMemHandle, flags: u64);
            cuMemUnmap(ptr: CuDevicePtr, size: usize);
            cuMemRetainAllocationHandle(handle: *mut CuMemHandle, addr: *mut c_void);
            cuArrayCreate_v2(array: *mut Handle, desc: *const c_void);
            cuArray3DCreate_v2(array: *mut Handle, desc: *const c_void);
            cuArrayDestroy(array: Handle);
            cuMipmappedArrayCreate(array: *mut Handle, desc: *const c_void, levels: c_uint);
            cuMipmappedArrayDestroy(array: Handle);
            cuCtxCreate(ctx: *mut Handle, flags: c_uint, dev: CuDevice);
            cuCtxCreate_v2(ctx: *mut Handle, flags: c_uint, dev: CuDevice);
            cuCtxCreate_v3(ctx: *mut Handle, params: *mut c_void, num_params: c_int, flags: c_uint, dev: CuDevice);
            cuCtxCreate_v4(ctx: *mut Handle, params: *mut c_void, flags: c_uint, dev: CuDevice);
            cuCtxDestroy(ctx: Handle);
            cuCtxDestroy_v2(ctx: Handle);
            cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CuDevice);
            cuDevicePrimaryCtxRelease(dev: CuDevice);
            cuDevicePrimaryCtxRelease_v2(dev: CuDevice);
            cuDevicePrimaryCtxReset(dev: CuDevice);
            cuDevicePrimaryCtxReset_v2(dev: CuDevice);
            cuStreamSynchronize(stream: Handle);
            cuStreamSynchronize_ptsz(stream: Handle);
            cuCtxSynchronize();
        }
    };
}

/// Generates [`Func`], the real-function slots and callers, and the exports from the list.
macro_rules! generate {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        /// One guarded driver function.
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Func {
            $(
                #[doc = stringify!($name)]
                $name,
            )*
        }

        impl Func {
            /// Every guarded function, in list order.
            pub const ALL: &'static [Func] = &[$(Func::$name),*];

            /// The C name, NUL-terminated.
            pub const fn c_name(self) -> &'static str {
                match self {
                    $(Func::$name => concat!(stringify!($name), "\0"),)*
                }
            }

            /// The address of our wrapper (the exported symbol of the same name).
            pub fn wrapper(self) -> *mut c_void {
                match self {
                    $(Func::$name => exports::$name as *const () as *mut c_void,)*
                }
            }
        }

        /// The real functions: one slot each, resolved on first use.
        static SLOTS: [Symbol; Func::ALL.len()] = [$(Symbol::new(Func::$name.c_name())),*];

        /// Typed callers of the real driver functions.
        #[allow(non_snake_case, clippy::too_many_arguments)]
        pub mod real {
            use super::*;
            $(
                #[doc = concat!("Calls the real `", stringify!($name), "`; `CUDA_ERROR_NOT_INITIALIZED` if the driver lacks it.")]
                ///
                /// # Safety
                /// The arguments must satisfy the driver's contract for this function.
                pub unsafe fn $name($($arg: $ty),*) -> CuResult {
                    type Real = unsafe extern "C" fn($($ty),*) -> CuResult;
                    let Some(address) = super::real_address(Func::$name) else {
                        return CuResult::NOT_INITIALIZED;
                    };
                    // SAFETY: the address is the driver's (or the next interposer's) symbol of this
                    // exact name, whose C signature is the one in the list.
                    let real: Real = unsafe { std::mem::transmute::<*mut c_void, Real>(address) };
                    // SAFETY: the caller upholds the driver's contract for these arguments.
                    unsafe { real($($arg),*) }
                }
            )*
        }

        /// The exported driver symbols: each runs our hook inside the panic boundary and falls
        /// back to the real function if the hook panics.
        #[allow(non_snake_case, clippy::too_many_arguments)]
        pub mod exports {
            use super::*;
            $(
                #[doc = concat!("The exported `", stringify!($name), "`: the guard's hook, or the driver's function if the hook panics.")]
                ///
                /// # Safety
                /// The caller upholds the driver's contract for this function.
                #[unsafe(no_mangle)]
                pub unsafe extern "C" fn $name($($arg: $ty),*) -> CuResult {
                    crate::boundary::guarded(
                        stringify!($name),
                        // SAFETY: the caller passes the arguments of the driver's contract,
                        // which the hook relies on exactly as the driver would.
                        || unsafe { crate::hooks::$name($($arg),*) },
                        // SAFETY: as above, passed unchanged to the real function.
                        || unsafe { real::$name($($arg),*) },
                    )
                }
            )*
        }
    };
}

use std::ffi::c_char;
guarded_functions!(generate);

impl Func {
    /// The C name without its NUL.
    pub fn name(self) -> &'static str {
        let with_nul = self.c_name();
        &with_nul[..with_nul.len() - 1]
    }

    /// The guarded function whose exported name is exactly `name` (dlsym's question).
    pub fn by_exact_name(name: &[u8]) -> Option<Func> {
        Func::ALL
            .iter()
            .copied()
            .find(|f| f.name().as_bytes() == name)
    }

    /// The real slot of this function.
    fn slot(self) -> &'static Symbol {
        &SLOTS[self as usize]
    }

    /// Makes the driver's `cuGetProcAddress` answer for this function what its wrapper forwards
    /// to, should no definition of its name be found (a driver that hands the variant out without
    /// exporting it). The name's definition is preferred: same ABI, same behaviour.
    pub fn adopt_driver_answer(self, answered: *mut c_void) {
        self.slot().adopt(answered);
    }

    /// The driver's own symbol of this name, from our handle on the driver (never an
    /// interposer's): what `cuGetProcAddress` answers are checked against.
    pub fn driver_address(self) -> Option<*mut c_void> {
        crate::symbols::driver_symbol(self.c_name())
    }
}

/// The function a call of `f` is forwarded to: the next definition after this library in the
/// preload order (so a second interposer loaded after us still sees the call), else the driver's
/// symbol from our own handle.
fn real_address(f: Func) -> Option<*mut c_void> {
    f.slot().resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_index_and_round_trip() {
        for (i, f) in Func::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(Func::by_exact_name(f.name().as_bytes()), Some(*f));
            assert!(f.name().starts_with("cu"));
        }
        assert_eq!(Func::by_exact_name(b"cuMemAlloc_v3"), None);
        assert_eq!(Func::by_exact_name(b"cuMemAlloc_v"), None);
        assert_eq!(Func::cuMemAlloc_v2.name(), "cuMemAlloc_v2");
    }
}
