//! A conda environment guarded with `vramguard env --venv PREFIX` (or `--conda PREFIX`), the way
//! a virtualenv is: its interpreter started directly restarts once with the guard, conda's
//! activation hooks (`etc/conda/activate.d`, `deactivate.d`) preload the library in an activated
//! shell and give the shell its `LD_PRELOAD` back on deactivation, `doctor` says whether the
//! environment's interpreter is guarded, and `--remove` leaves every file as it was.
//!
//! The environment is laid out as conda lays one out (a real CPython in `bin/`, its standard
//! library and `site-packages` under `lib/pythonX.Y/`, `conda-meta/` with its history, no
//! `pyvenv.cfg`), built from the machine's own CPython: the interpreter binary copied in, the
//! standard library linked. A distribution's patched interpreter that does not read
//! `lib/pythonX.Y/site-packages` of its prefix cannot stand in for conda's: the test skips then.

mod support;
#[path = "support/venv.rs"]
mod venv_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::Sandbox;
use venv_support::*;

/// The base CPython the environment is made from: (prefix, "X.Y").
fn base_python() -> Result<(PathBuf, String), String> {
    let mut command = Command::new("python3");
    command.args([
        "-c",
        "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])",
    ]);
    let output = support::run_with_deadline(command, DEADLINE);
    if !output.status.success() {
        return Err("python3 does not run".into());
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let prefix = PathBuf::from(lines.next().unwrap_or_default());
    let version = lines.next().unwrap_or_default().to_string();
    if !prefix.join(format!("bin/python{version}")).is_file() {
        return Err(format!("no {}/bin/python{version}", prefix.display()));
    }
    Ok((prefix, version))
}

/// Makes a conda-layout environment at `prefix`; why it cannot when it cannot.
fn make_conda_env(prefix: &Path) -> Result<(), String> {
    let (base, version) = base_python()?;
    let stdlib = base.join(format!("lib/python{version}"));
    let own_lib = prefix.join(format!("lib/python{version}"));
    fs::create_dir_all(prefix.join("bin")).unwrap();
    fs::create_dir_all(own_lib.join("site-packages")).unwrap();
    fs::create_dir_all(prefix.join("conda-meta")).unwrap();
    fs::write(
        prefix.join("conda-meta/history"),
        format!(
            "==> 2026-12-01 09:00:00 <==\n# cmd: conda create -p {} python={version}\n\
             # conda version: 25.11.0\n+conda-forge/linux-64::python-{version}.0-h9e4cc4f_0_cpython\n",
            prefix.display()
        ),
    )
    .unwrap();
    let binary = format!("python{version}");
    fs::copy(
        base.join("bin").join(&binary),
        prefix.join("bin").join(&binary),
    )
    .unwrap();
    symlink(&binary, prefix.join("bin/python")).unwrap();
    symlink(&binary, prefix.join("bin/python3")).unwrap();
    for entry in fs::read_dir(base.join("lib"))
        .unwrap()
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().starts_with("libpython") {
            symlink(entry.path(), prefix.join("lib").join(entry.file_name())).unwrap();
        }
    }
    for entry in fs::read_dir(&stdlib).unwrap().filter_map(Result::ok) {
        if entry.file_name() != "site-packages" {
            symlink(entry.path(), own_lib.join(entry.file_name())).unwrap();
        }
    }
    // The interpreter must take the prefix as its own and read its site-packages.
    let mut command = Command::new(prefix.join("bin/python"));
    command.args([
        "-c",
        "import site, sys; print(sys.prefix); print(*site.getsitepackages())",
    ]);
    let output = support::run_with_deadline(command, DEADLINE);
    let expected = format!(
        "{}\n{}\n",
        prefix.display(),
        own_lib.join("site-packages").display()
    );
    if !output.status.success() || String::from_utf8_lossy(&output.stdout) != expected {
        return Err(format!(
            "{}/bin/python{version} does not read {}/site-packages as conda's Python does \
             (a distribution-patched interpreter): {}{}",
            base.display(),
            own_lib.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn vramguard() -> PathBuf {
    support::artifacts().cli
}

/// `vramguard env FLAG PREFIX [extra]`, which must succeed; what it printed.
fn env(sandbox: &Sandbox, flag: &str, prefix: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&OsStr> = vec!["env".as_ref(), flag.as_ref(), prefix.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    vramguard_ok(sandbox, &vramguard(), &args)
}

/// `vramguard doctor`'s line about Python with `CONDA_PREFIX` set to `prefix`, as in a shell
/// where the environment is activated.
fn conda_doctor_python_line(sandbox: &Sandbox, prefix: &Path) -> String {
    doctor_python_line(
        sandbox,
        &vramguard(),
        &[
            ("VRAMGUARD_PYTHON", None),
            ("CONDA_PREFIX", Some(prefix.as_os_str())),
        ],
    )
}

#[test]
fn a_conda_environment_is_guarded_like_a_virtualenv_and_remove_restores_it() {
    let sandbox = sandbox();
    let prefix = sandbox.root().join("conda-env");
    if let Err(reason) = make_conda_env(&prefix) {
        support::skip(
            "a_conda_environment_is_guarded_like_a_virtualenv_and_remove_restores_it",
            &reason,
        );
        return;
    }
    assert!(!prefix.join("pyvenv.cfg").exists());
    let before = tree(&prefix);
    let out = env(&sandbox, "--venv", &prefix, &[]);
    assert!(out.contains("installed the start-up hook"), "{out}");
    assert!(out.contains("etc/conda/activate.d/vramguard.sh"), "{out}");
    let installed = tree(&prefix);
    // `--conda` is the same option; a second install changes nothing.
    let out = env(&sandbox, "--conda", &prefix, &[]);
    assert!(out.contains("already has the hook"), "{out}");
    assert_eq!(tree(&prefix), installed);
    let client = sandbox.root().join("vg_client.py");
    fs::copy(support::clients().python, &client).unwrap();

    // bin/python called directly: restarted once with the guard, which refuses the allocation.
    let mut command = sandbox.program(prefix.join("bin/python"));
    command
        .arg(&client)
        .args(["--chunk", OVER_BUDGET])
        .env("VRAMGUARD_LOG", "info");
    let finished = finish(command);
    assert_refused_by_guard(&sandbox, &finished, "the conda environment's bin/python");
    assert_eq!(restarts(&finished.stderr), 1, "{}", finished.stderr);

    // What `conda activate` and `conda deactivate` source, in bash and in fish.
    let activate = prefix.join("etc/conda/activate.d");
    let deactivate = prefix.join("etc/conda/deactivate.d");
    let script = format!(
        "unset LD_PRELOAD; . {}/vramguard.sh && python {} --chunk {OVER_BUDGET}; code=$?; \
         . {}/vramguard.sh; echo \"after ${{LD_PRELOAD-unset}}\"; exit $code",
        activate.display(),
        client.display(),
        deactivate.display()
    );
    let mut command = sandbox.program("bash");
    command
        .arg("-c")
        .arg(&script)
        .env("PATH", format!("{}/bin:/usr/bin:/bin", prefix.display()))
        .env("VRAMGUARD_LOG", "info");
    let finished = finish(command);
    assert_refused_by_guard(&sandbox, &finished, "an activated bash");
    assert_eq!(restarts(&finished.stderr), 0, "{}", finished.stderr);
    assert!(finished.stdout.ends_with("after unset\n"), "{finished:?}");
    let library = support::artifacts().preload;
    let script = format!(
        "set -gx LD_PRELOAD /opt/keep.so; source {}/vramguard.fish; echo \"in $LD_PRELOAD\"; \
         source {}/vramguard.fish; echo \"after $LD_PRELOAD\"",
        activate.display(),
        deactivate.display()
    );
    let mut command = sandbox.program("fish");
    command.arg("--no-config").arg("-c").arg(&script);
    let finished = finish(command);
    assert_eq!(
        finished.stdout,
        format!(
            "in {}:/opt/keep.so\nafter /opt/keep.so\n",
            library.display()
        ),
        "{finished:?}"
    );

    // doctor, in a shell where the environment is active.
    let line = conda_doctor_python_line(&sandbox, &prefix);
    assert!(
        line.starts_with("ok    python: ") && line.contains("loaded by the start-up hook"),
        "{line}"
    );

    // Python compiles the hook into __pycache__ when allowed to; --remove takes that away too.
    let mut command = sandbox.program(prefix.join("bin/python"));
    command
        .args(["-c", "pass"])
        .env_remove("PYTHONDONTWRITEBYTECODE");
    assert!(finish(command).status.success());
    let out = env(&sandbox, "--venv", &prefix, &["--remove"]);
    assert!(out.contains("removed the start-up hook"), "{out}");
    assert!(out.contains("removed the guard from"), "{out}");
    assert_restored(&before, &prefix);
    let line = conda_doctor_python_line(&sandbox, &prefix);
    assert!(
        line.starts_with("warn  python: ")
            && line.contains("the conda environment")
            && line.contains("has no vramguard hook"),
        "{line}"
    );
}

#[test]
fn activation_hooks_that_were_there_before_are_kept() {
    let sandbox = sandbox();
    let prefix = sandbox.root().join("conda-env");
    if let Err(reason) = make_conda_env(&prefix) {
        support::skip("activation_hooks_that_were_there_before_are_kept", &reason);
        return;
    }
    // A package's own hooks (as e.g. a compiler package installs them), and an empty directory.
    fs::create_dir_all(prefix.join("etc/conda/activate.d")).unwrap();
    fs::write(
        prefix.join("etc/conda/activate.d/activate-gcc.sh"),
        "export CC=gcc\n",
    )
    .unwrap();
    fs::create_dir_all(prefix.join("etc/conda/deactivate.d")).unwrap();
    let before = tree(&prefix);
    env(&sandbox, "--venv", &prefix, &[]);
    env(&sandbox, "--venv", &prefix, &["--remove"]);
    assert!(tree(&prefix) == before, "--remove changed the environment");
}

#[test]
fn a_prefix_that_is_no_environment_is_refused() {
    let sandbox = sandbox();
    let prefix = sandbox.root().join("plain");
    fs::create_dir_all(prefix.join("lib/python3.11/site-packages")).unwrap();
    let mut command = sandbox.program(vramguard());
    command.args(["env", "--venv"]).arg(&prefix);
    let finished = finish(command);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("neither a virtualenv nor a conda environment"),
        "{finished:?}"
    );
    assert!(
        !prefix
            .join("lib/python3.11/site-packages/_vramguard.pth")
            .exists()
    );
}
