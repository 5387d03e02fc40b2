//! The soak and fault suite, as a command (not part of the default test run):
//!
//!   cargo build --release --workspace
//!   cargo run --release --example soak -- --processes 64 --seconds 300
//!
//! Up to 64 guarded processes allocate, free, wait, fork and exit at random on two simulated
//! devices while processes are killed and stopped (lock holders among them) and the ledger is
//! removed, damaged and truncated; an independent observer checks every sample. It ends with one
//! line, `soak: operations=N faults=N max_overcommit_bytes=0 leaked_bytes=0 hangs=0 crashes=0
//! disagreements=0 card_disagreements=0`, and exits with status 1 if any figure after `faults` is
//! not zero. See docs/benchmarks.md.

#[path = "suite/mod.rs"]
mod suite;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Soak and fault suite of vramguard on the simulated driver.
#[derive(Parser, Debug)]
#[command(name = "soak")]
struct Args {
    /// Concurrent worker processes (1..=64).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,
    /// How long the storm lasts, in seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// The two simulated devices (SIMCUDA_DEVICES syntax).
    #[arg(long, default_value = "4GiB;6GiB")]
    devices: String,
    /// Memory the guard keeps free on each card (VRAMGUARD_RESERVE).
    #[arg(long, default_value = "128MiB")]
    reserve: String,
    /// Largest single allocation of a worker, in MiB.
    #[arg(long, default_value_t = 256)]
    max_chunk_mib: u64,
    /// Inject no faults (load only).
    #[arg(long)]
    no_faults: bool,
    /// Workers never fork children.
    #[arg(long)]
    no_forks: bool,
    /// Mean time between two faults, in milliseconds.
    #[arg(long, default_value_t = 300)]
    fault_interval_ms: u64,
    /// Time between two observer samples, in milliseconds.
    #[arg(long, default_value_t = 50)]
    sample_interval_ms: u64,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every fault and event as it happens.
    #[arg(long, short)]
    verbose: bool,
    /// Run the same storm without the guard (triage: only the card's own checks apply).
    #[arg(long)]
    unguarded: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let config = suite::Config {
        processes: usize::from(args.processes),
        duration: Duration::from_secs_f64(args.seconds.max(0.0)),
        devices: args.devices,
        reserve: args.reserve,
        max_chunk: args.max_chunk_mib.max(1) << 20,
        faults: !args.no_faults,
        forks: !args.no_forks,
        fault_interval: Duration::from_millis(args.fault_interval_ms.max(1)),
        sample_interval: Duration::from_millis(args.sample_interval_ms.max(1)),
        seed,
        verbose: args.verbose,
        guarded: !args.unguarded,
    };
    println!(
        "soak: {} processes for {:?} on \"{}\", faults {}, seed {seed} (rerun: cargo run --release --example soak -- \
         --processes {} --seconds {} --seed {seed}{}{}{})",
        config.processes,
        config.duration,
        config.devices,
        if config.faults { "on" } else { "off" },
        config.processes,
        args.seconds,
        if config.faults { "" } else { " --no-faults" },
        if config.forks { "" } else { " --no-forks" },
        if config.guarded { "" } else { " --unguarded" }
    );
    let summary = suite::run(&config);
    println!("{}", summary.details());
    println!("{summary}");
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
