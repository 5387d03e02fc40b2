//! Initialisation and lookups: `cuInit` attaches early, and every successful `cuGetProcAddress`
//! answer passes through [`procaddr::substitute`].

use std::ffi::{c_char, c_int, c_uint, c_void};

use vramguard_core::cuda::CuResult;

use super::hooks;
use crate::lookup::procaddr;
use crate::process::session::session;

/// After the real lookup of `symbol` at (`version`, `flags`): on success, the answer in `*pfn`
/// becomes the guard's wrapper when the query names a guarded variant.
///
/// # Safety
/// `symbol` and `pfn` are the pointers the real lookup was just called with.
unsafe fn looked_up(
    result: CuResult,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CuResult {
    if result.is_success() {
        // SAFETY: the real lookup succeeded with these pointers.
        unsafe { procaddr::substitute(symbol, pfn, version, flags) };
    }
    result
}

hooks! {
    cuInit(flags: c_uint) => |call| {
        let result = call();
        if result.is_success() {
            // Attach now, so that a ledger problem is reported at start-up.
            let _ = session();
        }
        result
    };
    cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64) => |call| {
        // SAFETY: the pointers the real lookup is called with.
        unsafe { looked_up(call(), symbol, pfn, cuda_version, flags) }
    };
    cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        cuda_version: c_int,
        flags: u64,
        status: *mut c_int,
    ) => |call| {
        // SAFETY: the pointers the real lookup is called with.
        unsafe { looked_up(call(), symbol, pfn, cuda_version, flags) }
    };
}
