//! What the virtualenv start-up hook (`vramguard env --venv`) adds to an interpreter's start:
//! `bin/python -c pass` timed as a whole process in four configurations, interleaved round by
//! round so that a burst of load on the machine falls on all of them. Prints medians; never
//! asserts a timing.
//!
//!   cargo build --release --workspace && cargo bench --bench venv_start [-- ROUNDS]
//!
//! - `plain`: a virtualenv without the hook, nothing preloaded (the baseline);
//! - `preloaded`: the same with `LD_PRELOAD` naming the library (what loading the library costs);
//! - `hook, guard loaded`: the guarded virtualenv started with the library already preloaded (an
//!   activated shell, `vramguard run`, a child of a guarded process): the hook only looks;
//! - `hook, restart`: the guarded virtualenv's `bin/python` called directly: the hook restarts
//!   the interpreter once with the library preloaded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn release() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release")
}

fn run_ok(command: &mut Command) {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed");
}

fn make_venv(dir: &Path) {
    run_ok(
        Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(dir),
    );
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let release = release();
    let library = release.join("libvramguard.so");
    let vramguard = release.join("vramguard");
    assert!(
        library.is_file() && vramguard.is_file(),
        "build first: cargo build --release --workspace"
    );
    let dir = tempfile::Builder::new()
        .prefix("vramguard-venv-bench-")
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir()
        .expect("a temporary directory");
    let plain = dir.path().join("plain");
    let guarded = dir.path().join("guarded");
    make_venv(&plain);
    make_venv(&guarded);
    run_ok(
        Command::new(&vramguard)
            .args(["env", "--venv"])
            .arg(&guarded)
            .env("VRAMGUARD_LIBRARY", &library),
    );
    let configurations: [(&str, &Path, bool); 4] = [
        ("plain", &plain, false),
        ("preloaded", &plain, true),
        ("hook, guard loaded", &guarded, true),
        ("hook, restart", &guarded, false),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); configurations.len()];
    for round in 0..rounds + 3 {
        for (index, (_, venv, preload)) in configurations.iter().enumerate() {
            let mut command = Command::new(venv.join("bin/python"));
            command.args(["-c", "pass"]).env_remove("LD_PRELOAD");
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("VRAMGUARD_") {
                    command.env_remove(key);
                }
            }
            if *preload {
                command.env("LD_PRELOAD", &library);
            }
            let started = Instant::now();
            run_ok(&mut command);
            if round >= 3 {
                samples[index].push(started.elapsed()); // the first rounds warm the caches
            }
        }
    }
    drop(dir);
    let baseline = median(&mut samples[0].clone());
    println!("interpreter start, `bin/python -c pass`, median of {rounds} runs each:");
    for ((name, _, _), runs) in configurations.iter().zip(samples.iter_mut()) {
        let m = median(runs);
        let added = m.as_secs_f64() * 1e3 - baseline.as_secs_f64() * 1e3;
        println!(
            "  {name:<20} {:>7.2} ms   ({added:+.2} ms against plain)",
            m.as_secs_f64() * 1e3
        );
    }
}
