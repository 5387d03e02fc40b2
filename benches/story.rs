//! The user's story in figures: three loaders (3 GiB each in 100 MiB chunks, plus a context)
//! start at once on a fragile simulated 4 GiB card (an over-commit poisons it, as on the user's
//! laptop), all three reaching the driver the CUDA runtime's way (`cuGetProcAddress`), without
//! the guard and under each policy, with the driver answering lookups with its exported symbols
//! and with internal functions (`SIMCUDA_PROCADDR`). Prints, per configuration and over several
//! runs, how many loads completed, how many were refused cleanly (`CUDA_ERROR_OUT_OF_MEMORY`
//! from the guard), how many requests the card itself refused, the card's peak and whether it
//! was poisoned. Never asserts: the assertions are in `tests/guard_scenario.rs`.
//!
//!   cargo build --release --workspace && cargo bench --bench story [-- --runs N]

#[path = "common/cprogs.rs"]
#[allow(dead_code)] // shared with the guard benchmark and the soak suite
mod cprogs;
#[allow(dead_code)] // shared with the guard benchmark and the soak suite
#[path = "common/lab.rs"]
mod lab;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lab::{Artifacts, Lab};

const CARD: &str = "size=4GiB,name=NVIDIA GeForce GTX 1650";
const GIB: f64 = (1u64 << 30) as f64;
/// Each loader keeps its own pace, as real loaders do.
const PACES_MS: [&str; 3] = ["10", "13", "17"];
const DEADLINE: Duration = Duration::from_secs(120);

/// A configuration: a name and the guard's settings (`None`: unguarded).
type Configuration = (
    &'static str,
    Option<&'static [(&'static str, &'static str)]>,
);

const CONFIGURATIONS: &[Configuration] = &[
    ("unguarded", None),
    (
        "deny + expect 3GiB",
        Some(&[("VRAMGUARD_POLICY", "deny"), ("VRAMGUARD_EXPECT", "3GiB")]),
    ),
    ("deny", Some(&[("VRAMGUARD_POLICY", "deny")])),
    (
        "wait + expect 3GiB",
        Some(&[
            ("VRAMGUARD_POLICY", "wait"),
            ("VRAMGUARD_EXPECT", "3GiB"),
            ("VRAMGUARD_WAIT_TIMEOUT", "60s"),
        ]),
    ),
    (
        "wait",
        Some(&[
            ("VRAMGUARD_POLICY", "wait"),
            ("VRAMGUARD_WAIT_TIMEOUT", "60s"),
        ]),
    ),
];

/// What one run of the three loaders came to.
struct Run {
    completed: usize,
    refused_cleanly: usize,
    card_refusals: u64,
    peak: u64,
    poisoned: bool,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    println!(
        "# rerun: cargo build --release --workspace && cargo bench --bench story -- --runs {runs}"
    );
    let artifacts = lab::artifacts();
    let client = cprogs::build_test_client(
        "bind_procaddr",
        "story-client-procaddr",
        &artifacts.release.join("bench-c"),
    );
    println!(
        "{:<10} {:<20} {:>12} {:>12} {:>14} {:>26} {:>12}   (per run, {runs} runs)",
        "answers", "configuration", "completed", "refused", "card refused", "peak GiB", "poisoned"
    );
    for answers in ["exported", "internal"] {
        for (name, settings) in CONFIGURATIONS {
            let results: Vec<Run> = (0..runs)
                .map(|_| run_once(&artifacts, &client, answers, *settings))
                .collect();
            let list = |f: &dyn Fn(&Run) -> String| -> String {
                results.iter().map(f).collect::<Vec<_>>().join(",")
            };
            println!(
                "{answers:<10} {name:<20} {:>12} {:>12} {:>14} {:>26} {:>12}",
                list(&|r| r.completed.to_string()),
                list(&|r| r.refused_cleanly.to_string()),
                list(&|r| r.card_refusals.to_string()),
                list(&|r| format!("{:.2}", r.peak as f64 / GIB)),
                list(&|r| if r.poisoned { "y" } else { "n" }.to_owned()),
            );
        }
    }
}

/// Starts the three loaders together on a fresh card and waits for all of them.
fn run_once(
    artifacts: &Artifacts,
    client: &Path,
    answers: &str,
    settings: Option<&[(&str, &str)]>,
) -> Run {
    let lab = Lab::new(artifacts, CARD);
    lab.set_env("SIMCUDA_FRAGILE", "1");
    lab.set_env("SIMCUDA_PROCADDR", answers);
    lab.set_env("VRAMGUARD_LOG", "error");
    let children: Vec<_> = PACES_MS
        .iter()
        .map(|pace| {
            let mut command = lab.command(client, settings.is_some());
            command
                .args(["--chunk", "100MiB", "--count", "30", "--sleep-between-ms"])
                .arg(pace)
                .args(["--hold-if-complete-ms", "1000"])
                .envs(settings.unwrap_or_default().iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the loader: {e}"))
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = lab::wait_with_deadline(child, DEADLINE)
                .unwrap_or_else(|| panic!("a loader ran past {DEADLINE:?}"));
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .collect();
    let summary = |out: &String, key: &str| -> Option<String> {
        out.lines()
            .find(|l| l.starts_with("summary "))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key).map(str::to_owned))
    };
    let device = lab.sim_report()["devices"][0].clone();
    Run {
        completed: outputs
            .iter()
            .filter(|o| summary(o, "ok=").as_deref() == Some("30"))
            .count(),
        refused_cleanly: outputs
            .iter()
            .filter(|o| summary(o, "first_error=").as_deref() == Some("CUDA_ERROR_OUT_OF_MEMORY"))
            .count(),
        card_refusals: device["refused"].as_u64().unwrap_or(0),
        peak: device["peak_bytes"].as_u64().unwrap_or(0),
        poisoned: device["poisoned"].as_bool().unwrap_or(false),
    }
}
