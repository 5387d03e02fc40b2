//! A minimal, dynamically opened view of the CUDA driver, for the two subcommands that talk to it
//! in a child process of their own: `doctor`'s driver probe and the demo's "model load".
//!
//! Every entry point is fetched with `dlsym` by its plain name (the `_v2` names where the
//! headers map the plain one to `_v2`), the way many programs reach the
//! driver (and a path the guard intercepts). Results are [`CuResult`] (a `u32`), never an enum.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::Path;

use vramguard_core::cuda::{CuDevice, CuDevicePtr, CuResult};
use vramguard_core::dynlib::Library;

type CuInit = unsafe extern "C" fn(c_uint) -> CuResult;
type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> CuResult;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> CuResult;
type CuDeviceGet = unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult;
type CuDevicePrimaryCtxRetain = unsafe extern "C" fn(*mut *mut c_void, CuDevice) -> CuResult;
type CuDevicePrimaryCtxRelease = unsafe extern "C" fn(CuDevice) -> CuResult;
type CuCtxSetCurrent = unsafe extern "C" fn(*mut c_void) -> CuResult;
type CuMemAlloc = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type CuMemFree = unsafe extern "C" fn(CuDevicePtr) -> CuResult;

/// The driver library, opened, with the entry points the CLI uses.
pub struct Driver {
    init: CuInit,
    driver_get_version: CuDriverGetVersion,
    device_get_count: CuDeviceGetCount,
    device_get: CuDeviceGet,
    device_get_name: CuDeviceGetName,
    device_total_mem: CuDeviceTotalMem,
    primary_ctx_retain: CuDevicePrimaryCtxRetain,
    primary_ctx_release: CuDevicePrimaryCtxRelease,
    ctx_set_current: CuCtxSetCurrent,
    mem_alloc: CuMemAlloc,
    mem_free: CuMemFree,
}

/// Opens `library` with `RTLD_NOW | RTLD_GLOBAL` (never closed: the process is a short-lived
/// child).
pub fn open_library(library: &Path) -> Result<Library, String> {
    Library::open(library, libc::RTLD_NOW | libc::RTLD_GLOBAL)
}

/// The address of `symbol` in `library`.
fn symbol(library: &Library, symbol: &CStr) -> Result<*mut c_void, String> {
    library
        .symbol(symbol)
        .map(|address| address.as_ptr())
        .ok_or_else(|| format!("the driver has no {}", symbol.to_string_lossy()))
}

macro_rules! entry {
    ($handle:expr, $name:literal, $ty:ty) => {{
        let address = symbol(&$handle, $name)?;
        // SAFETY: the driver exports this symbol with exactly the signature `$ty` (the CUDA
        // driver API's published C prototype, results as a u32).
        unsafe { std::mem::transmute::<*mut c_void, $ty>(address) }
    }};
}

impl Driver {
    /// Opens the driver library (`libcuda.so.1`, or a path) and looks up the entry points.
    pub fn open(library: &Path) -> Result<Driver, String> {
        let handle = open_library(library)?;
        Ok(Driver {
            init: entry!(handle, c"cuInit", CuInit),
            driver_get_version: entry!(handle, c"cuDriverGetVersion", CuDriverGetVersion),
            device_get_count: entry!(handle, c"cuDeviceGetCount", CuDeviceGetCount),
            device_get: entry!(handle, c"cuDeviceGet", CuDeviceGet),
            device_get_name: entry!(handle, c"cuDeviceGetName", CuDeviceGetName),
            device_total_mem: entry!(handle, c"cuDeviceTotalMem_v2", CuDeviceTotalMem),
            primary_ctx_retain: entry!(
                handle,
                c"cuDevicePrimaryCtxRetain",
                CuDevicePrimaryCtxRetain
            ),
            primary_ctx_release: entry!(
                handle,
                c"cuDevicePrimaryCtxRelease_v2",
                CuDevicePrimaryCtxRelease
            ),
            ctx_set_current: entry!(handle, c"cuCtxSetCurrent", CuCtxSetCurrent),
            mem_alloc: entry!(handle, c"cuMemAlloc_v2", CuMemAlloc),
            mem_free: entry!(handle, c"cuMemFree_v2", CuMemFree),
        })
    }

    /// The file the driver was loaded from, symbolic links resolved (its name carries the driver
    /// version on a real installation: `libcuda.so.550.54.14`).
    pub fn library_path(&self) -> Option<std::path::PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: Dl_info is plain data; all-zero is a valid value to be overwritten.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: the address is a function of the loaded driver and `info` is valid for writes.
        let found = unsafe { libc::dladdr(self.init as *const c_void, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dladdr filled dli_fname with a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dli_fname) };
        Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()))
            .canonicalize()
            .ok()
    }

    /// `cuInit(0)`.
    pub fn init(&self) -> CuResult {
        // SAFETY: cuInit takes a flags word and has no pointer arguments.
        unsafe { (self.init)(0) }
    }

    /// `cuDriverGetVersion`.
    pub fn version(&self) -> Result<i32, CuResult> {
        let mut version: c_int = 0;
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.driver_get_version)(&mut version) };
        if result.is_success() {
            Ok(version)
        } else {
            Err(result)
        }
    }

    /// `cuDeviceGetCount`.
    pub fn device_count(&self) -> Result<i32, CuResult> {
        let mut count: c_int = 0;
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.device_get_count)(&mut count) };
        if result.is_success() {
            Ok(count)
        } else {
            Err(result)
        }
    }

    /// `cuDeviceGet`.
    pub fn device(&self, ordinal: i32) -> Result<CuDevice, CuResult> {
        let mut device: CuDevice = 0;
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.device_get)(&mut device, ordinal) };
        if result.is_success() {
            Ok(device)
        } else {
            Err(result)
        }
    }

    /// `cuDeviceGetName`.
    pub fn device_name(&self, device: CuDevice) -> Result<String, CuResult> {
        let mut buffer = [0 as c_char; 256];
        // SAFETY: the buffer is valid for its stated length.
        let result =
            unsafe { (self.device_get_name)(buffer.as_mut_ptr(), buffer.len() as c_int, device) };
        if !result.is_success() {
            return Err(result);
        }
        buffer[buffer.len() - 1] = 0;
        // SAFETY: the buffer is NUL-terminated (its last byte was just set to 0).
        Ok(unsafe { CStr::from_ptr(buffer.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// `cuDeviceTotalMem_v2`.
    pub fn device_total_mem(&self, device: CuDevice) -> Result<u64, CuResult> {
        let mut bytes: usize = 0;
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.device_total_mem)(&mut bytes, device) };
        if result.is_success() {
            Ok(bytes as u64)
        } else {
            Err(result)
        }
    }

    /// Retains `device`'s primary context and makes it current on this thread.
    pub fn use_primary_context(&self, device: CuDevice) -> Result<(), CuResult> {
        let mut context: *mut c_void = std::ptr::null_mut();
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.primary_ctx_retain)(&mut context, device) };
        if !result.is_success() {
            return Err(result);
        }
        // SAFETY: `context` is the handle the driver just returned.
        let result = unsafe { (self.ctx_set_current)(context) };
        if result.is_success() {
            Ok(())
        } else {
            Err(result)
        }
    }

    /// Releases `device`'s primary context (retained by [`Driver::use_primary_context`]).
    pub fn release_primary_context(&self, device: CuDevice) -> CuResult {
        // SAFETY: no pointer arguments; the driver checks the device.
        unsafe { (self.primary_ctx_release)(device) }
    }

    /// `cuMemAlloc_v2` in the current context.
    pub fn alloc(&self, bytes: u64) -> Result<CuDevicePtr, CuResult> {
        let mut pointer: CuDevicePtr = 0;
        // SAFETY: the out-pointer is valid for the call.
        let result = unsafe { (self.mem_alloc)(&mut pointer, bytes as usize) };
        if result.is_success() {
            Ok(pointer)
        } else {
            Err(result)
        }
    }

    /// `cuMemFree_v2`.
    pub fn free(&self, pointer: CuDevicePtr) -> CuResult {
        // SAFETY: `pointer` was returned by `alloc` and is freed once.
        unsafe { (self.mem_free)(pointer) }
    }
}

/// A result code for people: `CUDA_ERROR_OUT_OF_MEMORY (2)`.
pub fn describe(result: CuResult) -> String {
    format!("{} ({})", result, result.0)
}
