//! Contexts: created ones and primary ones are charged what they take on the card
//! ([`crate::admission`]), and when one goes, so does everything it owned.

use std::ffi::{c_int, c_uint, c_void};

use vramguard_core::cuda::{CuDevice, CuResult};

use super::accounting::{free, guarded_process, read, record};
use super::hooks;
use crate::driver::current;
use crate::functions::Handle;
use crate::lookup::real;
use crate::process::Process;
use crate::process::devices::Context;
use crate::process::tables::{Charge, Entry, Key};

/// Shared body of the `cuCtxCreate` forms: the context is charged what it takes on the card,
/// measured across its creation ([`Process::create_context`]).
fn create_context(
    what: &str,
    ctx: *mut Handle,
    dev: CuDevice,
    call: impl FnOnce() -> CuResult,
) -> CuResult {
    let process = match guarded_process() {
        Ok(process) => process,
        Err(answer) => return context_made(answer.unwrap_or_else(call)),
    };
    let device = match process.device(dev) {
        Ok(device) => device,
        Err(why) => return context_made(process.unaccounted(why, call)),
    };
    // A context that took more than fits is destroyed again (which also pops it off the
    // thread's stack, where creation pushed it).
    let undo = || {
        // SAFETY: written by the driver on success.
        if let Some(created) = unsafe { read(ctx) } {
            // SAFETY: the context the driver just created for this call, destroyed once.
            let _ = unsafe { real::cuCtxDestroy_v2(created) };
            // SAFETY: the caller's pointer, valid for writes per the driver's contract.
            unsafe { ctx.write(std::ptr::null_mut()) };
        }
    };
    let (bytes, result) = match process.create_context(device, what, call, undo) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let charge = Charge {
        device: device.id,
        bytes,
    };
    // SAFETY: written by the driver on success.
    let key = unsafe { read(ctx) }.map(|c| Key::Context(c as usize));
    record(process, key, charge, None, Context::Named);
    context_made(result)
}

/// After the driver's answer to a call that may have made a context: on success the handle may
/// be one the driver reused from a context destroyed a moment ago (on another device, perhaps),
/// whose device some thread may have cached before the destruction was seen; every cached
/// context device is forgotten before the program can use the new handle.
fn context_made(result: CuResult) -> CuResult {
    if result.is_success() {
        current::forget_contexts();
    }
    result
}

hooks! {
    cuCtxCreate(ctx: *mut Handle, flags: c_uint, dev: CuDevice) => |call, what| {
        create_context(what, ctx, dev, call)
    };
    cuCtxCreate_v2(ctx: *mut Handle, flags: c_uint, dev: CuDevice) => |call, what| {
        create_context(what, ctx, dev, call)
    };
    cuCtxCreate_v3(ctx: *mut Handle, params: *mut c_void, num_params: c_int, flags: c_uint, dev: CuDevice) => |call, what| {
        create_context(what, ctx, dev, call)
    };
    cuCtxCreate_v4(ctx: *mut Handle, params: *mut c_void, flags: c_uint, dev: CuDevice) => |call, what| {
        create_context(what, ctx, dev, call)
    };
    cuCtxDestroy(ctx: Handle) => |call| destroy_context(ctx, call);
    cuCtxDestroy_v2(ctx: Handle) => |call| destroy_context(ctx, call);
    cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CuDevice) => |call| {
        context_made(retain_primary(ctx, dev, call))
    };
    cuDevicePrimaryCtxRelease(dev: CuDevice) => |call| primary_released(dev, false, call);
    cuDevicePrimaryCtxRelease_v2(dev: CuDevice) => |call| primary_released(dev, false, call);
    cuDevicePrimaryCtxReset(dev: CuDevice) => |call| primary_released(dev, true, call);
    cuDevicePrimaryCtxReset_v2(dev: CuDevice) => |call| primary_released(dev, true, call);
}

/// A created context is destroyed: its own charge and everything it owned are released.
fn destroy_context(ctx: Handle, call: impl FnOnce() -> CuResult) -> CuResult {
    let process = guarded_process().ok();
    let owned = process.map_or_else(Vec::new, |p| p.tables().take_context(ctx as usize));
    let result = free(Key::Context(ctx as usize), false, call);
    context_gone(process, owned, None, result)
}

/// After the driver's answer to a call that may have destroyed a context: on success, forgets
/// every cached context device and releases `own` (the context's own charge) and what the
/// context `owned`; on failure, puts `owned` back.
fn context_gone(
    process: Option<&Process>,
    owned: Vec<(Key, Entry)>,
    own: Option<Charge>,
    result: CuResult,
) -> CuResult {
    if result.is_success() {
        current::forget_contexts();
    }
    let Some(process) = process else {
        return result;
    };
    if !result.is_success() {
        process.tables().put_back(owned);
        return result;
    }
    let charges = own
        .into_iter()
        .chain(owned.into_iter().map(|(_, entry)| entry.charge))
        .collect();
    release_all(process, charges);
    result
}

/// Releases every charge of `charges`.
fn release_all(process: &Process, charges: Vec<Charge>) {
    for charge in charges {
        process.release(Some(charge));
    }
}

/// The body of [`cuDevicePrimaryCtxRetain`]: the context's memory is charged at the first retain.
/// `call` is the real retain with `ctx` and `dev`.
fn retain_primary(ctx: *mut Handle, dev: CuDevice, call: impl FnOnce() -> CuResult) -> CuResult {
    let process = match guarded_process() {
        Ok(process) => process,
        Err(answer) => return answer.unwrap_or_else(call),
    };
    let device = match process.device(dev) {
        Ok(device) => device,
        Err(why) => return process.unaccounted(why, call),
    };
    let first = process.tables().primary_needs_charge(dev);
    let (charge, result) = if first {
        // The first retain creates the context: charged what it takes on the card; one that
        // took more than fits is released again.
        let undo = || {
            // SAFETY: releases the retain this call just made, once.
            let _ = unsafe { real::cuDevicePrimaryCtxRelease_v2(dev) };
        };
        match process.create_context(device, "the primary context", call, undo) {
            Ok((bytes, result)) => (
                Some(Charge {
                    device: device.id,
                    bytes,
                }),
                result,
            ),
            Err(code) => return code,
        }
    } else {
        let result = call();
        if !result.is_success() {
            return result;
        }
        (None, result)
    };
    // SAFETY: written by the driver on success.
    let handle = unsafe { read(ctx) }.map_or(0, |c| c as usize);
    let extra = process.tables().primary_retained(dev, handle, charge);
    process.release(extra);
    result
}

/// A primary-context release (`reset`: the context is gone whatever the count). When the
/// context goes, so does the memory it owned, taken out of the tables before the driver call.
fn primary_released(dev: CuDevice, reset: bool, call: impl FnOnce() -> CuResult) -> CuResult {
    let process = guarded_process().ok();
    let owned = process.map_or_else(Vec::new, |p| {
        let mut tables = p.tables();
        match tables.primary_handle_if_gone(dev, reset) {
            Some(handle) => tables.take_context(handle),
            None => Vec::new(),
        }
    });
    let result = call();
    let own = match process {
        Some(p) if result.is_success() && reset => p.tables().primary_reset(dev),
        Some(p) if result.is_success() => p.tables().primary_released(dev),
        _ => None,
    };
    context_gone(process, owned, own, result)
}
