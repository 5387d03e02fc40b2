//! What the guard costs a GPU process, measured side by side with and without `libvramguard.so`
//! preloaded, on the simulated driver with a realistic per-call latency (`SIMCUDA_LATENCY=2us`) and
//! with none. Prints medians, 99th percentiles and the difference; never asserts a timing.
//!
//!   cargo build --release --workspace && cargo bench --bench guard [-- --quick] [-- --only NAME]
//!
//! Sections (`--only` takes these names): `pairs` (cuMemAlloc_v2 + cuMemFree_v2 through each
//! client path), `lookups` (the CUDA runtime's start-up cuGetProcAddress lookups), `start` (a
//! whole short process, and a process that never touches CUDA), `contention` (1..16 processes on
//! one device), `wait` (release-to-wakeup under the wait policy), `footprint` (library size,
//! resident memory, ledger file size), `instructions` (instructions per pair counted by valgrind,
//! the figure a busy machine cannot move; skipped without valgrind). The figures come from the C client `benches/c/vg_bench.c`,
//! which times the calls from inside the process with CLOCK_MONOTONIC. `docs/benchmarks.md` holds
//! a table of them and how to read it.

#[allow(dead_code)] // shared with the story benchmark, which builds a test client too
#[path = "../common/cprogs.rs"]
mod cprogs;
mod instructions;
#[allow(dead_code)] // shared with the soak suite, which uses more of it
#[path = "../common/lab.rs"]
mod lab;
mod stats;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cprogs::CProgram;
use lab::{Artifacts, Lab};
use stats::{Histogram, Summary, format_ns};

/// The per-call latencies every figure is measured at.
const LATENCIES: &[&str] = &["0", "2us"];
/// The driver paths of the client.
const PATHS: &[&str] = &["direct", "dlsym", "procaddr"];
/// The routes the per-pair figures are taken on: (client path, `SIMCUDA_PROCADDR`). Each path
/// with the driver answering lookups with its exported symbols, and the runtime's path once more
/// with internal answers (the only path that looks anything up, so the only one they can change).
const PAIR_ROUTES: &[(&str, &str)] = &[
    ("direct", "exported"),
    ("dlsym", "exported"),
    ("procaddr", "exported"),
    ("procaddr", "internal"),
];

/// How a route is named in the tables.
fn route_label(path: &str, answers: &str) -> String {
    match answers {
        "exported" => path.to_owned(),
        _ => format!("{path} ({answers})"),
    }
}
/// Context cost, in the simulator and in the guard's estimate alike.
const CONTEXT_COST: &str = "64MiB";
/// No process of a benchmark may run longer than this.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// How much to measure.
#[derive(Clone, Copy)]
struct Effort {
    /// Runs of each configuration, alternating unguarded and guarded.
    repeats: usize,
    /// Runs of each configuration of the pair benchmark, alternating unguarded and guarded
    /// (short runs, many times: a burst of load on the machine then falls on both sides).
    pair_runs: usize,
    /// Batches per run of the pair benchmark.
    batches: u32,
    /// Process starts per configuration.
    starts: usize,
    /// Seconds each contention run lasts.
    contention_seconds: f64,
    /// Wait rounds per configuration.
    wait_rounds: u32,
}

const FULL: Effort = Effort {
    repeats: 3,
    pair_runs: 60,
    batches: 5,
    starts: 40,
    contention_seconds: 1.0,
    wait_rounds: 100,
};
const QUICK: Effort = Effort {
    repeats: 1,
    pair_runs: 10,
    batches: 2,
    starts: 8,
    contention_seconds: 0.3,
    wait_rounds: 20,
};

/// One section of the benchmark.
type Section = fn(&Bench);

struct Bench {
    artifacts: Artifacts,
    client: CProgram,
    effort: Effort,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<&str> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let mut rerun = String::from("cargo build --release --workspace && cargo bench --bench guard");
    if !args.is_empty() {
        rerun.push_str(" -- ");
        rerun.push_str(&args.join(" "));
    }
    println!("# rerun: {rerun}");
    println!(
        "# {} cores, {}, load average at start {}; every figure is unguarded vs guarded in the same run",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        utc_now(),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned())
    );

    let artifacts = lab::artifacts();
    let client = cprogs::build(
        "vg_bench",
        "vg-bench",
        &artifacts.release.join("bench-c"),
        &artifacts.release,
    );
    let bench = Bench {
        artifacts,
        client,
        effort: if quick { QUICK } else { FULL },
    };
    let sections: &[(&str, Section)] = &[
        ("pairs", pairs),
        ("instructions", instructions::instructions),
        ("lookups", lookups),
        ("start", start),
        ("contention", contention),
        ("wait", wait),
        ("footprint", footprint),
    ];
    for (name, section) in sections {
        if only.is_none_or(|o| o == *name) {
            section(&bench);
        }
    }
}

/// The current UTC date and time, `2026-11-24 21:40 UTC`, from `date` (no date crate needed).
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Bench {
    /// A fresh simulated card (`devices`) at per-call latency `latency`, with the guard's settings
    /// for benchmarks: contexts priced alike in both, no reserve, quiet.
    fn lab(&self, devices: &str, latency: &str) -> Lab {
        let lab = Lab::new(&self.artifacts, devices);
        lab.set_env("SIMCUDA_LATENCY", latency);
        lab.set_env("SIMCUDA_CONTEXT_COST", CONTEXT_COST);
        lab.set_env("VRAMGUARD_CONTEXT_SIZE", CONTEXT_COST);
        lab.set_env("VRAMGUARD_RESERVE", "0");
        lab.set_env("VRAMGUARD_LOG", "error");
        lab
    }

    /// Runs the client on `path` with `args`, guarded or not; panics with its output on failure.
    fn run(&self, lab: &Lab, path: &str, guarded: bool, args: &[&str]) -> String {
        self.run_answered(lab, path, "exported", guarded, args)
    }

    /// [`Bench::run`], the driver answering lookups in mode `answers` (`SIMCUDA_PROCADDR`).
    fn run_answered(
        &self,
        lab: &Lab,
        path: &str,
        answers: &str,
        guarded: bool,
        args: &[&str],
    ) -> String {
        let mut command = self.client_command(lab, path, answers, guarded);
        command.args(args);
        let output = run_checked(command);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The client command on `path` (its `--path` given), lookups answered in mode `answers`.
    fn client_command(&self, lab: &Lab, path: &str, answers: &str, guarded: bool) -> Command {
        let mut command = lab.command(self.client.for_path(path), guarded);
        command.env("SIMCUDA_PROCADDR", answers);
        command.arg("--path").arg(path);
        command
    }
}

/// Runs `command` to completion within [`RUN_DEADLINE`]; panics with its stderr if it fails.
fn run_checked(mut command: Command) -> Output {
    let description = format!("{command:?}");
    let output = lab::run_with_deadline(
        command.stdout(Stdio::piped()).stderr(Stdio::piped()),
        RUN_DEADLINE,
    );
    if !output.status.success() {
        panic!(
            "benchmark step failed ({}): {description}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Values of `key=<number>` in every line of `output` that starts with `prefix`.
fn field_values(output: &str, prefix: &str, key: &str) -> Vec<f64> {
    let key = format!("{key}=");
    output
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(key.as_str()))
        })
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// A line of a comparison table: unguarded and guarded summaries and the difference of medians.
fn compare_row(label: &str, unguarded: &[f64], guarded: &[f64]) {
    let (Some(u), Some(g)) = (Summary::of(unguarded), Summary::of(guarded)) else {
        println!("{label:<28} (no samples)");
        return;
    };
    println!(
        "{label:<28} {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>6.2}x  (n={}/{})",
        format_ns(u.median),
        format_ns(u.p99),
        format_ns(g.median),
        format_ns(g.p99),
        format_ns(g.median - u.median),
        g.median / u.median,
        u.count,
        g.count
    );
}

fn table_header(title: &str, unit: &str) {
    println!("\n## {title}");
    println!(
        "{:<28} {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>7}",
        unit, "unguarded", "p99", "guarded", "p99", "added", "ratio"
    );
}

/// Samples of one measurement, unguarded and guarded, taken in alternation.
fn alternate(repeats: usize, mut measure: impl FnMut(bool) -> Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    let (mut unguarded, mut guarded) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        unguarded.extend(measure(false));
        guarded.extend(measure(true));
    }
    (unguarded, guarded)
}

/// Added cost of one cuMemAlloc_v2 + cuMemFree_v2 pair (1 MiB), uncontended, per client path:
/// elapsed time, and the calling thread's CPU time (which time spent preempted by other
/// processes does not inflate: on a busy machine it is the steadier of the two).
fn pairs(bench: &Bench) {
    const BATCH: u32 = 1000;
    let per_pair = |output: &str, prefix: &str| -> Vec<f64> {
        output
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .map(|ns| ns / f64::from(BATCH))
            .collect()
    };
    let mut cpu_rows = Vec::new();
    pairs_header(
        "cuMemAlloc_v2 + cuMemFree_v2 pair, uncontended (elapsed time per pair; batches of 1000)",
    );
    for latency in LATENCIES {
        let lab = bench.lab("16GiB", latency);
        for &(path, answers) in PAIR_ROUTES {
            let batches = bench.effort.batches.to_string();
            let batch = BATCH.to_string();
            let (mut wall, mut cpu) = (Runs::default(), Runs::default());
            for _ in 0..bench.effort.pair_runs {
                for guarded in [false, true] {
                    let out = bench.run_answered(
                        &lab,
                        path,
                        answers,
                        guarded,
                        &[
                            "pairs",
                            "--chunk",
                            "1048576",
                            "--batches",
                            &batches,
                            "--batch",
                            &batch,
                        ],
                    );
                    wall.push(guarded, per_pair(&out, "batch_ns "));
                    cpu.push(guarded, per_pair(&out, "batch_cpu_ns "));
                }
            }
            let label = format!("{latency} / {}", route_label(path, answers));
            wall.print_row(&label);
            cpu_rows.push((label, cpu));
        }
    }
    pairs_header("the same pairs, CPU time of the calling thread per pair");
    for (label, cpu) in cpu_rows {
        cpu.print_row(&label);
    }
}

fn pairs_header(title: &str) {
    table_header(title, "latency / path");
    println!(
        "{:<28} (paired: the median over alternating runs of guarded minus unguarded)",
        ""
    );
}

/// The samples of each run of a pair benchmark, unguarded and guarded, in the order taken.
#[derive(Default)]
struct Runs {
    unguarded: Vec<Vec<f64>>,
    guarded: Vec<Vec<f64>>,
}

impl Runs {
    fn push(&mut self, guarded: bool, samples: Vec<f64>) {
        if guarded {
            &mut self.guarded
        } else {
            &mut self.unguarded
        }
        .push(samples);
    }

    /// The median over the runs, taken in alternation, of the guarded run's median less the
    /// unguarded one's: a slow spell of the machine (a neighbour, a frequency change) then
    /// falls on both sides of most differences instead of on one side of the pooled samples.
    fn paired_added(&self) -> Option<f64> {
        let differences: Vec<f64> = self
            .unguarded
            .iter()
            .zip(&self.guarded)
            .filter_map(|(u, g)| Some(stats::quantile(g, 0.5)? - stats::quantile(u, 0.5)?))
            .collect();
        stats::quantile(&differences, 0.5)
    }

    /// The comparison row of the pooled samples, then the paired difference.
    fn print_row(&self, label: &str) {
        let unguarded: Vec<f64> = self.unguarded.concat();
        let guarded: Vec<f64> = self.guarded.concat();
        compare_row(label, &unguarded, &guarded);
        if let Some(paired) = self.paired_added() {
            println!("{:<28} paired: {}", "", format_ns(paired));
        }
    }
}

/// Added cost of the CUDA runtime's start-up lookups: a probe and ~530 cuGetProcAddress calls.
fn lookups(bench: &Bench) {
    table_header(
        "start-up lookups through cuGetProcAddress (time per round of 528 lookups)",
        "latency",
    );
    for latency in LATENCIES {
        let lab = bench.lab("16GiB", latency);
        let (u, g) = alternate(bench.effort.repeats, |guarded| {
            let out = bench.run(&lab, "procaddr", guarded, &["lookups", "--rounds", "100"]);
            field_values(&out, "lookups ", "ns")
        });
        compare_row(latency, &u, &g);
    }
}

/// Added cost to a process start: a whole short client run (cuInit, primary context, one
/// allocation, exit), timed from outside, and cuInit-to-first-allocation, timed inside; and a
/// process that never uses CUDA (`true`), which only pays for loading the library.
fn start(bench: &Bench) {
    table_header(
        "process start (whole run: spawn to exit; init: cuInit to first allocation returned)",
        "latency / what",
    );
    for latency in LATENCIES {
        let lab = bench.lab("16GiB", latency);
        for path in ["direct", "procaddr"] {
            let mut init = (Vec::new(), Vec::new());
            let (u, g) = alternate(bench.effort.starts, |guarded| {
                let began = Instant::now();
                let out = bench.run(&lab, path, guarded, &["start", "--chunk", "1048576"]);
                let whole = began.elapsed().as_nanos() as f64;
                let inside = field_values(&out, "start ", "init_ns");
                if guarded {
                    init.1.extend(inside)
                } else {
                    init.0.extend(inside)
                }
                vec![whole]
            });
            compare_row(&format!("{latency} / {path} whole run"), &u, &g);
            compare_row(&format!("{latency} / {path} init"), &init.0, &init.1);
        }
    }
    let lab = bench.lab("16GiB", "0");
    let (u, g) = alternate(bench.effort.starts, |guarded| {
        let began = Instant::now();
        run_checked(lab.command(Path::new("true"), guarded));
        vec![began.elapsed().as_nanos() as f64]
    });
    compare_row("no CUDA: `true`", &u, &g);
}

/// Throughput and latency of 1..16 processes allocating and freeing 1 MiB on one device.
fn contention(bench: &Bench) {
    println!(
        "\n## contention: N processes allocating and freeing 1 MiB on one device (direct path)"
    );
    println!(
        "{:<16} {:>14} {:>10} {:>10} | {:>14} {:>10} {:>10} | {:>8}",
        "latency / procs", "unguarded/s", "median", "p99", "guarded/s", "median", "p99", "ratio"
    );
    for latency in LATENCIES {
        let lab = bench.lab("16GiB", latency);
        for processes in [1usize, 2, 4, 8, 16] {
            let unguarded = hammer(bench, &lab, processes, false);
            let guarded = hammer(bench, &lab, processes, true);
            let q = |h: &Histogram, q: f64| {
                h.quantile(q)
                    .map_or("-".to_owned(), |v| format_ns(v as f64))
            };
            println!(
                "{:<16} {:>14.0} {:>10} {:>10} | {:>14.0} {:>10} {:>10} | {:>7.2}x",
                format!("{latency} / {processes}"),
                unguarded.0,
                q(&unguarded.1, 0.5),
                q(&unguarded.1, 0.99),
                guarded.0,
                q(&guarded.1, 0.5),
                q(&guarded.1, 0.99),
                guarded.0 / unguarded.0
            );
        }
    }
}

/// Runs `processes` hammering clients over one shared window; returns pairs per second (all
/// processes together) and the merged per-pair latency histogram.
fn hammer(bench: &Bench, lab: &Lab, processes: usize, guarded: bool) -> (f64, Histogram) {
    let window = Duration::from_secs_f64(bench.effort.contention_seconds);
    let start_at = lab::monotonic_ns() + 500_000_000 + 20_000_000 * processes as u64;
    let until = start_at + window.as_nanos() as u64;
    let (start_at, until) = (start_at.to_string(), until.to_string());
    let children: Vec<_> = (0..processes)
        .map(|_| {
            let mut command = lab.command(bench.client.for_path("direct"), guarded);
            command.args([
                "--path",
                "direct",
                "hammer",
                "--chunk",
                "1048576",
                "--start-at",
                &start_at,
                "--until",
                &until,
            ]);
            std::thread::spawn(move || run_checked(command))
        })
        .collect();
    let mut histogram = Histogram::default();
    let mut pairs = 0.0;
    for child in children {
        let output = child.join().expect("a hammering process's thread panicked");
        let text = String::from_utf8_lossy(&output.stdout);
        pairs += field_values(&text, "hammer ", "pairs").iter().sum::<f64>();
        histogram.add_lines(&text);
    }
    (pairs / window.as_secs_f64(), histogram)
}

/// Time from the holder's release to the waiter's allocation returning: the guard's wait policy
/// (woken by the release) against a program retrying on its own every 1 ms without the guard.
fn wait(bench: &Bench) {
    table_header(
        "wait: release that makes room -> waiter's allocation returns (4 GiB card, 3 GiB held, 2 GiB asked)",
        "latency",
    );
    println!(
        "{:<28} unguarded: the waiter retries every 1 ms on CUDA_ERROR_OUT_OF_MEMORY; guarded: VRAMGUARD_POLICY=wait",
        ""
    );
    for latency in LATENCIES {
        let lab = bench.lab("4GiB", latency);
        lab.set_env("VRAMGUARD_POLICY", "wait");
        lab.set_env("VRAMGUARD_WAIT_TIMEOUT", "30s");
        let rounds = bench.effort.wait_rounds.to_string();
        let mut skipped = 0usize;
        let (u, g) = alternate(1, |guarded| {
            let mut args = vec![
                "waitpair",
                "--rounds",
                &rounds,
                "--hold",
                "3221225472",
                "--want",
                "2147483648",
                "--settle-us",
                "2000",
            ];
            if !guarded {
                args.extend(["--poll-us", "1000"]);
            }
            let out = bench.run(&lab, "procaddr", guarded, &args);
            let asked = field_values(&out, "round ", "asked_ns");
            let released = field_values(&out, "round ", "release_ns");
            let returned = field_values(&out, "round ", "returned_ns");
            let mut samples = Vec::new();
            for ((a, r), t) in asked.iter().zip(&released).zip(&returned) {
                // Only rounds where the request was made before the release measure the wake-up.
                if a < r {
                    samples.push(t - r)
                } else {
                    skipped += 1
                }
            }
            samples
        });
        compare_row(latency, &u, &g);
        if skipped > 0 {
            println!(
                "{:<28} ({skipped} rounds left out: the waiter asked only after the release)",
                ""
            );
        }
        if let Some(early) = g.iter().chain(&u).find(|&&d| d < 0.0) {
            println!(
                "{:<28} WARNING: an allocation returned {} before the release made room",
                "",
                format_ns(-early)
            );
        }
    }
}

/// Library size, resident memory added to a client, ledger file size.
fn footprint(bench: &Bench) {
    println!("\n## footprint");
    let library = &bench.artifacts.preload;
    let size = std::fs::metadata(library).map(|m| m.len()).unwrap_or(0);
    println!(
        "library {}: {} bytes ({:.0} KiB)",
        library.display(),
        size,
        size as f64 / 1024.0
    );
    let lab = bench.lab("16GiB", "0");
    for path in PATHS {
        let (u, g) = alternate(5, |guarded| {
            let out = bench.run(&lab, path, guarded, &["rss", "--chunk", "1048576"]);
            field_values(&out, "rss ", "end_kib")
        });
        let (Some(u), Some(g)) = (stats::quantile(&u, 0.5), stats::quantile(&g, 0.5)) else {
            continue;
        };
        println!(
            "resident memory ({path}): unguarded {u:.0} KiB, guarded {g:.0} KiB, added {:.0} KiB (VmRSS after cuInit + 1 allocation, median of 5)",
            g - u
        );
    }
    for file in lab.ledger_files() {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        println!(
            "ledger file {}: {} bytes ({} KiB), of which {} KiB in use in memory (after the runs above)",
            file.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            meta.len(),
            meta.len() / 1024,
            meta.blocks() * 512 / 1024
        );
    }
}
