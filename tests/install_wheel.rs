//! The Python wheel, as a user gets it: built from this checkout by its PEP 517 backend (the way
//! `pip install .` builds it), installed with pip into a fresh virtualenv, and run from there,
//! outside the build tree, against the simulated card: `vramguard run`, `python -m vramguard`,
//! and the virtualenv guarded by its own command. The wheel is manylinux_2_28 (no glibc symbol
//! newer than 2.28, only the libraries the policy allows), its library is the same release build
//! the benchmarks measure, and uninstalling leaves nothing of it behind.

#[path = "support/manylinux.rs"]
mod manylinux;
mod support;
#[path = "support/venv.rs"]
mod venv_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use venv_support::*;

/// How long building the wheel may take (a first build compiles every dependency for the
/// wheel's target).
const BUILD_DEADLINE: Duration = Duration::from_secs(1800);
/// Builds the wheel once per test binary (into `target/wheel`, a target directory of its own so
/// that it never waits for the one the tests run from) and returns its path.
fn wheel() -> PathBuf {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL
        .get_or_init(|| {
            let python = pytools_python();
            require_module("ziglang");
            let out = support::target_dir().join("wheel/dist");
            let _ = fs::remove_dir_all(&out);
            fs::create_dir_all(&out).unwrap();
            let mut command = Command::new(python);
            command
                .args([
                    "-m",
                    "pip",
                    "wheel",
                    "--no-build-isolation",
                    "--no-deps",
                    "--quiet",
                ])
                .args(["--disable-pip-version-check", "-w"])
                .arg(&out)
                .arg(support::repo())
                .env("CARGO_TARGET_DIR", support::target_dir().join("wheel"));
            let finished = support::spawn(command).finish(BUILD_DEADLINE);
            assert!(
                finished.status.success(),
                "building the wheel failed: {finished:?}"
            );
            let wheels: Vec<PathBuf> = fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(wheels.len(), 1, "{wheels:?}");
            wheels.into_iter().next().unwrap()
        })
        .clone()
}

/// A fresh virtualenv with pip, and the wheel installed into it.
struct Installed {
    sandbox: support::Sandbox,
    venv: PathBuf,
    /// The virtualenv's files before the wheel was installed.
    before: BTreeMap<PathBuf, Vec<u8>>,
}

fn installed() -> Installed {
    let wheel = wheel();
    let sandbox = sandbox();
    let venv = sandbox.root().join("fresh");
    make_venv(&venv, true);
    let before = tree(&venv);
    let mut command = sandbox.program(venv.join("bin/python"));
    command
        .args(["-m", "pip", "install", "--no-index", "--no-deps", "--quiet"])
        .arg("--disable-pip-version-check")
        .arg(&wheel)
        .current_dir(sandbox.root());
    let finished = finish(command);
    assert!(finished.status.success(), "pip install: {finished:?}");
    fs::copy(
        support::clients().python,
        sandbox.root().join("vg_client.py"),
    )
    .unwrap();
    Installed {
        sandbox,
        venv,
        before,
    }
}

impl Installed {
    fn command(&self) -> PathBuf {
        self.venv.join("bin/vramguard")
    }
    fn library(&self) -> PathBuf {
        site_packages(&self.venv).join("vramguard/libvramguard.so")
    }
    /// A command in the sandbox, started outside the build tree, with nothing pointing at it.
    fn run(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = self.sandbox.program(program);
        command
            .current_dir(self.sandbox.root())
            .env_remove("VRAMGUARD_LIBRARY")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        command
    }
}

/// The output of a tool that must succeed.
fn tool(program: &str, args: &[&str], path: &Path) -> String {
    let mut command = Command::new(program);
    command.args(args).arg(path);
    let output = support::run_with_deadline(command, support::HANG_GUARD);
    assert!(
        output.status.success(),
        "{program} {args:?} {}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The exported symbols of a shared library with their sizes (`nm -D -S --defined-only`).
fn exported_sizes(path: &Path) -> BTreeMap<String, String> {
    tool("nm", &["-D", "-S", "--defined-only"], path)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 4).then(|| (fields[3].to_string(), fields[1].to_string()))
        })
        .collect()
}

#[test]
fn the_wheel_is_manylinux_2_28_and_carries_the_benchmarked_build() {
    let wheel = wheel();
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("vramguard-") && name.ends_with("-py3-none-manylinux_2_28_x86_64.whl"),
        "{name}"
    );
    let target = support::target_dir().join("wheel/x86_64-unknown-linux-gnu/release");
    for binary in ["vramguard", "libvramguard.so"] {
        manylinux::assert_manylinux_2_28(&target.join(binary));
    }
    // The same code as target/release/libvramguard.so, which the benchmarks measure: the same
    // exported functions with the same sizes (another profile, optimisation level or codegen
    // setting would change them; only the linker and the glibc it links against differ).
    let benchmarked = support::artifacts().preload;
    assert_eq!(
        exported_sizes(&target.join("libvramguard.so")),
        exported_sizes(&benchmarked),
        "the wheel's library is not the build the benchmarks measure"
    );
}

#[test]
fn the_installed_wheel_guards_programs_from_outside_the_build_tree() {
    let i = installed();
    let library = i.library();
    assert!(library.is_file(), "no {}", library.display());

    // vramguard run, with the library the command finds inside the installed package.
    let mut command = i.run(i.command());
    command
        .args(["run", "--"])
        .arg(i.venv.join("bin/python"))
        .args(["vg_client.py", "--chunk", OVER_BUDGET]);
    assert_refused_by_guard(&i.sandbox, &finish(command), "vramguard run");

    // python -m vramguard, the same.
    let mut command = i.run(i.venv.join("bin/python"));
    command
        .args(["-m", "vramguard", "run", "--"])
        .arg(i.venv.join("bin/python"))
        .args(["vg_client.py", "--chunk", OVER_BUDGET]);
    assert_refused_by_guard(&i.sandbox, &finish(command), "python -m vramguard run");

    // doctor names the installed library and says the virtualenv is not guarded yet.
    let mut command = i.run(i.command());
    command.arg("doctor");
    let finished = finish(command);
    assert!(
        finished
            .stdout
            .contains(&format!("library: {} loads", library.display())),
        "{finished:?}"
    );
    assert!(
        finished.stdout.contains("has no vramguard hook"),
        "{finished:?}"
    );

    // python -m vramguard doctor checks the interpreter that ran it.
    let mut command = i.run(i.venv.join("bin/python"));
    command.args(["-m", "vramguard", "doctor"]);
    let finished = finish(command);
    let python = i.venv.join("bin/python");
    assert!(
        finished
            .stdout
            .contains(&format!("python: {} is not guarded", python.display())),
        "{finished:?}"
    );

    // The virtualenv guarded by its own command: bin/python called directly.
    let mut command = i.run(i.command());
    command.args(["env", "--venv"]).arg(&i.venv);
    assert!(finish(command).status.success());
    let mut command = i.run(i.venv.join("bin/python"));
    command.args(["vg_client.py", "--chunk", OVER_BUDGET]);
    assert_refused_by_guard(
        &i.sandbox,
        &finish(command),
        "bin/python of the guarded venv",
    );
    let mut command = i.run(i.venv.join("bin/python"));
    command.args([
        "-c",
        "print([l.split()[-1] for l in open('/proc/self/maps') if l.endswith('/libvramguard.so\\n')][0])",
    ]);
    let finished = finish(command);
    assert_eq!(
        finished.stdout.trim(),
        library.to_string_lossy(),
        "{finished:?}"
    );

    // Removing the guard, then the wheel, leaves nothing of vramguard in the virtualenv.
    let mut command = i.run(i.command());
    command.args(["env", "--venv"]).arg(&i.venv).arg("--remove");
    assert!(finish(command).status.success());
    let mut command = i.run(i.venv.join("bin/python"));
    command.args(["-m", "pip", "uninstall", "--yes", "--quiet", "vramguard"]);
    let finished = finish(command);
    assert!(finished.status.success(), "{finished:?}");
    let ours = |files: &BTreeMap<PathBuf, Vec<u8>>| -> Vec<PathBuf> {
        files
            .keys()
            .filter(|p| p.to_string_lossy().contains("vramguard"))
            .cloned()
            .collect()
    };
    assert_eq!(ours(&tree(&i.venv)), ours(&i.before));
    let activate = fs::read(i.venv.join("bin/activate")).unwrap();
    assert_eq!(Some(&activate), i.before.get(Path::new("bin/activate")));
}
