//! What one cheap call costs in the simulated driver itself: `cuCtxGetCurrent`, `cuCtxGetDevice`
//! and `cuMemGetInfo_v2` in a tight loop, in-process through the exported entry points. The
//! guard's benchmark counts the driver calls the guard adds, so these must stay in the tens of
//! nanoseconds, as with the real driver. Prints nanoseconds per call; never asserts a timing.
//!
//!   cargo bench -p simcuda --bench calls [-- CALLS_PER_ROUND]

use std::ffi::c_void;
use std::hint::black_box;
use std::time::Instant;

use cuda::exports::{
    cuCtxGetCurrent, cuCtxGetDevice, cuCtxSetCurrent, cuDevicePrimaryCtxRetain, cuInit,
    cuMemGetInfo_v2,
};
use cuda::result::CuResult;

/// Rounds of each call; the best one is printed (the least disturbed by the rest of the machine).
const ROUNDS: usize = 5;

fn main() {
    let calls: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    // SAFETY: set before any simulator call, while this is the only thread.
    unsafe {
        std::env::set_var("SIMCUDA_STATE", dir.path().join("state"));
        std::env::set_var("SIMCUDA_DEVICES", "4GiB");
    }
    let mut context: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out-parameters; the context handle comes from the simulator.
    unsafe {
        assert_eq!(cuInit(0), CuResult::SUCCESS);
        assert_eq!(cuDevicePrimaryCtxRetain(&mut context, 0), CuResult::SUCCESS);
        assert_eq!(cuCtxSetCurrent(context), CuResult::SUCCESS);
    }
    let (mut device, mut free, mut total) = (0i32, 0usize, 0usize);
    let mut current: *mut c_void = std::ptr::null_mut();
    println!("# {calls} calls per round, best of {ROUNDS} rounds");
    // SAFETY: `current` is a valid, writable out-parameter.
    measure("cuCtxGetCurrent", calls, || unsafe {
        cuCtxGetCurrent(&mut current)
    });
    // SAFETY: `device` is a valid, writable out-parameter.
    measure("cuCtxGetDevice", calls, || unsafe {
        cuCtxGetDevice(&mut device)
    });
    // SAFETY: `free` and `total` are valid, writable out-parameters.
    measure("cuMemGetInfo_v2", calls, || unsafe {
        cuMemGetInfo_v2(&mut free, &mut total)
    });
}

/// Prints the best nanoseconds per call of `call` over [`ROUNDS`] rounds of `calls` calls.
fn measure(name: &str, calls: u32, mut call: impl FnMut() -> CuResult) {
    let best = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                assert_eq!(black_box(call()), CuResult::SUCCESS);
            }
            start.elapsed().as_nanos() as f64 / f64::from(calls)
        })
        .fold(f64::INFINITY, f64::min);
    println!("{name:<16} {best:6.1} ns/call");
}
