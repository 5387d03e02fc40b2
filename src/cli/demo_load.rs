//! `vramguard __demo-load`: one "model load" of the demo. It reaches the driver the way many
//! programs do (`dlopen("libcuda.so.1")` and `dlsym`), takes the primary context of device 0,
//! allocates CHUNKS x CHUNK, holds it a moment ("inference") or until a file appears, frees it,
//! releases the context and exits.
//!
//! stdout: one line per event, for the demo to narrate. Exit codes follow the test clients: 0
//! loaded, 2 an allocation failed with CUDA_ERROR_OUT_OF_MEMORY, 3 cuInit failed, 1 otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use vramguard_core::cuda::CuResult;
use vramguard_core::units::{format_size, parse_size};

use super::driver::{Driver, describe};

/// The load's options.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// A name for the narration
    #[arg(long, default_value = "load")]
    name: String,
    /// How many chunks to allocate
    #[arg(long, default_value_t = 30)]
    chunks: u32,
    /// The size of each chunk
    #[arg(long, default_value = "100MiB", value_parser = parse_size)]
    chunk: u64,
    /// How long to hold the memory once loaded, in milliseconds
    #[arg(long, default_value_t = 300)]
    hold_ms: u64,
    /// Hold the memory once loaded until this file exists instead (at most 5 minutes)
    #[arg(long)]
    hold_until: Option<PathBuf>,
    /// Pause between chunks, in milliseconds (so that loads started together interleave)
    #[arg(long, default_value_t = 5)]
    pause_ms: u64,
}

/// Exit code: every chunk was allocated.
pub const LOADED: i32 = 0;
/// Exit code: an allocation failed with `CUDA_ERROR_OUT_OF_MEMORY`.
pub const OUT_OF_MEMORY: i32 = 2;
/// Exit code: `cuInit` failed.
pub const INIT_FAILED: i32 = 3;

/// Runs one load.
pub fn load(args: &LoadArgs) -> i32 {
    let name = &args.name;
    let driver = match Driver::open(Path::new("libcuda.so.1")) {
        Ok(driver) => driver,
        Err(e) => {
            println!("{name}: cannot open libcuda.so.1: {e}");
            return 1;
        }
    };
    let result = driver.init();
    if !result.is_success() {
        println!("{name}: cuInit failed: {}", describe(result));
        return INIT_FAILED;
    }
    let device = match driver.device(0) {
        Ok(device) => device,
        Err(result) => {
            println!("{name}: no device 0: {}", describe(result));
            return 1;
        }
    };
    if let Err(result) = driver.use_primary_context(device) {
        println!("{name}: cannot create a context: {}", describe(result));
        return if result == CuResult::OUT_OF_MEMORY {
            OUT_OF_MEMORY
        } else {
            1
        };
    }
    let code = load_chunks(&driver, args);
    driver.release_primary_context(device);
    code
}

/// Allocates the chunks, holds them, frees them.
fn load_chunks(driver: &Driver, args: &LoadArgs) -> i32 {
    let name = &args.name;
    let mut held = Vec::new();
    for index in 0..args.chunks {
        match driver.alloc(args.chunk) {
            Ok(pointer) => held.push(pointer),
            Err(result) => {
                println!(
                    "{name}: chunk {}/{} failed after {}: {}",
                    index + 1,
                    args.chunks,
                    format_size(held.len() as u64 * args.chunk),
                    describe(result)
                );
                for pointer in held {
                    driver.free(pointer);
                }
                return if result == CuResult::OUT_OF_MEMORY {
                    OUT_OF_MEMORY
                } else {
                    1
                };
            }
        }
        std::thread::sleep(Duration::from_millis(args.pause_ms));
    }
    println!(
        "{name}: loaded {} in {} chunks",
        format_size(held.len() as u64 * args.chunk),
        args.chunks
    );
    match &args.hold_until {
        Some(file) => wait_for_file(file, Duration::from_secs(300)),
        None => std::thread::sleep(Duration::from_millis(args.hold_ms)),
    }
    for pointer in held {
        driver.free(pointer);
    }
    println!("{name}: done");
    LOADED
}

/// Waits until `file` exists, or `longest` passed (whoever was to create it is gone).
fn wait_for_file(file: &Path, longest: Duration) {
    let deadline = Instant::now() + longest;
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
