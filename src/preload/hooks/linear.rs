//! Linear memory: `cuMemAlloc`, `cuMemAllocPitch`, `cuMemAllocManaged` and `cuMemFree`, in
//! their legacy 32-bit and `_v2` forms.

use std::ffi::c_uint;

use vramguard_core::cuda::{CuDevicePtr, CuResult};
use vramguard_core::settings::ManagedPolicy;
use vramguard_core::units::format_size;

use super::accounting::{On, accountable, allocate, free, read, record};
use super::hooks;
use crate::lookup::real;
use crate::process::tables::{Charge, Key};

hooks! {
    cuMemAlloc(dptr: *mut c_uint, bytesize: c_uint) => |call, what| allocate(
        what,
        u64::from(bytesize),
        On::Current,
        call,
        // SAFETY: written by the driver on success.
        || unsafe { read(dptr) }.map(|p| Key::Pointer(u64::from(p))),
    );
    cuMemAlloc_v2(dptr: *mut CuDevicePtr, bytesize: usize) => |call, what| allocate(
        what,
        bytesize as u64,
        On::Current,
        call,
        // SAFETY: written by the driver on success.
        || unsafe { read(dptr) }.map(Key::Pointer),
    );
    cuMemFree(dptr: c_uint) => |call| free(Key::Pointer(u64::from(dptr)), true, call);
    cuMemFree_v2(dptr: CuDevicePtr) => |call| free(Key::Pointer(dptr), true, call);
    cuMemAllocPitch(
        dptr: *mut c_uint,
        pitch: *mut c_uint,
        width: c_uint,
        height: c_uint,
        element_size: c_uint,
    ) => |call, what| allocate_pitched(
        what,
        u64::from(width),
        u64::from(height),
        call,
        // SAFETY: written by the driver on success.
        || unsafe { Some((u64::from(read(dptr)?), u64::from(read(pitch)?))) },
        |pointer| {
            // SAFETY: the pointer was just returned by the driver's legacy allocator.
            let _ = unsafe { real::cuMemFree(pointer as c_uint) };
        },
    );
    cuMemAllocPitch_v2(
        dptr: *mut CuDevicePtr,
        pitch: *mut usize,
        width: usize,
        height: usize,
        element_size: c_uint,
    ) => |call, what| allocate_pitched(
        what,
        width as u64,
        height as u64,
        call,
        // SAFETY: written by the driver on success.
        || unsafe { Some((read(dptr)?, read(pitch)? as u64)) },
        |pointer| {
            // SAFETY: the pointer was just returned by the driver.
            let _ = unsafe { real::cuMemFree_v2(pointer) };
        },
    );
    cuMemAllocManaged(dptr: *mut CuDevicePtr, bytesize: usize, flags: c_uint) => |call, what| {
        if crate::config::config().managed == ManagedPolicy::Ignore {
            return call();
        }
        allocate(
            what,
            bytesize as u64,
            On::Current,
            call,
            // SAFETY: written by the driver on success.
            || unsafe { read(dptr) }.map(Key::Pointer),
        )
    };
}

/// The pitch the guard admits before the driver answers: the width rounded up to 512 bytes (the
/// usual pitch alignment); the charge is then corrected to the pitch actually returned.
fn pitch_estimate(width: u64, height: u64) -> u64 {
    width
        .div_ceil(512)
        .saturating_mul(512)
        .saturating_mul(height)
}

/// Shared body of both pitched forms: `call` allocates, `result` reads (pointer, pitch).
fn allocate_pitched(
    what: &str,
    width: u64,
    height: u64,
    call: impl FnOnce() -> CuResult,
    result: impl Fn() -> Option<(u64, u64)>,
    undo: impl FnOnce(u64),
) -> CuResult {
    let estimate = pitch_estimate(width, height);
    let process = match accountable(estimate) {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let (device, context) = match process.current_device() {
        Ok(found) => found,
        Err(why) => return process.unaccounted(why, call),
    };
    let (admitted, outcome) = match process.call_admitted(device, context, estimate, what, call) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let Some((pointer, pitch)) = result() else {
        process.rollback(admitted);
        return outcome;
    };
    match process.commit_actual(device, admitted, pitch.saturating_mul(height)) {
        Some(bytes) => {
            record(
                process,
                Some(Key::Pointer(pointer)),
                Charge {
                    device: device.id,
                    bytes,
                },
                None,
                context,
            );
            outcome
        }
        None => {
            crate::log::warn(&format!(
                "{what}: the driver's pitch ({pitch} bytes a row, {} in all) takes more than fits; allocation undone",
                format_size(pitch.saturating_mul(height))
            ));
            undo(pointer);
            CuResult::OUT_OF_MEMORY
        }
    }
}
