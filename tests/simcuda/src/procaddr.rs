//! `cuGetProcAddress`: which exported function answers a (name, version, flags) request.
//! The version picks the ABI exactly as the real driver does (`cuMemAlloc` at 3020 or later is
//! `cuMemAlloc_v2`, below it the legacy 32-bit form; `cuCtxCreate` is `_v4` from 12050, `_v3`
//! from 11040, `_v2` from 3020); flag 2 (`CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`) picks
//! the `_ptsz` variants (the version gates the function itself, whatever the flags, as cudart
//! asks `cuStreamSynchronize` at 2000 with flag 2); a name the driver does not have, or asked at a version older than its
//! first one, is `CUDA_ERROR_NOT_FOUND` with the matching status.

use crate::exports::Entry;

/// `CU_GET_PROC_ADDRESS_SUCCESS`.
pub const STATUS_SUCCESS: i32 = 0;
/// `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`.
pub const STATUS_SYMBOL_NOT_FOUND: i32 = 1;
/// `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`.
pub const STATUS_VERSION_NOT_SUFFICIENT: i32 = 2;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const FLAG_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// Which pointer a successful lookup hands out (`SIMCUDA_PROCADDR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerMode {
    /// `exported` (the default): the driver's exported symbol of the variant.
    Exported,
    /// `internal`: a distinct function of the same ABI under no symbol name.
    Internal,
}

impl AnswerMode {
    /// Every mode, for tests that run a scenario under each.
    pub const ALL: [AnswerMode; 2] = [AnswerMode::Exported, AnswerMode::Internal];

    /// The value of `SIMCUDA_PROCADDR` that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            AnswerMode::Exported => "exported",
            AnswerMode::Internal => "internal",
        }
    }

    /// Parses a `SIMCUDA_PROCADDR` value (empty: the default).
    pub fn parse(text: &str) -> Option<AnswerMode> {
        match text.trim() {
            "" | "exported" => Some(AnswerMode::Exported),
            "internal" => Some(AnswerMode::Internal),
            _ => None,
        }
    }
}

/// This process's answer mode, read from `SIMCUDA_PROCADDR` once; an unknown value is reported
/// on stderr and treated as `exported`.
pub fn answer_mode() -> AnswerMode {
    static MODE: std::sync::OnceLock<AnswerMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let text = std::env::var("SIMCUDA_PROCADDR").unwrap_or_default();
        AnswerMode::parse(&text).unwrap_or_else(|| {
            eprintln!(
                "simcuda: SIMCUDA_PROCADDR={text:?} is neither `exported` nor `internal`; answering with exported symbols"
            );
            AnswerMode::Exported
        })
    })
}

/// The answer to a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This entry point.
    Found(Entry),
    /// The name exists, but not at the version asked for.
    VersionNotSufficient,
    /// No such name.
    SymbolNotFound,
}

/// Resolves `symbol` for a caller built against CUDA `version` with lookup `flags`.
pub fn lookup(symbol: &str, version: i32, flags: u64) -> Lookup {
    use Entry::*;
    let per_thread = flags & FLAG_PER_THREAD_DEFAULT_STREAM != 0;
    // Each list: (first version, entry point), newest first.
    let candidates: &[(i32, Entry)] = match (symbol, per_thread) {
        ("cuInit", _) => &[(2000, cuInit)],
        ("cuDriverGetVersion", _) => &[(2020, cuDriverGetVersion)],
        ("cuDeviceGetCount", _) => &[(2000, cuDeviceGetCount)],
        ("cuDeviceGet", _) => &[(2000, cuDeviceGet)],
        ("cuDeviceGetName", _) => &[(2000, cuDeviceGetName)],
        ("cuDeviceGetUuid", _) => &[(11040, cuDeviceGetUuid_v2), (9020, cuDeviceGetUuid)],
        ("cuDeviceTotalMem", _) => &[(3020, cuDeviceTotalMem_v2), (2000, cuDeviceTotalMem)],
        ("cuDeviceGetAttribute", _) => &[(2000, cuDeviceGetAttribute)],
        ("cuDeviceGetPCIBusId", _) => &[(4010, cuDeviceGetPCIBusId)],
        ("cuCtxCreate", _) => &[
            (12050, cuCtxCreate_v4),
            (11040, cuCtxCreate_v3),
            (3020, cuCtxCreate_v2),
            (2000, cuCtxCreate),
        ],
        ("cuCtxDestroy", _) => &[(4000, cuCtxDestroy_v2), (2000, cuCtxDestroy)],
        ("cuCtxGetCurrent", _) => &[(4000, cuCtxGetCurrent)],
        ("cuCtxSetCurrent", _) => &[(4000, cuCtxSetCurrent)],
        ("cuCtxPushCurrent", _) => &[(4000, cuCtxPushCurrent_v2), (2000, cuCtxPushCurrent)],
        ("cuCtxPopCurrent", _) => &[(4000, cuCtxPopCurrent_v2), (2000, cuCtxPopCurrent)],
        ("cuCtxGetDevice", _) => &[(2000, cuCtxGetDevice)],
        ("cuCtxSynchronize", _) => &[(2000, cuCtxSynchronize)],
        ("cuDevicePrimaryCtxRetain", _) => &[(7000, cuDevicePrimaryCtxRetain)],
        ("cuDevicePrimaryCtxRelease", _) => &[
            (11000, cuDevicePrimaryCtxRelease_v2),
            (7000, cuDevicePrimaryCtxRelease),
        ],
        ("cuDevicePrimaryCtxReset", _) => &[
            (11000, cuDevicePrimaryCtxReset_v2),
            (7000, cuDevicePrimaryCtxReset),
        ],
        ("cuDevicePrimaryCtxSetFlags", _) => &[
            (11000, cuDevicePrimaryCtxSetFlags_v2),
            (7000, cuDevicePrimaryCtxSetFlags),
        ],
        ("cuDevicePrimaryCtxGetState", _) => &[(7000, cuDevicePrimaryCtxGetState)],
        ("cuMemGetInfo", _) => &[(3020, cuMemGetInfo_v2), (2000, cuMemGetInfo)],
        ("cuMemAlloc", _) => &[(3020, cuMemAlloc_v2), (2000, cuMemAlloc)],
        ("cuMemAllocPitch", _) => &[(3020, cuMemAllocPitch_v2), (2000, cuMemAllocPitch)],
        ("cuMemFree", _) => &[(3020, cuMemFree_v2), (2000, cuMemFree)],
        ("cuMemAllocManaged", _) => &[(6000, cuMemAllocManaged)],
        ("cuStreamCreate", _) => &[(2000, cuStreamCreate)],
        ("cuStreamDestroy", _) => &[(4000, cuStreamDestroy_v2), (2000, cuStreamDestroy)],
        ("cuStreamSynchronize", true) => &[(2000, cuStreamSynchronize_ptsz)],
        ("cuStreamSynchronize", false) => &[(2000, cuStreamSynchronize)],
        ("cuMemAllocAsync", true) => &[(11020, cuMemAllocAsync_ptsz)],
        ("cuMemAllocAsync", false) => &[(11020, cuMemAllocAsync)],
        ("cuMemFreeAsync", true) => &[(11020, cuMemFreeAsync_ptsz)],
        ("cuMemFreeAsync", false) => &[(11020, cuMemFreeAsync)],
        ("cuMemAllocFromPoolAsync", true) => &[(11020, cuMemAllocFromPoolAsync_ptsz)],
        ("cuMemAllocFromPoolAsync", false) => &[(11020, cuMemAllocFromPoolAsync)],
        ("cuDeviceGetDefaultMemPool", _) => &[(11020, cuDeviceGetDefaultMemPool)],
        ("cuMemPoolCreate", _) => &[(11020, cuMemPoolCreate)],
        ("cuMemPoolDestroy", _) => &[(11020, cuMemPoolDestroy)],
        ("cuMemPoolTrimTo", _) => &[(11020, cuMemPoolTrimTo)],
        ("cuMemPoolSetAttribute", _) => &[(11020, cuMemPoolSetAttribute)],
        ("cuMemPoolGetAttribute", _) => &[(11020, cuMemPoolGetAttribute)],
        ("cuMemGetAllocationGranularity", _) => &[(10020, cuMemGetAllocationGranularity)],
        ("cuMemCreate", _) => &[(10020, cuMemCreate)],
        ("cuMemRelease", _) => &[(10020, cuMemRelease)],
        ("cuMemAddressReserve", _) => &[(10020, cuMemAddressReserve)],
        ("cuMemAddressFree", _) => &[(10020, cuMemAddressFree)],
        ("cuMemMap", _) => &[(10020, cuMemMap)],
        ("cuMemUnmap", _) => &[(10020, cuMemUnmap)],
        ("cuMemSetAccess", _) => &[(10020, cuMemSetAccess)],
        ("cuMemRetainAllocationHandle", _) => &[(11000, cuMemRetainAllocationHandle)],
        ("cuArrayCreate", _) => &[(3020, cuArrayCreate_v2), (2000, cuArrayCreate)],
        ("cuArray3DCreate", _) => &[(3020, cuArray3DCreate_v2), (2000, cuArray3DCreate)],
        ("cuArrayDestroy", _) => &[(2000, cuArrayDestroy)],
        ("cuMipmappedArrayCreate", _) => &[(5000, cuMipmappedArrayCreate)],
        ("cuMipmappedArrayDestroy", _) => &[(5000, cuMipmappedArrayDestroy)],
        ("cuGetErrorName", _) => &[(6000, cuGetErrorName)],
        ("cuGetErrorString", _) => &[(6000, cuGetErrorString)],
        ("cuGetExportTable", _) => &[(3000, cuGetExportTable)],
        ("cuGetProcAddress", _) => &[(12000, cuGetProcAddress_v2), (11030, cuGetProcAddress)],
        _ => return Lookup::SymbolNotFound,
    };
    candidates
        .iter()
        .find(|(since, _)| version >= *since)
        .map_or(Lookup::VersionNotSufficient, |(_, entry)| {
            Lookup::Found(*entry)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Entry::*;

    #[test]
    fn versions_pick_the_abi() {
        // (name, version, flags, answer)
        let cases = [
            ("cuMemAlloc", 3020, 0, Lookup::Found(cuMemAlloc_v2)),
            ("cuMemAlloc", 3010, 0, Lookup::Found(cuMemAlloc)),
            ("cuCtxCreate", 11000, 0, Lookup::Found(cuCtxCreate_v2)),
            ("cuCtxCreate", 11040, 0, Lookup::Found(cuCtxCreate_v3)),
            ("cuCtxCreate", 12080, 0, Lookup::Found(cuCtxCreate_v4)),
            (
                "cuGetProcAddress",
                12000,
                0,
                Lookup::Found(cuGetProcAddress_v2),
            ),
            (
                "cuGetProcAddress",
                11030,
                0,
                Lookup::Found(cuGetProcAddress),
            ),
            (
                "cuDevicePrimaryCtxRelease",
                7000,
                0,
                Lookup::Found(cuDevicePrimaryCtxRelease),
            ),
        ];
        check(&cases);
    }

    #[test]
    fn per_thread_flag_and_failures() {
        let cases = [
            (
                "cuMemAllocAsync",
                11020,
                2,
                Lookup::Found(cuMemAllocAsync_ptsz),
            ),
            ("cuMemAllocAsync", 11020, 0, Lookup::Found(cuMemAllocAsync)),
            ("cuMemAlloc", 3020, 2, Lookup::Found(cuMemAlloc_v2)),
            ("cuMemAllocAsync", 11010, 0, Lookup::VersionNotSufficient),
            ("", 12000, 0, Lookup::SymbolNotFound),
            ("cuMemAlloc_v2", 12000, 0, Lookup::SymbolNotFound),
        ];
        check(&cases);
    }

    /// Asserts each (name, version, flags) lookup gives its answer.
    fn check(cases: &[(&str, i32, u64, Lookup)]) {
        for &(name, version, flags, expected) in cases {
            assert_eq!(
                lookup(name, version, flags),
                expected,
                "lookup({name:?}, {version}, {flags})"
            );
        }
    }

    #[test]
    fn every_entry_point_is_reachable() {
        let reachable: Vec<Entry> = Entry::ALL
            .iter()
            .copied()
            .filter(|entry| {
                let base = entry
                    .name()
                    .trim_end_matches("_ptsz")
                    .trim_end_matches("_v2")
                    .trim_end_matches("_v3")
                    .trim_end_matches("_v4");
                let flags = if entry.name().ends_with("_ptsz") {
                    2
                } else {
                    0
                };
                [
                    2000, 3000, 4000, 7000, 9020, 11000, 11030, 11040, 12000, 13000,
                ]
                .iter()
                .any(|&v| lookup(base, v, flags) == Lookup::Found(*entry))
            })
            .collect();
        let missing: Vec<&str> = Entry::ALL
            .iter()
            .filter(|e| !reachable.contains(e))
            .map(|e| e.name())
            .collect();
        assert!(
            missing.is_empty(),
            "not reachable through cuGetProcAddress: {missing:?}"
        );
    }
}
