//! Benchmark of the ledger's hot path: one reserve + commit + release of 1 MiB, timed one at a
//! time, uncontended and with 2, 4, 8 and 16 processes hammering the same device.
//!
//! Run: `cargo bench --bench ledger` (or `cargo bench --bench ledger -- --quick`).
//! Each worker process is this benchmark binary again, started with `LEDGER_BENCH_ROLE=worker`;
//! it writes its samples (nanoseconds, little-endian u32) to a file the parent merges.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vramguard_core::ledger::{Ledger, Request};

const ROLE_VAR: &str = "LEDGER_BENCH_ROLE";
const UUID: [u8; 16] = *b"ledger-bench-gpu";
const MIB: u64 = 1 << 20;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker needs {name}"))
}

/// Runs `iterations` timed reserve+commit+release cycles; returns the nanoseconds of each.
fn hammer(dir: &Path, iterations: usize, start_at_unix_ms: u64) -> Vec<u32> {
    let ledger = Ledger::open(dir).expect("open ledger");
    let dev = ledger
        .register_device(UUID, "Bench GPU", 1 << 40, 1 << 40)
        .expect("register");
    let me = ledger.join("ledger-bench").expect("join");
    let request = Request::default();
    while unix_ms() < start_at_unix_ms {
        std::thread::sleep(Duration::from_micros(200));
    }
    // Warm up caches and the branch predictor.
    for _ in 0..1000 {
        let r = ledger
            .reserve(me, dev, MIB, &request)
            .expect("warm-up reserve");
        ledger.commit(r);
        ledger.release(me, dev, MIB);
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let r = ledger.reserve(me, dev, MIB, &request).expect("reserve");
        ledger.commit(r);
        ledger.release(me, dev, MIB);
        samples.push(started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    ledger.leave(me);
    samples
}

fn worker() {
    let dir = PathBuf::from(env("LEDGER_BENCH_DIR"));
    let iterations: usize = env("LEDGER_BENCH_ITERATIONS").parse().expect("iterations");
    let start: u64 = env("LEDGER_BENCH_START").parse().expect("start");
    let samples = hammer(&dir, iterations, start);
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(env("LEDGER_BENCH_OUT"), bytes).expect("write samples");
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

fn run_processes(dir: &Path, processes: usize, iterations: usize) -> Vec<u32> {
    let exe = std::env::current_exe().expect("bench binary");
    let start = unix_ms() + 300;
    let outputs: Vec<PathBuf> = (0..processes)
        .map(|i| dir.join(format!("samples-{i}")))
        .collect();
    let mut children: Vec<_> = outputs
        .iter()
        .map(|out| {
            Command::new(&exe)
                .env(ROLE_VAR, "worker")
                .env("LEDGER_BENCH_DIR", dir.join("ledger"))
                .env("LEDGER_BENCH_ITERATIONS", iterations.to_string())
                .env("LEDGER_BENCH_START", start.to_string())
                .env("LEDGER_BENCH_OUT", out)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker did not finish within 300 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    outputs
        .iter()
        .flat_map(|out| {
            let bytes = std::fs::read(out).expect("read samples");
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("worker") {
        worker();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations = if quick { 20_000 } else { 200_000 };
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("vramguard-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "vramguard ledger: reserve + commit + release of 1 MiB on one device ({cores} CPU cores)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>10}",
        "processes", "median ns", "p99 ns", "p99.9 ns", "samples"
    );
    for processes in [1usize, 2, 4, 8, 16] {
        let per_process = (iterations / processes).max(1000);
        let mut samples = if processes == 1 {
            hammer(&dir.join("ledger"), per_process, 0)
        } else {
            run_processes(&dir, processes, per_process)
        };
        samples.sort_unstable();
        let label = if processes == 1 {
            "1 (uncontended, in-process)".to_string()
        } else {
            processes.to_string()
        };
        println!(
            "{label:<28} {:>10} {:>10} {:>12} {:>10}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            percentile(&samples, 0.999),
            samples.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "(each sample includes one Instant::now() pair, ~20-40 ns; rerun: cargo bench --bench ledger)"
    );
}
