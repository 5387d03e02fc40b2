//! The one list of driver functions the guard intercepts, with the `cuGetProcAddress` cut-offs of
//! each, and [`Func`], the index made from it.
//!
//! [`guarded_functions!`] names each entry point with its exact C signature (every one returns a
//! `CUresult`), then the lookup it answers: `= cuMemAlloc @ 3020` says that
//! `cuGetProcAddress("cuMemAlloc", version >= 3020, ...)` names this variant until a later entry
//! of the same name takes over, as the CUDA headers' typedefs say (`PFN_cuMemAlloc_v3020`); `ptsz`
//! marks the variant answered with `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`. From that
//! single list come:
//! - [`Func`]: the index, with each function's C name, lookup name, cut-off and stream flag;
//! - [`crate::lookup::real`]: one lazily resolved slot per function and a typed caller of the
//!   real function;
//! - [`crate::exports`]: the `#[no_mangle] extern "C"` symbols seen by programs linked with
//!   `-lcuda`, each a thin boundary around its body in [`crate::hooks`];
//! - the answers of the interposed `dlsym` (by exact name, [`crate::lookup::dlsym`]) and of
//!   `cuGetProcAddress` ([`crate::lookup::procaddr`] maps a (name, version, flags) query onto a
//!   [`Func`] with the cut-offs).
//!
//! `tests/guard_symbols.rs` reads this list and compares it with `nm -D` of the library, and
//! `tests/docs_guarded_functions.rs` with `docs/design.md`. Legacy (pre-3020) entry points are listed with
//! their own 32-bit signatures: a caller always gets a wrapper of exactly the ABI it asked for.
//! Legacy array creation (`cuArrayCreate`, `cuArray3DCreate` with 32-bit descriptors) is not
//! listed and passes through untouched.
#![deny(unsafe_code)]

use std::ffi::c_void;

/// `CUstream`, `CUcontext`, `CUarray`, `CUmipmappedArray`, `CUmemoryPool`: opaque driver handles.
pub type Handle = *mut c_void;

/// The oldest version a lookup names: the CUDA headers' earliest typedefs are `_v2000`, so an
/// older version is read as this one (nothing older exists, and the driver decides whether it
/// answers at all).
pub const OLDEST_VERSION: i32 = 2000;

/// Calls `$callback!` with the list of guarded functions:
/// `name(arg: type, ...) = lookup_name @ since_version [ptsz];`.
macro_rules! guarded_functions {
    ($callback:ident) => {
        $callback! {
            cuInit(flags: c_uint) = cuInit @ 2000;
            cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64) = cuGetProcAddress @ 11030;
            cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64, status: *mut c_int) = cuGetProcAddress @ 12000;
            cuMemAlloc(dptr: *mut c_uint, bytesize: c_uint) = cuMemAlloc @ 2000;
            cuMemAlloc_v2(dptr: *mut CuDevicePtr, bytesize: usize) = cuMemAlloc @ 3020;
            cuMemFree(dptr: c_uint) = cuMemFree @ 2000;
            cuMemFree_v2(dptr: CuDevicePtr) = cuMemFree @ 3020;
            cuMemAllocPitch(dptr: *mut c_uint, pitch: *mut c_uint, width: c_uint, height: c_uint, element_size: c_uint) = cuMemAllocPitch @ 2000;
            cuMemAllocPitch_v2(dptr: *mut CuDevicePtr, pitch: *mut usize, width: usize, height: usize, element_size: c_uint) = cuMemAllocPitch @ 3020;
            cuMemAllocManaged(dptr: *mut CuDevicePtr, bytesize: usize, flags: c_uint) = cuMemAllocManaged @ 6000;
            cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) = cuMemGetInfo @ 2000;
            cuMemGetInfo_v2(free: *mut usize, total: *mut usize) = cuMemGetInfo @ 3020;
            cuDeviceTotalMem(bytes: *mut c_uint, dev: CuDevice) = cuDeviceTotalMem @ 2000;
            cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice) = cuDeviceTotalMem @ 3020;
            cuMemAllocAsync(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle) = cuMemAllocAsync @ 11020;
            cuMemAllocAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, stream: Handle) = cuMemAllocAsync @ 11020 ptsz;
            cuMemFreeAsync(dptr: CuDevicePtr, stream: Handle) = cuMemFreeAsync @ 11020;
            cuMemFreeAsync_ptsz(dptr: CuDevicePtr, stream: Handle) = cuMemFreeAsync @ 11020 ptsz;
            cuMemAllocFromPoolAsync(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle) = cuMemAllocFromPoolAsync @ 11020;
            cuMemAllocFromPoolAsync_ptsz(dptr: *mut CuDevicePtr, bytesize: usize, pool: Handle, stream: Handle) = cuMemAllocFromPoolAsync @ 11020 ptsz;
            cuMemPoolCreate(pool: *mut Handle, props: *const c_void) = cuMemPoolCreate @ 11020;
            cuMemPoolDestroy(pool: Handle) = cuMemPoolDestroy @ 11020;
            cuMemPoolTrimTo(pool: Handle, min_bytes_to_keep: usize) = cuMemPoolTrimTo @ 11020;
            cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CuDevice) = cuDeviceGetDefaultMemPool @ 11020;
            cuMemCreate(handle: *mut CuMemHandle, size: usize, prop: *const c_void, flags: u64) = cuMemCreate @ 10020;
            cuMemRelease(handle: CuMemHandle) = cuMemRelease @ 10020;
            cuMemMap(ptr: CuDevicePtr, size: usize, offset: usize, handle: CuMemHandle, flags: u64) = cuMemMap @ 10020;
            cuMemUnmap(ptr: CuDevicePtr, size: usize) = cuMemUnmap @ 10020;
            cuMemRetainAllocationHandle(handle: *mut CuMemHandle, addr: *mut c_void) = cuMemRetainAllocationHandle @ 11000;
            cuArrayCreate_v2(array: *mut Handle, desc: *const c_void) = cuArrayCreate @ 3020;
            cuArray3DCreate_v2(array: *mut Handle, desc: *const c_void) = cuArray3DCreate @ 3020;
            cuArrayDestroy(array: Handle) = cuArrayDestroy @ 2000;
            cuMipmappedArrayCreate(array: *mut Handle, desc: *const c_void, levels: c_uint) = cuMipmappedArrayCreate @ 5000;
            cuMipmappedArrayDestroy(array: Handle) = cuMipmappedArrayDestroy @ 5000;
            cuCtxCreate(ctx: *mut Handle, flags: c_uint, dev: CuDevice) = cuCtxCreate @ 2000;
            cuCtxCreate_v2(ctx: *mut Handle, flags: c_uint, dev: CuDevice) = cuCtxCreate @ 3020;
            cuCtxCreate_v3(ctx: *mut Handle, params: *mut c_void, num_params: c_int, flags: c_uint, dev: CuDevice) = cuCtxCreate @ 11040;
            cuCtxCreate_v4(ctx: *mut Handle, params: *mut c_void, flags: c_uint, dev: CuDevice) = cuCtxCreate @ 12050;
            cuCtxDestroy(ctx: Handle) = cuCtxDestroy @ 2000;
            cuCtxDestroy_v2(ctx: Handle) = cuCtxDestroy @ 4000;
            cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CuDevice) = cuDevicePrimaryCtxRetain @ 7000;
            cuDevicePrimaryCtxRelease(dev: CuDevice) = cuDevicePrimaryCtxRelease @ 7000;
            cuDevicePrimaryCtxRelease_v2(dev: CuDevice) = cuDevicePrimaryCtxRelease @ 11000;
            cuDevicePrimaryCtxReset(dev: CuDevice) = cuDevicePrimaryCtxReset @ 7000;
            cuDevicePrimaryCtxReset_v2(dev: CuDevice) = cuDevicePrimaryCtxReset @ 11000;
            cuStreamSynchronize(stream: Handle) = cuStreamSynchronize @ 2000;
            // The headers' typedef is `PFN_cuStreamSynchronize_v7000_ptsz`, but the runtime asks at
            // 2000 with the flag, and the flag alone selects the per-thread variant.
            cuStreamSynchronize_ptsz(stream: Handle) = cuStreamSynchronize @ 2000 ptsz;
            cuCtxSynchronize() = cuCtxSynchronize @ 2000;
        }
    };
}
pub(crate) use guarded_functions;

/// `1` for an entry marked `ptsz`, else `0` (a list entry's optional stream flag as a value).
macro_rules! per_thread_flag {
    () => {
        false
    };
    (ptsz) => {
        true
    };
}

/// Generates [`Func`] from the list.
macro_rules! index {
    ($($name:ident($($arg:ident: $ty:ty),*) = $lookup:ident @ $since:literal $($ptsz:ident)?;)*) => {
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

            /// The name a `cuGetProcAddress` query gives for this function (its family's name).
            pub const fn lookup_name(self) -> &'static str {
                match self {
                    $(Func::$name => stringify!($lookup),)*
                }
            }

            /// The first `cuGetProcAddress` version that names this variant.
            pub const fn since(self) -> i32 {
                match self {
                    $(Func::$name => $since,)*
                }
            }

            /// Whether this is the per-thread-default-stream variant of its family.
            pub const fn per_thread(self) -> bool {
                match self {
                    $(Func::$name => per_thread_flag!($($ptsz)?),)*
                }
            }
        }
    };
}

guarded_functions!(index);

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

    /// The guarded functions a `cuGetProcAddress` query for `name` may answer (its family: the
    /// variants of every version and stream flag), in list order.
    pub fn family(name: &[u8]) -> impl Iterator<Item = Func> + '_ {
        Func::ALL
            .iter()
            .copied()
            .filter(move |f| f.lookup_name().as_bytes() == name)
    }
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

    #[test]
    fn each_variant_is_its_lookup_name_or_a_suffixed_form_of_it() {
        for f in Func::ALL {
            let suffix = f.name().strip_prefix(f.lookup_name());
            assert!(
                matches!(suffix, Some("" | "_v2" | "_v3" | "_v4" | "_ptsz")),
                "{} answers lookups of {}",
                f.name(),
                f.lookup_name()
            );
            assert_eq!(f.per_thread(), f.name().ends_with("_ptsz"), "{}", f.name());
            assert!(f.since() >= OLDEST_VERSION, "{}", f.name());
        }
    }
}
