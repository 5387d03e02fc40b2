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
//! Cut-offs are those of the CUDA headers (`cudaTypedefs.h`: `PFN_cuMemAlloc_v3020`,
//! `PFN_cuCtxCreate_v11040`, `PFN_cuDevicePrimaryCtxRelease_v11000`, ...).

use std::ffi::{CStr, c_char, c_void};

use crate::functions::Func;

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`
pub const PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// The guarded variant a `cuGetProcAddress(name, version, flags)` query resolves to, if any.
pub fn variant(name: &[u8], version: i32, flags: u64) -> Option<Func> {
    use Func::*;
    let per_thread = flags & PER_THREAD_DEFAULT_STREAM != 0;
    let v2_at_3020 = |legacy: Func, v2: Func| Some(if version >= 3020 { v2 } else { legacy });
    let since = |min: i32, f: Func| (version >= min).then_some(f);
    let stream =
        |min: i32, plain: Func, ptsz: Func| since(min, if per_thread { ptsz } else { plain });
    match name {
        b"cuInit" => Some(cuInit),
        b"cuGetProcAddress" => {
            if version >= 12000 {
                Some(cuGetProcAddress_v2)
            } else {
                since(11030, cuGetProcAddress)
            }
        }
        b"cuMemAlloc" => v2_at_3020(cuMemAlloc, cuMemAlloc_v2),
        b"cuMemFree" => v2_at_3020(cuMemFree, cuMemFree_v2),
        b"cuMemAllocPitch" => v2_at_3020(cuMemAllocPitch, cuMemAllocPitch_v2),
        b"cuMemGetInfo" => v2_at_3020(cuMemGetInfo, cuMemGetInfo_v2),
        b"cuDeviceTotalMem" => v2_at_3020(cuDeviceTotalMem, cuDeviceTotalMem_v2),
        b"cuMemAllocManaged" => since(6000, cuMemAllocManaged),
        b"cuMemAllocAsync" => stream(11020, cuMemAllocAsync, cuMemAllocAsync_ptsz),
        b"cuMemFreeAsync" => stream(11020, cuMemFreeAsync, cuMemFreeAsync_ptsz),
        b"cuMemAllocFromPoolAsync" => {
            stream(11020, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz)
        }
        b"cuMemPoolCreate" => since(11020, cuMemPoolCreate),
        b"cuMemPoolDestroy" => since(11020, cuMemPoolDestroy),
        b"cuMemPoolTrimTo" => since(11020, cuMemPoolTrimTo),
        b"cuDeviceGetDefaultMemPool" => since(11020, cuDeviceGetDefaultMemPool),
        b"cuMemCreate" => since(10020, cuMemCreate),
        b"cuMemRelease" => since(10020, cuMemRelease),
        b"cuMemMap" => since(10020, cuMemMap),
        b"cuMemUnmap" => since(10020, cuMemUnmap),
        b"cuMemRetainAllocationHandle" => since(11000, cuMemRetainAllocationHandle),
        // The pre-3020 array calls take 32-bit descriptors; they are not guarded.
        b"cuArrayCreate" => since(3020, cuArrayCreate_v2),
        b"cuArray3DCreate" => since(3020, cuArray3DCreate_v2),
        b"cuArrayDestroy" => Some(cuArrayDestroy),
        b"cuMipmappedArrayCreate" => since(5000, cuMipmappedArrayCreate),
        b"cuMipmappedArrayDestroy" => since(5000, cuMipmappedArrayDestroy),
        b"cuCtxCreate" => Some(match version {
            v if v >= 12050 => cuCtxCreate_v4,
            v if v >= 11040 => cuCtxCreate_v3,
            v if v >= 3020 => cuCtxCreate_v2,
            _ => cuCtxCreate,
        }),
        b"cuCtxDestroy" => Some(if version >= 4000 {
            cuCtxDestroy_v2
        } else {
            cuCtxDestroy
        }),
        b"cuDevicePrimaryCtxRetain" => since(7000, cuDevicePrimaryCtxRetain),
        b"cuDevicePrimaryCtxRelease" => since(
            7000,
            if version >= 11000 {
                cuDevicePrimaryCtxRelease_v2
            } else {
                cuDevicePrimaryCtxRelease
            },
        ),
        b"cuDevicePrimaryCtxReset" => since(
            7000,
            if version >= 11000 {
                cuDevicePrimaryCtxReset_v2
            } else {
                cuDevicePrimaryCtxReset
            },
        ),
        // The flag selects the per-thread variant whatever the version (its typedef is
        // `PFN_cuStreamSynchronize_v7000_ptsz`; cudart asks at 2000 with the flag).
        b"cuStreamSynchronize" => Some(if per_thread {
            cuStreamSynchronize_ptsz
        } else {
            cuStreamSynchronize
        }),
        b"cuCtxSynchronize" => Some(cuCtxSynchronize),
        _ => None,
    }
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
    if symbol.is_null() || pfn.is_null() || crate::state::is_disabled() {
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
        func.adopt_driver_answer(answered);
    }
    // SAFETY: as above; the answer is replaced with our wrapper of the function the query (or the
    // answer itself) names, hence the same ABI.
    unsafe { *pfn = func.wrapper() };
}

/// The guarded function a lookup's `answered` pointer is: another member of `name`'s family when
/// the pointer is exactly that member's driver symbol, else the `expected` variant the query
/// names.
fn answered_by(expected: Func, name: &[u8], answered: *mut c_void) -> Func {
    if expected.driver_address() == Some(answered) {
        return expected;
    }
    family(name)
        .find(|f| *f != expected && f.driver_address() == Some(answered))
        .unwrap_or(expected)
}

/// The guarded functions whose name is `base` or `base` with a version or stream suffix.
fn family(base: &[u8]) -> impl Iterator<Item = Func> + '_ {
    Func::ALL.iter().copied().filter(move |f| {
        let name = f.name().as_bytes();
        name.strip_prefix(base)
            .is_some_and(|suffix| matches!(suffix, b"" | b"_v2" | b"_v3" | b"_v4" | b"_ptsz"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Func::*;

    #[test]
    fn families_hold_the_suffixed_variants_only() {
        let names: Vec<&str> = family(b"cuCtxCreate").map(Func::name).collect();
        assert_eq!(
            names,
            [
                "cuCtxCreate",
                "cuCtxCreate_v2",
                "cuCtxCreate_v3",
                "cuCtxCreate_v4"
            ]
        );
        let names: Vec<&str> = family(b"cuMemAllocAsync").map(Func::name).collect();
        assert_eq!(names, ["cuMemAllocAsync", "cuMemAllocAsync_ptsz"]);
        assert_eq!(
            family(b"cuMemAlloc").count(),
            2,
            "cuMemAllocPitch/Async/Managed are other families"
        );
        assert_eq!(family(b"").count(), 0);
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
