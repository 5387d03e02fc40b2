//! `vramguard doctor`'s check of the Python interpreter a user would start now: is the guard
//! loaded into it, and if not, why not.
//!
//! The interpreter is `$VRAMGUARD_PYTHON` (which `python -m vramguard` sets to itself), else the
//! active virtualenv's (`$VIRTUAL_ENV/bin/python`), else the active conda environment's
//! (`$CONDA_PREFIX/bin/python`), else that of the virtualenv the `vramguard` executable is
//! installed in, else `python3` on `PATH`. It is started the way a user starts it
//! (same environment, so a virtualenv's start-up hook runs) and reports from inside whether
//! `libvramguard.so` is mapped and what hook it has.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use vramguard_core::settings::Config;

use super::doctor::{Finding, run_probe};
use super::venv::{HOOK_MODULE, HOOK_PTH};

/// What the interpreter reports about itself (one JSON line).
const PROBE: &str = r#"
import json, os, sys
hooks = [d for d in sys.path if d and os.path.isfile(os.path.join(d, "@PTH@"))]
library = getattr(sys.modules.get("@MODULE@"), "LIBRARY", None)
for d in hooks:
    try:
        for line in open(os.path.join(d, "@MODULE@.py"), encoding="utf-8"):
            if library is None and line.startswith("LIBRARY = "):
                library = json.loads(line[len("LIBRARY = "):])
    except (OSError, ValueError):
        pass
try:
    with open("/proc/self/maps", "rb") as maps:
        loaded = b"/libvramguard.so\n" in maps.read()
except OSError:
    loaded = None
print(json.dumps({"executable": sys.executable, "version": list(sys.version_info[:2]),
                  "prefix": sys.prefix, "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
                  "conda": os.path.isdir(os.path.join(sys.prefix, "conda-meta")),
                  "loaded": loaded, "hooks": hooks, "library": library}))
"#;

/// The probe's report.
#[derive(Debug, Deserialize)]
struct Report {
    executable: String,
    prefix: String,
    venv: bool,
    #[serde(default)]
    conda: bool,
    loaded: Option<bool>,
    hooks: Vec<String>,
    library: Option<String>,
}

/// `name` on `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The interpreter to check and why it is the one.
fn choose() -> Option<(PathBuf, &'static str)> {
    if let Some(python) = std::env::var_os("VRAMGUARD_PYTHON").filter(|v| !v.is_empty()) {
        return Some((PathBuf::from(python), "VRAMGUARD_PYTHON"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        return Some((Path::new(&venv).join("bin/python"), "the active virtualenv"));
    }
    if let Some(prefix) = std::env::var_os("CONDA_PREFIX").filter(|v| !v.is_empty()) {
        return Some((
            Path::new(&prefix).join("bin/python"),
            "the active conda environment",
        ));
    }
    let own_venv = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .filter(|prefix| prefix.join("pyvenv.cfg").is_file())
        .map(|prefix| prefix.join("bin/python"))
        .filter(|python| python.is_file());
    if let Some(python) = own_venv {
        return Some((python, "the virtualenv vramguard is installed in"));
    }
    on_path("python3").map(|python| (python, "python3 on PATH"))
}

/// Whether this process's `LD_PRELOAD` names the guard.
fn preloaded_by_environment() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|preload| {
        preload.split([':', ' ']).any(|entry| {
            Path::new(entry)
                .file_name()
                .is_some_and(|n| n == "libvramguard.so")
        })
    })
}

/// The finding for one report.
fn judge(report: &Report, config: &Config, from_environment: bool) -> Finding {
    let exe = &report.executable;
    let prefix = &report.prefix;
    if report.loaded == Some(true) {
        if config.disable {
            return Finding::warn(
                format!(
                    "python: {exe} loads the guard, but VRAMGUARD_DISABLE=1 makes it pass everything through"
                ),
                "unset VRAMGUARD_DISABLE",
            );
        }
        let how = if from_environment {
            "through LD_PRELOAD".to_string()
        } else {
            format!("by the start-up hook of {prefix}")
        };
        return Finding::ok(format!(
            "python: {exe} is guarded (libvramguard.so loaded {how})"
        ));
    }
    if report.loaded.is_none() {
        return Finding::warn(
            format!("python: cannot tell whether {exe} is guarded (no /proc/self/maps)"),
            "check that /proc is mounted",
        );
    }
    if config.disable {
        return Finding::warn(
            format!("python: {exe} is not guarded: VRAMGUARD_DISABLE=1"),
            "unset VRAMGUARD_DISABLE",
        );
    }
    if !report.hooks.is_empty() {
        let (what, fix) = match &report.library {
            Some(library) if !Path::new(library).is_file() => (
                format!("its start-up hook names {library}, which does not exist"),
                format!(
                    "install the guard again (vramguard env --venv {prefix}), or remove it (--remove)"
                ),
            ),
            _ => (
                format!("{prefix} has the start-up hook, but it did not put the guard in place"),
                format!("run `VRAMGUARD_LOG=info {exe} -c pass` to see why"),
            ),
        };
        return Finding::warn(format!("python: {exe} is not guarded: {what}"), fix);
    }
    if report.venv || report.conda {
        let what = if report.venv {
            "virtualenv"
        } else {
            "conda environment"
        };
        return Finding::warn(
            format!("python: {exe} is not guarded: the {what} {prefix} has no vramguard hook"),
            format!("vramguard env --venv {prefix}"),
        );
    }
    Finding::ok(format!(
        "python: {exe} is not guarded (not a virtualenv nor a conda environment): `vramguard run -- \
         python ...` guards one program, `vramguard env --venv PATH` every interpreter of an \
         environment"
    ))
}

/// The doctor's finding about the Python interpreter a user would start now.
pub fn check(config: &Config) -> Finding {
    let Some((python, why)) = choose() else {
        return Finding::ok(
            "python: no interpreter found (VRAMGUARD_PYTHON, VIRTUAL_ENV, python3 on PATH); nothing to check",
        );
    };
    let script = PROBE
        .replace("@PTH@", HOOK_PTH)
        .replace("@MODULE@", HOOK_MODULE);
    let mut command = Command::new(&python);
    command.arg("-c").arg(script);
    let asked = run_probe(command).and_then(|(code, out, err)| {
        let line = out.lines().last().unwrap_or("");
        serde_json::from_str::<Report>(line).map_err(|_| {
            format!(
                "it answered (exit {code:?}): {}",
                format!("{out}{err}").trim()
            )
        })
    });
    match asked {
        Ok(report) => judge(&report, config, preloaded_by_environment()),
        Err(e) => Finding::warn(
            format!("python: cannot ask {} ({why}): {e}", python.display()),
            "set VRAMGUARD_PYTHON to the interpreter to check",
        ),
    }
}
