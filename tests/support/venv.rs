//! Helpers of the tests that install vramguard the way users do (`tests/install_*.rs`): the
//! project's Python tools (`target/pytools`, made by `scripts/setup.sh`), fresh virtualenvs, the
//! guarded virtualenv of `vramguard env --venv`, and the over-budget allocation every start mode
//! must be refused. Included with `#[path = "support/venv.rs"] mod venv_support;` next to
//! `mod support;`.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{self, Finished, Sandbox};

/// How long one Python start (with its restart) may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// The card of these tests, and the context each process takes on it.
pub const CARD: &str = "4GiB";
pub const CONTEXT_COST: &str = "64MiB";
/// More than the card's budget (4 GiB less the default 256 MiB reserve, less the context) but
/// less than the driver would hand out (4 GiB less the context): refused only by the guard.
pub const OVER_BUDGET: &str = "3900MiB";

/// The project's Python tools: `target/pytools/bin/python`, with a message naming the setup
/// command when they are missing (the test fails, it does not skip).
pub fn pytools_python() -> PathBuf {
    let python = support::repo().join("target/pytools/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run ./scripts/setup.sh, which installs the pinned Python tools these \
         tests need (scripts/python-tools.txt) into target/pytools",
        python.display()
    );
    python
}

/// The `site-packages` of the project's Python tools.
pub fn pytools_site_packages() -> PathBuf {
    let lib = support::repo().join("target/pytools/lib");
    fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("site-packages"))
                .find(|p| p.is_dir())
        })
        .unwrap_or_else(|| {
            panic!(
                "no site-packages under {}: run ./scripts/setup.sh",
                lib.display()
            )
        })
}

/// Checks that the project's Python tools can import `module` (the test fails naming the setup
/// command when not).
pub fn require_module(module: &str) {
    let mut command = Command::new(pytools_python());
    command.args(["-c", &format!("import {module}")]);
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(
        output.status.success(),
        "target/pytools cannot import {module}: run ./scripts/setup.sh ({})",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Creates a virtualenv at `dir` with `python3 -m venv` (with pip when `pip`).
pub fn make_venv(dir: &Path, pip: bool) {
    let mut command = Command::new("python3");
    command.args(["-m", "venv"]);
    if !pip {
        command.arg("--without-pip");
    }
    command.arg(dir).env_remove("VIRTUAL_ENV");
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(
        output.status.success(),
        "python3 -m venv {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The one `site-packages` of a virtualenv.
pub fn site_packages(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no site-packages in {}", venv.display()))
}

/// Runs `vramguard` (the given executable) with `args` and the sandbox's environment; asserts
/// it succeeds and returns its stdout.
pub fn vramguard_ok(sandbox: &Sandbox, vramguard: &Path, args: &[&std::ffi::OsStr]) -> String {
    let mut command = sandbox.program(vramguard);
    command.args(args);
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(
        output.status.success(),
        "vramguard {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `vramguard doctor`'s line about Python and the one after it, run by `vramguard` (the given
/// executable) in the sandbox without `VIRTUAL_ENV` and with `env` (a name with `None` is
/// removed from the environment).
pub fn doctor_python_line(
    sandbox: &Sandbox,
    vramguard: &Path,
    env: &[(&str, Option<&std::ffi::OsStr>)],
) -> String {
    let mut command = sandbox.program(vramguard);
    command.arg("doctor").env_remove("VIRTUAL_ENV");
    for (key, value) in env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let finished = finish(command);
    finished
        .stdout
        .lines()
        .skip_while(|l| !l.contains("python: "))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks that `dir` is again exactly the `before` snapshot of it ([`tree`]) after
/// `vramguard env --venv ... --remove`: no file added, none lost, none changed.
pub fn assert_restored(before: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path) {
    let after = tree(dir);
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let lost: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        added.is_empty() && lost.is_empty(),
        "added {added:?}, lost {lost:?}"
    );
    assert!(after == *before, "a file's contents differ after --remove");
}

/// A sandbox with the card of these tests.
pub fn sandbox() -> Sandbox {
    let mut sandbox = Sandbox::new(CARD);
    sandbox.set_env("SIMCUDA_CONTEXT_COST", CONTEXT_COST);
    sandbox.init();
    sandbox
}

/// Runs `command` to completion with the deadline.
pub fn finish(command: Command) -> Finished {
    support::spawn(command).finish(DEADLINE)
}

/// Checks that the Python client's over-budget allocation was refused by the guard: exit code 2
/// (out of memory), its `alloc fail` line, and a simulated card that never refused a request
/// (the driver would have granted it).
pub fn assert_refused_by_guard(sandbox: &Sandbox, finished: &Finished, what: &str) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "{what}: the over-budget allocation was not refused\nstdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished
            .stdout
            .lines()
            .any(|l| l.starts_with("alloc fail") && l.ends_with("CUDA_ERROR_OUT_OF_MEMORY")),
        "{what}: {}",
        finished.stdout
    );
    let report = sandbox.sim_report();
    assert_eq!(
        report["devices"][0]["refused"].as_u64(),
        Some(0),
        "{what}: the driver, not the guard, refused: {report}"
    );
}

/// The lines of `stderr` in which the start-up hook says it restarts an interpreter (printed at
/// `VRAMGUARD_LOG=info`).
pub fn restarts(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.starts_with("vramguard: restarting "))
        .count()
}

/// Every file under `dir` with its contents (symlinks as their targets), for comparing trees.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(relative, target.as_os_str().as_encoded_bytes().to_vec());
            } else if kind.is_dir() {
                out.insert(relative.join(""), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
