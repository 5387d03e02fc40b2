//! `cuGetProcAddress` answers: which guarded variant a (name, version, flags) query names.
//!
//! The CUDA runtime fetches every entry point through `cuGetProcAddress(_v2)`, choosing the ABI
//! with the version argument and the per-thread-default-stream flag. The wrappers call the real
//! lookup with the caller's exact arguments; when it succeeds for a (name, version, flags) that
//! names a guarded variant ([`variant`]), the answer is replaced by our wrapper of that variant,
//! whether or not the driver's pointer is one of its symbols (drivers answer with internal entry
//! points). The one exception: a pointer that is exactly the driver's symbol of another member
//! of the name's family (`_v2`, `_v3`, `_v4`, `_ptsz`) gets that member's wrapper. So
//! `"cuGetProcAddress"` always comes back as our lookup, and every later lookup passes here.
//!
//! The cut-offs are the list's ([`crate::functions`]), those of the CUDA headers
//! (`cudaTypedefs.h`: `PFN_cuMemAlloc_v3020`, `PFN_cuCtxCreate_v11040`,
//! `PFN_cuDevicePrimaryCtxRelease_v11000`, ...).

use std::ffi::{CStr, c_char, c_void};

use super::real;
use crate::exports::wrapper;
use crate::functions::{Func, OLDEST_VERSION};

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`
pub const PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// The guarded variant a `cuGetProcAddress(name, version, flags)` query resolves to, if any: of
/// the variants listed under `name`, the one with the latest cut-off not after `version`. The
/// flag selects the per-thread variants of a family that has them (whatever the version, for a
/// family whose per-thread variant dates from its first version); a family without them answers
/// the flag with its plain variants.
pub fn variant(name: &[u8], version: i32, flags: u64) -> Option<Func> {
    let version = version.max(OLDEST_VERSION);
    let per_thread =
        flags & PER_THREAD_DEFAULT_STREAM != 0 && Func::family(name).any(Func::per_thread);
    Func::family(name)
        .filter(|f| f.per_thread() == per_thread && f.since() <= version)
        .max_by_key(|f| f.since())
}

/// After a successful real lookup: replaces `*pfn` with our wrapper of the variant the query
/// names, whatever pointer the driver answered. Untouched when the query names no guarded
/// variant.
///
/// A driver may answer with an internal entry point that none of its symbols is (real drivers
/// do, for `"cuGetProcAddress"` itself among others), so the pointer's identity cannot decide;
/// the (name, version, flags) query fixes the ABI. Only when the answer is identifiably another
/// member of the name's family (the driver picked another cut-off or stream variant) is that
/// member's wrapper handed out instead, since the pointer then says which ABI it has. Should the
/// driver not export the variant at all, its answer becomes what the wrapper forwards to.
///
/// # Safety
/// `symbol` is null or a NUL-terminated string; `pfn` is null or points to the pointer the real
/// lookup just wrote.
pub unsafe fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) {
    if symbol.is_null() || pfn.is_null() || crate::config::is_disabled() {
        return;
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    // SAFETY: non-null, written by the real lookup.
    let answered = unsafe { *pfn };
    if answered.is_null() {
        return;
    }
    let Some(expected) = variant(name, version, flags) else {
        return;
    };
    let func = answered_by(expected, name, answered);
    if func != expected {
        crate::log::debug(&format!(
            "cuGetProcAddress({}, {version}, {flags}) answered {} (expected {})",
            String::from_utf8_lossy(name),
            func.name(),
            expected.name()
        ));
    }
    if func == expected {
        real::adopt_driver_answer(func, answered);
    }
    // SAFETY: as above; the answer is replaced with our wrapper of the function the query (or the
    // answer itself) names, hence the same ABI.
    unsafe { *pfn = wrapper(func) };
}

/// The guarded function a lookup's `answered` pointer is: another member of `name`'s family when
/// the pointer is exactly that member's driver symbol, else the `expected` variant the query
/// names.
fn answered_by(expected: Func, name: &[u8], answered: *mut c_void) -> Func {
    if real::driver_address(expected) == Some(answered) {
        return expected;
    }
    Func::family(name)
        .find(|f| *f != expected && real::driver_address(*f) == Some(answered))
        .unwrap_or(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Func::*;

    #[test]
    fn families_hold_the_suffixed_variants_only() {
        let names: Vec<&str> = Func::family(b"cuCtxCreate").map(Func::name).collect();
        assert_eq!(
            names,
            [
                "cuCtxCreate",
                "cuCtxCreate_v2",
                "cuCtxCreate_v3",
                "cuCtxCreate_v4"
            ]
        );
        let names: Vec<&str> = Func::family(b"cuMemAllocAsync").map(Func::name).collect();
        assert_eq!(names, ["cuMemAllocAsync", "cuMemAllocAsync_ptsz"]);
        assert_eq!(
            Func::family(b"cuMemAlloc").count(),
            2,
            "cuMemAllocPitch/Async/Managed are other families"
        );
        assert_eq!(Func::family(b"").count(), 0);
    }

    #[test]
    fn versions_select_the_abi_the_caller_asked_for() {
        let cases: &[(&[u8], i32, u64, Option<Func>)] = &[
            (b"cuMemAlloc", 2000, 0, Some(cuMemAlloc)),
            (b"cuMemAlloc", 3020, 0, Some(cuMemAlloc_v2)),
            (b"cuMemAlloc", 12000, 2, Some(cuMemAlloc_v2)),
            (b"cuMemFree", 3010, 0, Some(cuMemFree)),
            (b"cuMemGetInfo", 3020, 0, Some(cuMemGetInfo_v2)),
            (b"cuDeviceTotalMem", 2000, 0, Some(cuDeviceTotalMem)),
            (b"cuMemAllocPitch", 3020, 0, Some(cuMemAllocPitch_v2)),
            (b"cuCtxCreate", 2000, 0, Some(cuCtxCreate)),
            (b"cuCtxCreate", 3020, 0, Some(cuCtxCreate_v2)),
            (b"cuCtxCreate", 11000, 0, Some(cuCtxCreate_v2)),
            (b"cuCtxCreate", 11040, 0, Some(cuCtxCreate_v3)),
            (b"cuCtxCreate", 12050, 0, Some(cuCtxCreate_v4)),
            (b"cuCtxDestroy", 4000, 0, Some(cuCtxDestroy_v2)),
            (b"cuCtxDestroy", 3020, 0, Some(cuCtxDestroy)),
            (
                b"cuDevicePrimaryCtxRelease",
                7000,
                0,
                Some(cuDevicePrimaryCtxRelease),
            ),
            (
                b"cuDevicePrimaryCtxRelease",
                11000,
                0,
                Some(cuDevicePrimaryCtxRelease_v2),
            ),
            (
                b"cuDevicePrimaryCtxReset",
                12000,
                0,
                Some(cuDevicePrimaryCtxReset_v2),
            ),
            (b"cuDevicePrimaryCtxRetain", 6050, 0, None),
            (b"cuGetProcAddress", 11030, 0, Some(cuGetProcAddress)),
            (b"cuGetProcAddress", 12000, 0, Some(cuGetProcAddress_v2)),
            (b"cuGetProcAddress", 11020, 0, None),
            (b"cuMemAllocAsync", 11020, 0, Some(cuMemAllocAsync)),
            (b"cuMemAllocAsync", 11020, 2, Some(cuMemAllocAsync_ptsz)),
            (b"cuMemFreeAsync", 12000, 2, Some(cuMemFreeAsync_ptsz)),
            (
                b"cuMemAllocFromPoolAsync",
                11020,
                2,
                Some(cuMemAllocFromPoolAsync_ptsz),
            ),
            (b"cuMemAllocAsync", 11010, 0, None),
            (
                b"cuStreamSynchronize",
                2000,
                2,
                Some(cuStreamSynchronize_ptsz),
            ),
            (b"cuStreamSynchronize", 2000, 0, Some(cuStreamSynchronize)),
            (
                b"cuStreamSynchronize",
                7000,
                2,
                Some(cuStreamSynchronize_ptsz),
            ),
            (b"cuArrayCreate", 2000, 0, None),
            (b"cuArrayCreate", 3020, 0, Some(cuArrayCreate_v2)),
            (b"cuMemCreate", 10020, 0, Some(cuMemCreate)),
            (b"cuMemMap", 10020, 0, Some(cuMemMap)),
            (b"cuMemRetainAllocationHandle", 10020, 0, None),
            (b"cuGetExportTable", 3000, 0, None),
            (b"cuMemAlloc_v2", 12000, 0, None),
            (b"", 12000, 0, None),
        ];
        for (name, version, flags, expected) in cases {
            assert_eq!(
                variant(name, *version, *flags),
                *expected,
                "{} {version} {flags}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
