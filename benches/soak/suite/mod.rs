//! The soak and fault suite: many guarded GPU processes allocating, freeing, waiting, forking and
//! exiting at random on two simulated devices for a set time, while faults are injected and an
//! independent observer checks the guard's promises at every sample.
//!
//! Run by `cargo run --release --example soak -- [options]` (benches/soak/soak.rs) and, short, by
//! `tests/soak_short.rs`. What is checked, and how "agree" is defined, is in `docs/benchmarks.md`
//! (section "Soak and fault suite") and in [`observer`].

#[allow(dead_code)] // shared with the benchmark harness, which uses more of it
#[path = "../../common/cprogs.rs"]
pub mod cprogs;
#[allow(dead_code)] // shared with the benchmark harness, which uses more of it
#[path = "../../common/lab.rs"]
pub mod lab;

mod faults;
mod observer;
mod worker;

use std::fmt;
use std::time::{Duration, Instant};

use faults::FaultInjector;
use lab::Lab;
use observer::Observer;
use worker::{Exit, Worker, WorkerPlan};

/// How long a guarded wait may last (`VRAMGUARD_WAIT_TIMEOUT` of the waiting workers).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(2);
/// A driver call in progress for longer than this is a hang. It covers the longest legitimate
/// block (a wait, then a ledger lock held by a process stopped for the longest stop we inject,
/// up to the ledger's own lock deadline) with room to spare on a loaded machine.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);
/// After the run's end, how long the workers have to finish before they count as hung.
pub const FINISH_GRACE: Duration = Duration::from_secs(25);
/// Device memory each context costs, in the simulator and in the guard's estimate alike.
pub const CONTEXT_COST: u64 = 32 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent worker processes (1..=64).
    pub processes: usize,
    /// How long the storm lasts.
    pub duration: Duration,
    /// The simulated devices (`SIMCUDA_DEVICES` syntax; two devices).
    pub devices: String,
    /// Memory the guard keeps free on each card (`VRAMGUARD_RESERVE`).
    pub reserve: String,
    /// Largest single allocation of a worker.
    pub max_chunk: u64,
    /// Inject faults (kills, stops, ledger removal, damage and truncation).
    pub faults: bool,
    /// Let the workers fork children now and then.
    pub forks: bool,
    /// Mean time between two faults.
    pub fault_interval: Duration,
    /// Time between two observer samples.
    pub sample_interval: Duration,
    /// Seed of every random choice (workers' and faults').
    pub seed: u64,
    /// Print what happens (faults, disagreements, crashes) as it happens.
    pub verbose: bool,
    /// Preload the guard into the workers (false: the same storm on the bare simulator, to tell
    /// the guard's faults from the test bed's; only the card checks then apply).
    pub guarded: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            processes: 16,
            duration: Duration::from_secs(60),
            devices: "4GiB;6GiB".to_owned(),
            reserve: "128MiB".to_owned(),
            max_chunk: 256 << 20,
            faults: true,
            forks: true,
            fault_interval: Duration::from_millis(300),
            sample_interval: Duration::from_millis(50),
            seed: 1,
            verbose: false,
            guarded: true,
        }
    }
}

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Driver calls the workers made.
    pub operations: u64,
    /// Faults injected.
    pub faults: u64,
    /// The largest excess of a device's charged bytes over its budget (ledger) or of the card's
    /// used or peak bytes over its capacity (simulator) seen at any sample. Must be 0.
    pub max_overcommit_bytes: u64,
    /// Bytes still charged in the ledger or used on the card after every process has exited and
    /// the dead were reclaimed. Must be 0.
    pub leaked_bytes: u64,
    /// Bytes left charged by dead processes in ledgers that were removed with their directory
    /// (unreachable files that vanish with their last member). Informational.
    pub stranded_bytes: u64,
    /// Driver calls that ran past [`HANG_LIMIT`], and workers that did not finish in
    /// [`FINISH_GRACE`] after the end. Must be 0.
    pub hangs: u64,
    /// Workers that died of a signal we did not send or exited with an error. Must be 0.
    pub crashes: u64,
    /// Workers that died of SIGBUS after we truncated a ledger file they had mapped (or were
    /// attaching to): the documented limitation of a truncation (docs/limitations.md), not a
    /// crash. Informational.
    pub truncation_sigbus: u64,
    /// Samples in which the ledger's charges of a quiescent live process differed from what it
    /// holds (its own count, which the card must match too). Must be 0.
    pub disagreements: u64,
    /// Samples in which the simulator's bytes of a quiescent live process differed from what it
    /// holds (a fault of the test bed, not of the guard). Must be 0.
    pub card_disagreements: u64,
    /// Workers started.
    pub workers: u64,
    /// Children the workers forked (they exit on their own, holding their parent's memory alive
    /// until then).
    pub forks: u64,
    /// Samples taken.
    pub samples: u64,
    /// Process-device pairs compared by the agreement check.
    pub comparisons: u64,
    /// Requests the simulated driver refused (the guard admitted them, the card could not hold
    /// them): expected only while a ledger is unusable or being rebuilt. Informational.
    pub driver_refusals: u64,
    /// Largest excess over a budget seen within [`observer::MERGE_GRACE`] of a fault that made
    /// the members of two ledgers merge into one (a removed file, a damaged one rebuilt): what
    /// both ledgers' members hold is held, and can exceed the budget until they free it. The
    /// card itself is never over-committed (its own checks stay). Informational.
    pub merged_over_budget_bytes: u64,
    /// Faults by kind, for the detail line.
    pub faults_by_kind: Vec<(&'static str, u64)>,
}

impl Summary {
    /// True when every must-be-zero figure is zero.
    pub fn passed(&self) -> bool {
        self.max_overcommit_bytes == 0
            && self.leaked_bytes == 0
            && self.hangs == 0
            && self.crashes == 0
            && self.disagreements == 0
            && self.card_disagreements == 0
    }

    /// The detail line printed before the summary line.
    pub fn details(&self) -> String {
        let kinds: Vec<String> = self
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "soak details: workers={} forks={} samples={} comparisons={} driver_refusals={} merged_over_budget_bytes={} stranded_bytes={} truncation_sigbus={} faults_by_kind=[{}]",
            self.workers,
            self.forks,
            self.samples,
            self.comparisons,
            self.driver_refusals,
            self.merged_over_budget_bytes,
            self.stranded_bytes,
            self.truncation_sigbus,
            kinds.join(" ")
        )
    }
}

impl fmt::Display for Summary {
    /// The one summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "soak: operations={} faults={} max_overcommit_bytes={} leaked_bytes={} hangs={} crashes={} disagreements={} card_disagreements={}",
            self.operations,
            self.faults,
            self.max_overcommit_bytes,
            self.leaked_bytes,
            self.hangs,
            self.crashes,
            self.disagreements,
            self.card_disagreements
        )
    }
}

/// Runs the storm described by `config` and returns what the observer found.
pub fn run(config: &Config) -> Summary {
    assert!(
        (1..=64).contains(&config.processes),
        "processes must be 1..=64"
    );
    let artifacts = lab::artifacts();
    let programs = cprogs::build(
        "vg_soak_worker",
        "vg-soak-worker",
        &artifacts.release.join("bench-c"),
        &artifacts.release,
    );
    let lab = Lab::new(&artifacts, &config.devices);
    lab.set_env("SIMCUDA_CONTEXT_COST", &CONTEXT_COST.to_string());
    lab.set_env("VRAMGUARD_CONTEXT_SIZE", &CONTEXT_COST.to_string());
    lab.set_env("VRAMGUARD_RESERVE", &config.reserve);
    lab.set_env(
        "VRAMGUARD_WAIT_TIMEOUT",
        &format!("{}ms", WAIT_TIMEOUT.as_millis()),
    );
    lab.set_env("VRAMGUARD_LOG", "warn");
    std::fs::create_dir_all(lab.dir().join("workers"))
        .expect("cannot create the workers' directory");
    worker::become_subreaper();

    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut observer = Observer::new(&lab, config.verbose);
    let mut injector = FaultInjector::new(&lab, config, rng.u64(..));
    let mut summary = Summary::default();
    let start = Instant::now();
    let end = start + config.duration;
    let until_ns = lab::monotonic_ns() + config.duration.as_nanos() as u64;
    let mut workers: Vec<Worker> = Vec::new();
    let mut next_sample = start;

    while Instant::now() < end {
        reap(&mut workers, &mut summary, &mut injector, config.verbose);
        // Keep the crowd at full size; no newcomers in the last half second.
        while workers.len() < config.processes
            && end.saturating_duration_since(Instant::now()) > Duration::from_millis(500)
        {
            let plan = WorkerPlan::random(&mut rng, until_ns, config.max_chunk, config.forks);
            workers.push(Worker::start(
                &lab,
                &programs,
                plan,
                summary.workers,
                config.guarded,
            ));
            summary.workers += 1;
        }
        if Instant::now() >= next_sample {
            observer.sample(&workers, &mut summary);
            next_sample = Instant::now() + config.sample_interval;
        }
        if config.faults {
            injector.tick(&workers, &mut observer);
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // The end: everybody runs again and finishes on their own, or is a hang.
    injector.resume_all();
    let finish_by = Instant::now() + FINISH_GRACE;
    while !workers.is_empty() && Instant::now() < finish_by {
        reap(&mut workers, &mut summary, &mut injector, config.verbose);
        if Instant::now() >= next_sample {
            observer.sample(&workers, &mut summary);
            next_sample = Instant::now() + config.sample_interval;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for mut worker in workers.drain(..) {
        eprintln!(
            "soak: worker {} did not finish {FINISH_GRACE:?} after the end: hang",
            worker.pid()
        );
        summary.hangs += 1;
        worker.kill();
        summary.operations += worker.final_operations();
        summary.forks += worker.final_forks();
    }
    worker::reap_orphans(&[], Duration::from_secs(10));

    observer.sample(&[], &mut summary);
    observer.finish(&mut summary);
    summary.faults = injector.total();
    summary.faults_by_kind = injector.by_kind();
    summary
}

/// Collects the workers that exited, classifying each exit.
fn reap(
    workers: &mut Vec<Worker>,
    summary: &mut Summary,
    injector: &mut FaultInjector,
    verbose: bool,
) {
    workers.retain_mut(|worker| match worker.try_exit() {
        None => true,
        Some(exit) => {
            summary.operations += worker.final_operations();
            summary.forks += worker.final_forks();
            let expected = match exit {
                Exit::Code(0) => true,
                Exit::Signal(libc::SIGKILL) => injector.killed(worker.pid()),
                Exit::Signal(libc::SIGBUS) if injector.exposed_to_truncation(worker.pid()) => {
                    summary.truncation_sigbus += 1;
                    eprintln!(
                        "soak: worker {} ({}) died of SIGBUS after its ledger file was truncated \
                         (documented limitation)",
                        worker.pid(),
                        worker.describe()
                    );
                    true
                }
                _ => false,
            };
            injector.forget(worker.pid());
            if !expected {
                summary.crashes += 1;
                eprintln!(
                    "soak: worker {} ({}) crashed: {exit:?}\n{}",
                    worker.pid(),
                    worker.describe(),
                    worker.log_tail()
                );
            } else if verbose && exit != Exit::Code(0) {
                eprintln!("soak: worker {} ended by {exit:?}", worker.pid());
            }
            false
        }
    });
    worker::reap_orphans(workers, Duration::ZERO);
}
