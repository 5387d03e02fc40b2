//! The simulated NVIDIA management library: a stand-in for `libnvidia-ml.so.1` on machines
//! without a GPU, built as `target/release/libnvidia_ml.so` (soname `libnvidia-ml.so.1`). It
//! reports the simulated card of the card-state file (`SIMCUDA_STATE`, the simulated driver's):
//! its devices in machine order (NVML ignores `CUDA_VISIBLE_DEVICES`), each one's memory (used:
//! everything the card holds, every process's allocations and contexts, guarded or not) and the
//! live processes with memory or a context on it. `SIMCUDA_NVML_PROCESSES=0` makes it list no
//! process, as NVML does inside a container whose pid namespace is not the host's.
//!
//! Entry points follow `nvml.h`: `nvmlInit_v2` (counted; `nvmlShutdown` undoes one) before
//! anything but `nvmlErrorString`; null pointers are `NVML_ERROR_INVALID_ARGUMENT`; a buffer too
//! small is `NVML_ERROR_INSUFFICIENT_SIZE` (with the count needed, for the process list). Device
//! handles are the device's index plus one, checked on every use. Every export catches panics
//! and returns `NVML_ERROR_UNKNOWN`. It reads the card and never joins it: loading it creates no
//! process on the card.

use std::ffi::{CStr, c_char, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};

use simcard::config::{self, CardSpec};
use simcard::state::CardState;
use vramguard_core::nvml::{MemoryInfo, NvmlReturn, ProcessInfo};

/// `nvmlDevice_t`.
type Device = *mut c_void;

/// The card this process's initialisations opened, and how many are outstanding.
struct Session {
    card: CardState,
    inits: u32,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

/// A result inside this library: `Err` is the code to return.
type Outcome = Result<(), NvmlReturn>;

/// Runs an entry point's body with the open card; panics become `NVML_ERROR_UNKNOWN`.
fn with_card(body: impl FnOnce(&CardState) -> Outcome) -> NvmlReturn {
    boundary(|| {
        let session = SESSION.lock().unwrap_or_else(PoisonError::into_inner);
        match session.as_ref() {
            Some(session) => body(&session.card),
            None => Err(NvmlReturn::UNINITIALIZED),
        }
    })
}

/// The panic boundary of every export.
fn boundary(body: impl FnOnce() -> Outcome) -> NvmlReturn {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => NvmlReturn::SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => NvmlReturn::UNKNOWN,
    }
}

/// Writes `value` to the caller's `target`.
///
/// # Safety
/// `target` is null or valid for writing one `T`.
unsafe fn put<T>(target: *mut T, value: T) -> Outcome {
    if target.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and valid for writes per this function's contract.
    unsafe { target.write(value) };
    Ok(())
}

/// Copies `text` and a NUL into the caller's buffer of `len` bytes.
///
/// # Safety
/// `buffer` is null or valid for writing `len` bytes.
unsafe fn put_string(buffer: *mut c_char, len: c_uint, text: &str) -> Outcome {
    if buffer.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    let bytes = text.as_bytes();
    if (len as usize) <= bytes.len() {
        return Err(NvmlReturn::INSUFFICIENT_SIZE);
    }
    // SAFETY: `buffer` holds `len > bytes.len()` bytes; we write `bytes.len() + 1` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len());
        buffer.add(bytes.len()).write(0);
    }
    Ok(())
}

/// The device index a handle stands for, if the card has it.
fn index_of(card: &CardState, device: Device) -> Result<usize, NvmlReturn> {
    (device as usize)
        .checked_sub(1)
        .filter(|&index| index < card.device_count())
        .ok_or(NvmlReturn::INVALID_ARGUMENT)
}

fn handle_of(index: usize) -> Device {
    (index + 1) as Device
}

/// The description `nvmlErrorString` gives each code.
fn describe(code: NvmlReturn) -> &'static CStr {
    match code {
        NvmlReturn::SUCCESS => c"Success",
        NvmlReturn::UNINITIALIZED => c"Uninitialized",
        NvmlReturn::INVALID_ARGUMENT => c"Invalid Argument",
        NvmlReturn::NOT_SUPPORTED => c"Not Supported",
        NvmlReturn::NO_PERMISSION => c"Insufficient Permissions",
        NvmlReturn::NOT_FOUND => c"Not Found",
        NvmlReturn::INSUFFICIENT_SIZE => c"Insufficient Size",
        NvmlReturn::DRIVER_NOT_LOADED => c"Driver Not Loaded",
        NvmlReturn::FUNCTION_NOT_FOUND => c"Function Not Found",
        NvmlReturn::GPU_IS_LOST => c"GPU is lost",
        _ => c"Unknown Error",
    }
}

fn init() -> NvmlReturn {
    boundary(|| {
        let mut session = SESSION.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(session) = session.as_mut() {
            session.inits = session.inits.saturating_add(1);
            return Ok(());
        }
        // The card exists as soon as anyone looks at it, as the simulated driver creates it.
        let card = CardState::open(&config::state_path(), CardSpec::from_env)
            .map_err(|_| NvmlReturn::DRIVER_NOT_LOADED)?;
        *session = Some(Session { card, inits: 1 });
        Ok(())
    })
}

/// `nvmlInit_v2`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    init()
}

/// `nvmlInit` (the first version, the same here).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> NvmlReturn {
    init()
}

/// `nvmlShutdown`: undoes one initialisation; the last one closes the card.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    boundary(|| {
        let mut session = SESSION.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(open) = session.as_mut() else {
            return Err(NvmlReturn::UNINITIALIZED);
        };
        open.inits = open.inits.saturating_sub(1);
        if open.inits == 0 {
            *session = None;
        }
        Ok(())
    })
}

/// `nvmlErrorString`: a static description of any code (no initialisation needed).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(code: NvmlReturn) -> *const c_char {
    describe(code).as_ptr()
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` is null or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: per this function's contract.
    with_card(|card| unsafe { put(count, card.device_count() as c_uint) })
}

/// `nvmlDeviceGetCount` (the first version, the same here).
///
/// # Safety
/// `count` is null or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: the same contract.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

/// `nvmlDeviceGetHandleByIndex_v2`.
///
/// # Safety
/// `device` is null or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut Device,
) -> NvmlReturn {
    with_card(|card| {
        let index = index as usize;
        if index >= card.device_count() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: per this function's contract.
        unsafe { put(device, handle_of(index)) }
    })
}

/// `nvmlDeviceGetHandleByIndex` (the first version, the same here).
///
/// # Safety
/// `device` is null or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut Device,
) -> NvmlReturn {
    // SAFETY: the same contract.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

/// `nvmlDeviceGetHandleByUUID`: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
///
/// # Safety
/// `uuid` is null or NUL-terminated; `device` is null or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut Device,
) -> NvmlReturn {
    with_card(|card| {
        if uuid.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: non-null and NUL-terminated per this function's contract.
        let text = unsafe { CStr::from_ptr(uuid) }.to_string_lossy();
        let wanted = text
            .starts_with("GPU-")
            .then(|| config::parse_uuid(&text))
            .flatten()
            .ok_or(NvmlReturn::NOT_FOUND)?;
        let index = card
            .uuids()
            .iter()
            .position(|uuid| *uuid == wanted)
            .ok_or(NvmlReturn::NOT_FOUND)?;
        // SAFETY: per this function's contract.
        unsafe { put(device, handle_of(index)) }
    })
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` is null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Device,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    with_card(|card| {
        let index = index_of(card, device)?;
        let uuid_bytes = card
            .uuids()
            .get(index)
            .copied()
            .ok_or(NvmlReturn::INVALID_ARGUMENT)?;
        let text = config::format_uuid(&uuid_bytes);
        // SAFETY: per this function's contract.
        unsafe { put_string(uuid, length, &text) }
    })
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` is null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: Device,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    with_card(|card| {
        let index = index_of(card, device)?;
        let record = card.device(index).ok_or(NvmlReturn::INVALID_ARGUMENT)?;
        // SAFETY: per this function's contract.
        unsafe { put_string(name, length, &simcard::state::read_name(record)) }
    })
}

/// `nvmlDeviceGetMemoryInfo`: total is the device's capacity, used what the card holds (dead
/// processes' memory given back first, as the real driver frees it at once).
///
/// # Safety
/// `memory` is null or valid for writing an `nvmlMemory_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: Device,
    memory: *mut MemoryInfo,
) -> NvmlReturn {
    with_card(|card| {
        let index = index_of(card, device)?;
        card.settle();
        let record = card.device(index).ok_or(NvmlReturn::INVALID_ARGUMENT)?;
        let total = record.capacity.load(std::sync::atomic::Ordering::Relaxed);
        let used = record
            .used
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(total);
        let info = MemoryInfo {
            total,
            free: total - used,
            used,
        };
        // SAFETY: per this function's contract.
        unsafe { put(memory, info) }
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`: every live process with memory or a context on
/// the device (none under `SIMCUDA_NVML_PROCESSES=0`). With fewer than that many entries in
/// `infos` (`*count`), answers `NVML_ERROR_INSUFFICIENT_SIZE` with `*count` set to the number.
///
/// # Safety
/// `count` is null or valid for reading and writing; `infos` is null or valid for writing
/// `*count` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: Device,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    with_card(|card| {
        let index = index_of(card, device)?;
        if count.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        card.settle();
        let holders = if config::nvml_processes_from_env() {
            card.holders(index)
        } else {
            Vec::new()
        };
        // SAFETY: non-null and readable per this function's contract.
        let room = unsafe { count.read() } as usize;
        let needed = holders.len() as c_uint;
        if holders.len() > room || (infos.is_null() && !holders.is_empty()) {
            // SAFETY: non-null and writable per this function's contract.
            unsafe { count.write(needed) };
            return Err(NvmlReturn::INSUFFICIENT_SIZE);
        }
        for (i, (pid, used)) in holders.into_iter().enumerate() {
            let info = ProcessInfo {
                pid: pid as u32,
                used_gpu_memory: used,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            };
            // SAFETY: `infos` holds `room > i` entries per this function's contract.
            unsafe { infos.add(i).write(info) };
        }
        // SAFETY: non-null and writable per this function's contract.
        unsafe { count.write(needed) };
        Ok(())
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v2` (the same structure as `_v3`).
///
/// # Safety
/// As for `nvmlDeviceGetComputeRunningProcesses_v3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: Device,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    // SAFETY: the same contract.
    unsafe { nvmlDeviceGetComputeRunningProcesses_v3(device, count, infos) }
}
