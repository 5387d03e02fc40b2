//! A client of the NVIDIA management library (NVML, `libnvidia-ml.so.1`, what `nvidia-smi`
//! uses): the card's used memory and each process's, without creating a CUDA context.
//!
//! The library is opened at run time ([`Nvml::open`], path from `VRAMGUARD_NVML`), so nothing
//! needs it at build time and a machine without it just gets [`NvmlError::Load`]. `nvmlInit_v2`
//! is called once per [`Nvml`]; dropping it calls `nvmlShutdown` (NVML counts its
//! initialisations). NVML is thread-safe, and so is this client (`Send + Sync`); nothing here
//! panics: every failure is an [`NvmlError`] that names the call.
//!
//! Result codes are [`NvmlReturn`], a `u32` newtype (a code this crate does not list is a value
//! like any other, never undefined behaviour). The structures NVML fills in are mirrored with
//! `#[repr(C)]` and pinned by compile-time asserts to the layouts of `nvml.h`.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_uint, c_void};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use crate::cuda::CuUuid;
use crate::dynlib::Library;

/// An NVML result code (`nvmlReturn_t`).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NvmlReturn(pub u32);

impl NvmlReturn {
    /// `NVML_SUCCESS`
    pub const SUCCESS: Self = Self(0);
    /// `NVML_ERROR_UNINITIALIZED`
    pub const UNINITIALIZED: Self = Self(1);
    /// `NVML_ERROR_INVALID_ARGUMENT`
    pub const INVALID_ARGUMENT: Self = Self(2);
    /// `NVML_ERROR_NOT_SUPPORTED`
    pub const NOT_SUPPORTED: Self = Self(3);
    /// `NVML_ERROR_NO_PERMISSION`
    pub const NO_PERMISSION: Self = Self(4);
    /// `NVML_ERROR_NOT_FOUND`
    pub const NOT_FOUND: Self = Self(6);
    /// `NVML_ERROR_INSUFFICIENT_SIZE`: the buffer is too small; the count says how many.
    pub const INSUFFICIENT_SIZE: Self = Self(7);
    /// `NVML_ERROR_DRIVER_NOT_LOADED`
    pub const DRIVER_NOT_LOADED: Self = Self(9);
    /// `NVML_ERROR_FUNCTION_NOT_FOUND`: this NVML does not implement the function.
    pub const FUNCTION_NOT_FOUND: Self = Self(13);
    /// `NVML_ERROR_GPU_IS_LOST`
    pub const GPU_IS_LOST: Self = Self(15);
    /// `NVML_ERROR_LIB_RM_VERSION_MISMATCH`: the library and the kernel module disagree.
    pub const LIB_RM_VERSION_MISMATCH: Self = Self(18);
    /// `NVML_ERROR_UNKNOWN`
    pub const UNKNOWN: Self = Self(999);

    /// Every code this crate names, with its `nvml.h` name.
    pub const KNOWN: &'static [(NvmlReturn, &'static str)] = &[
        (Self::SUCCESS, "NVML_SUCCESS"),
        (Self::UNINITIALIZED, "NVML_ERROR_UNINITIALIZED"),
        (Self::INVALID_ARGUMENT, "NVML_ERROR_INVALID_ARGUMENT"),
        (Self::NOT_SUPPORTED, "NVML_ERROR_NOT_SUPPORTED"),
        (Self::NO_PERMISSION, "NVML_ERROR_NO_PERMISSION"),
        (Self::NOT_FOUND, "NVML_ERROR_NOT_FOUND"),
        (Self::INSUFFICIENT_SIZE, "NVML_ERROR_INSUFFICIENT_SIZE"),
        (Self::DRIVER_NOT_LOADED, "NVML_ERROR_DRIVER_NOT_LOADED"),
        (Self::FUNCTION_NOT_FOUND, "NVML_ERROR_FUNCTION_NOT_FOUND"),
        (Self::GPU_IS_LOST, "NVML_ERROR_GPU_IS_LOST"),
        (
            Self::LIB_RM_VERSION_MISMATCH,
            "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
        ),
        (Self::UNKNOWN, "NVML_ERROR_UNKNOWN"),
    ];

    /// True for `NVML_SUCCESS`.
    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    /// The `nvml.h` name of this code, if this crate knows it.
    pub fn name(self) -> Option<&'static str> {
        Self::KNOWN
            .iter()
            .find(|(code, _)| *code == self)
            .map(|(_, name)| *name)
    }
}

impl fmt::Debug for NvmlReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "nvmlReturn_t({})", self.0),
        }
    }
}

impl fmt::Display for NvmlReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `NVML_VALUE_NOT_AVAILABLE`: what NVML writes where it cannot tell a figure.
pub const VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// A card's memory (`nvmlMemory_t`, filled by `nvmlDeviceGetMemoryInfo`): `total = free + used`,
/// and `used` includes what the driver and firmware reserve for themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Total physical memory, in bytes.
    pub total: u64,
    /// Unallocated memory, in bytes.
    pub free: u64,
    /// Allocated and reserved memory, in bytes.
    pub used: u64,
}

/// One process with a context on a card (`nvmlProcessInfo_t`, the structure of
/// `nvmlDeviceGetComputeRunningProcesses_v3`, the same as `nvmlProcessInfo_v2_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id, as the host's pid namespace sees it.
    pub pid: u32,
    /// Its memory on the card, in bytes; [`VALUE_NOT_AVAILABLE`] when NVML cannot tell.
    pub used_gpu_memory: u64,
    /// Its MIG GPU instance (`0xFFFFFFFF` when the card is not partitioned).
    pub gpu_instance_id: u32,
    /// Its MIG compute instance (`0xFFFFFFFF` when the card is not partitioned).
    pub compute_instance_id: u32,
}

// The layouts of nvml.h on every 64-bit Linux ABI.
const _: () = {
    assert!(size_of::<MemoryInfo>() == 24);
    assert!(offset_of!(MemoryInfo, total) == 0);
    assert!(offset_of!(MemoryInfo, free) == 8);
    assert!(offset_of!(MemoryInfo, used) == 16);
    assert!(size_of::<ProcessInfo>() == 24);
    assert!(offset_of!(ProcessInfo, pid) == 0);
    assert!(offset_of!(ProcessInfo, used_gpu_memory) == 8);
    assert!(offset_of!(ProcessInfo, gpu_instance_id) == 16);
    assert!(offset_of!(ProcessInfo, compute_instance_id) == 20);
    assert!(size_of::<NvmlReturn>() == 4);
};

/// One process's memory on a card, as [`Nvml::processes`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    /// The process id, as the host's pid namespace sees it.
    pub pid: u32,
    /// Its memory on the card, in bytes; `None` when NVML cannot tell.
    pub used: Option<u64>,
}

/// A card as NVML knows it (`nvmlDevice_t`), usable as long as the [`Nvml`] it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmlDevice<'nvml> {
    raw: *mut c_void,
    nvml: PhantomData<&'nvml Nvml>,
}

// SAFETY: an nvmlDevice_t is an opaque handle NVML accepts from any thread (the NVML API is
// thread-safe); it is never dereferenced here, and the lifetime keeps it within its Nvml's life.
unsafe impl Send for NvmlDevice<'_> {}
// SAFETY: as above.
unsafe impl Sync for NvmlDevice<'_> {}

/// Why NVML could not answer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlError {
    /// The library could not be loaded (`dlopen`).
    Load {
        /// The name or path that was opened.
        library: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The library lacks an entry point this client needs.
    MissingSymbol {
        /// The library.
        library: PathBuf,
        /// The entry point.
        symbol: &'static str,
    },
    /// An NVML call returned an error.
    Call {
        /// The NVML function that failed (`nvmlDeviceGetMemoryInfo`).
        function: &'static str,
        /// Its result code.
        code: NvmlReturn,
        /// NVML's description of the code (`nvmlErrorString`).
        message: String,
    },
}

impl NvmlError {
    /// The NVML result code, when an NVML call failed.
    pub fn code(&self) -> Option<NvmlReturn> {
        match self {
            NvmlError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for NvmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmlError::Load { library, message } => {
                write!(f, "cannot load {}: {message}", library.display())
            }
            NvmlError::MissingSymbol { library, symbol } => {
                write!(f, "{} has no {symbol}", library.display())
            }
            NvmlError::Call {
                function,
                code,
                message,
            } => write!(f, "{function} failed with {code}: {message}"),
        }
    }
}

impl std::error::Error for NvmlError {}

type InitFn = unsafe extern "C" fn() -> NvmlReturn;
type ShutdownFn = unsafe extern "C" fn() -> NvmlReturn;
type ErrorStringFn = unsafe extern "C" fn(NvmlReturn) -> *const c_char;
type DeviceGetCountFn = unsafe extern "C" fn(*mut c_uint) -> NvmlReturn;
type DeviceGetHandleByIndexFn = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> NvmlReturn;
type DeviceGetHandleByUuidFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> NvmlReturn;
type DeviceGetMemoryInfoFn = unsafe extern "C" fn(*mut c_void, *mut MemoryInfo) -> NvmlReturn;
type DeviceGetProcessesFn =
    unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut ProcessInfo) -> NvmlReturn;

/// The entries `nvmlDeviceGetComputeRunningProcesses_v3` is first asked for.
const FIRST_PROCESS_CAPACITY: u32 = 32;
/// The most entries it is ever asked for (a card with more processes is refused).
const MAX_PROCESS_CAPACITY: u32 = 1 << 16;

/// The entry points of the library.
#[derive(Clone, Copy)]
struct Api {
    shutdown: ShutdownFn,
    error_string: ErrorStringFn,
    device_get_count: DeviceGetCountFn,
    device_get_handle_by_index: DeviceGetHandleByIndexFn,
    device_get_handle_by_uuid: DeviceGetHandleByUuidFn,
    device_get_memory_info: DeviceGetMemoryInfoFn,
    /// Missing from drivers older than R510; only [`Nvml::processes`] needs it.
    device_get_compute_running_processes: Option<DeviceGetProcessesFn>,
}

/// The management library, opened and initialised: each value stands for one successful
/// `nvmlInit_v2`, balanced by `nvmlShutdown` when it is dropped.
pub struct Nvml {
    library: PathBuf,
    api: Api,
}

impl fmt::Debug for Nvml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nvml")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// Looks up `$name` in `$library` as a function pointer of type `$ty`.
macro_rules! entry {
    ($library:expr, $path:expr, $name:literal, $ty:ty) => {
        match $library.symbol($name) {
            Some(address) => {
                // SAFETY: the address is non-null, and NVML exports this symbol with exactly the
                // C prototype `$ty` (nvml.h, results as a u32 newtype, structures as the pinned
                // mirrors above).
                Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(address.as_ptr()) })
            }
            None => None,
        }
        .ok_or_else(|| NvmlError::MissingSymbol {
            library: $path.to_path_buf(),
            symbol: $name.to_str().unwrap_or("?"),
        })
    };
}

/// The error of `function` returning `code`, with NVML's description of the code.
fn call_error(error_string: ErrorStringFn, function: &'static str, code: NvmlReturn) -> NvmlError {
    // SAFETY: nvmlErrorString takes any code and returns null or a pointer to a static
    // NUL-terminated string.
    let text = unsafe { error_string(code) };
    let message = if text.is_null() {
        String::from("no description")
    } else {
        // SAFETY: non-null, NUL-terminated, static (see above).
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    NvmlError::Call {
        function,
        code,
        message,
    }
}

impl Nvml {
    /// Loads the library (`libnvidia-ml.so.1`, or a path; `RTLD_NOW | RTLD_LOCAL`, never
    /// unloaded), finds its entry points and calls `nvmlInit_v2`.
    pub fn open(library: &Path) -> Result<Nvml, NvmlError> {
        let lib = Library::open(library, libc::RTLD_NOW | libc::RTLD_LOCAL).map_err(|message| {
            NvmlError::Load {
                library: library.to_path_buf(),
                message,
            }
        })?;
        let init = entry!(lib, library, c"nvmlInit_v2", InitFn)?;
        let api = Api {
            shutdown: entry!(lib, library, c"nvmlShutdown", ShutdownFn)?,
            error_string: entry!(lib, library, c"nvmlErrorString", ErrorStringFn)?,
            device_get_count: entry!(lib, library, c"nvmlDeviceGetCount_v2", DeviceGetCountFn)?,
            device_get_handle_by_index: entry!(
                lib,
                library,
                c"nvmlDeviceGetHandleByIndex_v2",
                DeviceGetHandleByIndexFn
            )?,
            device_get_handle_by_uuid: entry!(
                lib,
                library,
                c"nvmlDeviceGetHandleByUUID",
                DeviceGetHandleByUuidFn
            )?,
            device_get_memory_info: entry!(
                lib,
                library,
                c"nvmlDeviceGetMemoryInfo",
                DeviceGetMemoryInfoFn
            )?,
            device_get_compute_running_processes: entry!(
                lib,
                library,
                c"nvmlDeviceGetComputeRunningProcesses_v3",
                DeviceGetProcessesFn
            )
            .ok(),
        };
        // SAFETY: nvmlInit_v2 takes no arguments; it may be called from any thread.
        let code = unsafe { init() };
        if !code.is_success() {
            return Err(call_error(api.error_string, "nvmlInit_v2", code));
        }
        Ok(Nvml {
            library: library.to_path_buf(),
            api,
        })
    }

    /// The library this client loaded, as it was named.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// `Ok(value)` when `code` is success, else the error of `function`.
    fn check<T>(&self, function: &'static str, code: NvmlReturn, value: T) -> Result<T, NvmlError> {
        if code.is_success() {
            Ok(value)
        } else {
            Err(call_error(self.api.error_string, function, code))
        }
    }

    /// The number of cards NVML sees (all of the machine's: NVML ignores
    /// `CUDA_VISIBLE_DEVICES`).
    pub fn device_count(&self) -> Result<u32, NvmlError> {
        let mut count: c_uint = 0;
        // SAFETY: the out-pointer is valid for the call.
        let code = unsafe { (self.api.device_get_count)(&mut count) };
        self.check("nvmlDeviceGetCount_v2", code, count)
    }

    /// The card at NVML's `index` (the machine's order, as `nvidia-smi` numbers them).
    pub fn device_by_index(&self, index: u32) -> Result<NvmlDevice<'_>, NvmlError> {
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: the out-pointer is valid for the call.
        let code = unsafe { (self.api.device_get_handle_by_index)(index, &mut raw) };
        self.check("nvmlDeviceGetHandleByIndex_v2", code, self.device(raw))
    }

    /// The card with this UUID (the driver's `cuDeviceGetUuid` bytes; NVML is asked with the
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form).
    pub fn device_by_uuid(&self, uuid: &[u8; 16]) -> Result<NvmlDevice<'_>, NvmlError> {
        let text = uuid_text(uuid);
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: `text` is NUL-terminated and outlives the call; the out-pointer is valid.
        let code = unsafe { (self.api.device_get_handle_by_uuid)(text.as_ptr().cast(), &mut raw) };
        self.check("nvmlDeviceGetHandleByUUID", code, self.device(raw))
    }

    fn device(&self, raw: *mut c_void) -> NvmlDevice<'_> {
        NvmlDevice {
            raw,
            nvml: PhantomData,
        }
    }

    /// The card's memory: total, free and used (`nvmlDeviceGetMemoryInfo`).
    pub fn memory(&self, device: NvmlDevice<'_>) -> Result<MemoryInfo, NvmlError> {
        let mut memory = MemoryInfo::default();
        // SAFETY: `device` is a handle of this library (its lifetime ties it to `self`); the
        // out-pointer is a valid nvmlMemory_t.
        let code = unsafe { (self.api.device_get_memory_info)(device.raw, &mut memory) };
        self.check("nvmlDeviceGetMemoryInfo", code, memory)
    }

    /// The processes with a compute context on the card and the memory each holds
    /// (`nvmlDeviceGetComputeRunningProcesses_v3`, the buffer grown while NVML answers
    /// `NVML_ERROR_INSUFFICIENT_SIZE`). Inside a container whose pid namespace is not the host's,
    /// NVML may list nobody.
    pub fn processes(&self, device: NvmlDevice<'_>) -> Result<Vec<ProcessMemory>, NvmlError> {
        const FUNCTION: &str = "nvmlDeviceGetComputeRunningProcesses_v3";
        let Some(get) = self.api.device_get_compute_running_processes else {
            return Err(NvmlError::MissingSymbol {
                library: self.library.clone(),
                symbol: FUNCTION,
            });
        };
        let mut capacity = FIRST_PROCESS_CAPACITY;
        loop {
            let mut infos = vec![ProcessInfo::default(); capacity as usize];
            let mut count: c_uint = capacity;
            // SAFETY: `infos` holds `count` entries of the pinned nvmlProcessInfo_t layout;
            // `device` is a handle of this library; NVML writes at most `count` entries.
            let code = unsafe { get(device.raw, &mut count, infos.as_mut_ptr()) };
            if code == NvmlReturn::INSUFFICIENT_SIZE && capacity < MAX_PROCESS_CAPACITY {
                // `count` now says how many there are; more may start before the next call.
                capacity = count
                    .saturating_add(count / 2)
                    .max(capacity.saturating_mul(2))
                    .min(MAX_PROCESS_CAPACITY);
                continue;
            }
            let listed = self.check(FUNCTION, code, count)?;
            infos.truncate(listed.min(capacity) as usize);
            return Ok(infos
                .iter()
                .map(|info| ProcessMemory {
                    pid: info.pid,
                    used: (info.used_gpu_memory != VALUE_NOT_AVAILABLE)
                        .then_some(info.used_gpu_memory),
                })
                .collect());
        }
    }

    /// What process `pid` (as the host's pid namespace numbers it) holds on the card: the sum of
    /// its entries (one per MIG instance). `None` when NVML does not list it (it has no context
    /// there, or the caller's pid namespace is not the host's) or cannot tell its memory.
    pub fn process_memory(
        &self,
        device: NvmlDevice<'_>,
        pid: u32,
    ) -> Result<Option<u64>, NvmlError> {
        let entries: Vec<Option<u64>> = self
            .processes(device)?
            .into_iter()
            .filter(|p| p.pid == pid)
            .map(|p| p.used)
            .collect();
        if entries.is_empty() || entries.iter().any(Option::is_none) {
            return Ok(None);
        }
        Ok(Some(
            entries.into_iter().flatten().fold(0, u64::saturating_add),
        ))
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: balances the successful nvmlInit_v2 of `open`. Its result is of no use here.
        let _ = unsafe { (self.api.shutdown)() };
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` and a NUL, on the stack.
fn uuid_text(uuid: &[u8; 16]) -> [u8; 41] {
    use std::io::Write;
    let mut text = [0u8; 41];
    // 40 characters always fit in the first 40 bytes; the last stays NUL.
    let _ = write!(&mut text[..40], "{}", CuUuid(*uuid));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_asked_in_the_nvidia_smi_form() {
        let uuid = [
            0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f, 0x70, 0x81, 0x92, 0xa3, 0xb4, 0xc5, 0xd6, 0xe7,
            0xf8, 0x09,
        ];
        let text = uuid_text(&uuid);
        assert_eq!(
            CStr::from_bytes_until_nul(&text).unwrap().to_str().unwrap(),
            "GPU-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
        );
    }

    #[test]
    fn codes_this_crate_does_not_list_are_plain_values() {
        assert_eq!(NvmlReturn(6).to_string(), "NVML_ERROR_NOT_FOUND");
        assert_eq!(NvmlReturn(4242).to_string(), "nvmlReturn_t(4242)");
        assert!(NvmlReturn(0).is_success());
    }

    #[test]
    fn a_missing_library_is_a_load_error() {
        let error = Nvml::open(Path::new("/nonexistent/libnvidia-ml.so.1")).unwrap_err();
        assert!(matches!(error, NvmlError::Load { .. }), "{error:?}");
        assert!(error.to_string().contains("/nonexistent/libnvidia-ml.so.1"));
        assert_eq!(error.code(), None);
    }

    #[test]
    fn the_client_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Nvml>();
        shared::<NvmlDevice<'static>>();
        shared::<NvmlError>();
    }

    #[test]
    fn errors_name_the_call_and_the_code() {
        let error = NvmlError::Call {
            function: "nvmlDeviceGetMemoryInfo",
            code: NvmlReturn::GPU_IS_LOST,
            message: "GPU is lost".into(),
        };
        assert_eq!(
            error.to_string(),
            "nvmlDeviceGetMemoryInfo failed with NVML_ERROR_GPU_IS_LOST: GPU is lost"
        );
        assert_eq!(error.code(), Some(NvmlReturn::GPU_IS_LOST));
    }
}
