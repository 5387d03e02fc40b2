//! The Python wheel, as a user gets it: the source distribution built from this checkout by its
//! PEP 517 backend with `python -m build`, the wheel built from that (as `python -m build` and
//! `uv build` do; uv is checked to build the same two), installed with pip into a fresh virtualenv, and run from there,
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
/// What the front-end built: the source distribution, the directory it was unpacked into, and
/// the wheel built from that directory.
struct Built {
    sdist: PathBuf,
    unpacked: PathBuf,
    wheel: PathBuf,
}

/// The one file `dir` holds.
fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

/// Runs `command` (a front-end building into `target/wheel`, a target directory of its own so
/// that it never waits for the one the tests run from); fails the test when it fails.
fn build_with(mut command: Command, what: &str) {
    command.env("CARGO_TARGET_DIR", support::target_dir().join("wheel"));
    let finished = support::spawn(command).finish(BUILD_DEADLINE);
    assert!(finished.status.success(), "{what} failed: {finished:?}");
}

/// Builds the source distribution of this checkout with `python -m build`, then the wheel from
/// the unpacked source distribution (what `python -m build` and `uv build` do by default), once
/// per test binary. The source distribution is unpacked into a fixed place, `target/wheel/sdist`,
/// so that cargo's incremental build carries over from one run to the next.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let python = pytools_python();
        require_module("ziglang");
        require_module("build");
        let base = support::target_dir().join("wheel");
        let sdist_out = base.join("sdist-dist");
        let unpack = base.join("sdist");
        let out = base.join("dist");
        for dir in [&sdist_out, &unpack, &out] {
            let _ = fs::remove_dir_all(dir);
            fs::create_dir_all(dir).unwrap();
        }
        let mut command = Command::new(&python);
        command
            .args(["-m", "build", "--sdist", "--no-isolation", "--outdir"])
            .arg(&sdist_out)
            .arg(support::repo());
        build_with(command, "python -m build --sdist");
        let sdist = only_file(&sdist_out);
        let mut command = Command::new("tar");
        command.arg("-xzf").arg(&sdist).arg("-C").arg(&unpack);
        build_with(command, "unpacking the sdist");
        let unpacked = unpack.join(
            sdist
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".tar.gz"),
        );
        let mut command = Command::new(&python);
        command
            .args(["-m", "build", "--wheel", "--no-isolation", "--outdir"])
            .arg(&out)
            .arg(&unpacked);
        build_with(command, "python -m build --wheel (from the sdist)");
        Built {
            sdist,
            unpacked,
            wheel: only_file(&out),
        }
    })
}

/// The wheel, built from the source distribution.
fn wheel() -> PathBuf {
    built().wheel.clone()
}

/// The names of the members of an archive (`tar -tzf` or the zip's central directory).
fn members(archive: &Path) -> Vec<String> {
    let listing = if archive.to_string_lossy().ends_with(".whl") {
        let mut command = Command::new(pytools_python());
        command
            .args([
                "-c",
                "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))",
            ])
            .arg(archive);
        support::run_with_deadline(command, DEADLINE)
    } else {
        let mut command = Command::new("tar");
        command.arg("-tzf").arg(archive);
        support::run_with_deadline(command, DEADLINE)
    };
    assert!(listing.status.success(), "listing {}", archive.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// One member of the wheel.
fn wheel_member(name: &str) -> Vec<u8> {
    let mut command = Command::new(pytools_python());
    command
        .args(["-c", "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))"])
        .arg(wheel())
        .arg(name);
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(output.status.success(), "no {name} in the wheel");
    output.stdout
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

    // The command runs, and its man page is where man finds it for the environment.
    let mut command = i.run(i.command());
    command.arg("--version");
    let finished = finish(command);
    assert_eq!(finished.stdout, "vramguard 0.1.0\n", "{finished:?}");
    assert!(i.venv.join("share/man/man1/vramguard.1").is_file());

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

/// `uv build` (the project's pinned uv) with `args`, its cache in `cache`, offline, in the
/// project's Python tools (`--no-build-isolation`: the build requirements are there already).
fn uv_build(cache: &Path, args: &[&std::ffi::OsStr], what: &str) {
    let uv = support::repo().join("target/pytools/bin/uv");
    assert!(
        uv.is_file(),
        "{} is missing: run ./scripts/setup.sh (scripts/python-tools.txt pins uv)",
        uv.display()
    );
    let mut command = Command::new(uv);
    command
        .args(["build", "--no-build-isolation", "--python"])
        .arg(pytools_python())
        .args(args)
        .env("UV_CACHE_DIR", cache)
        .env("UV_OFFLINE", "1")
        .env("UV_NO_PROGRESS", "1");
    build_with(command, what);
}

/// Checks `text` as core metadata with `packaging` (the library pip's own checks come from),
/// and returns its license fields.
fn checked_metadata(text: &[u8], what: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metadata");
    fs::write(&file, text).unwrap();
    let mut command = Command::new(pytools_python());
    command
        .args([
            "-c",
            "import sys\n\
             from packaging.metadata import Metadata\n\
             m = Metadata.from_email(open(sys.argv[1], 'rb').read(), validate=True)\n\
             print(m.metadata_version, m.license_expression, *m.license_files)\n\
             print('requires-python', m.requires_python)",
        ])
        .arg(&file);
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(
        output.status.success(),
        "{what} is not valid metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_sdist_holds_what_the_wheel_needs_and_uv_builds_the_same_sdist_and_wheel() {
    let built = built();
    let names = members(&built.sdist);
    let base = "vramguard-0.1.0/";
    assert!(names.iter().all(|n| n.starts_with(base)), "{names:?}");
    let has = |name: &str| names.iter().any(|n| n == &format!("{base}{name}"));
    for needed in [
        "PKG-INFO",
        "pyproject.toml",
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "src/main.rs",
        "src/core/Cargo.toml",
        "src/preload/Cargo.toml",
        "tests/simcuda/Cargo.toml",
        "tests/simcard/Cargo.toml",
        "tests/simnvml/Cargo.toml",
        "scripts/venv_hook.py",
        "python/build_backend/vramguard_build.py",
        "python/vramguard/__init__.py",
    ] {
        assert!(has(needed), "the sdist lacks {needed}: {names:?}");
    }
    for name in &names {
        assert!(
            !name.contains("/target/") && !name.contains("__pycache__") && !name.contains("/."),
            "the sdist holds {name}"
        );
    }
    // The suite itself stays out: only the workspace members cargo must find.
    assert!(!has("tests/install_wheel.rs"), "{names:?}");
    let size = fs::metadata(&built.sdist).unwrap().len();
    assert!(size < 2 << 20, "the sdist is {size} bytes");
    // The wheel was built from it: the unpacked tree has its build's outputs nowhere.
    assert!(!built.unpacked.join("target").exists());
    let pkg_info = fs::read(built.unpacked.join("PKG-INFO")).unwrap();
    let fields = checked_metadata(&pkg_info, "PKG-INFO");
    assert!(
        fields.starts_with("2.4 MIT OR Apache-2.0 LICENSE-MIT LICENSE-APACHE\n"),
        "{fields}"
    );

    // uv builds the same source distribution from the checkout, and the same wheel from it.
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let uv_sdist = scratch.path().join("sdist");
    uv_build(
        &cache,
        &[
            "--sdist".as_ref(),
            "--out-dir".as_ref(),
            uv_sdist.as_os_str(),
            support::repo().as_os_str(),
        ],
        "uv build --sdist",
    );
    assert_eq!(members(&only_file(&uv_sdist)), names);
    let uv_wheel = scratch.path().join("wheel");
    uv_build(
        &cache,
        &[
            "--wheel".as_ref(),
            "--out-dir".as_ref(),
            uv_wheel.as_os_str(),
            built.unpacked.as_os_str(),
        ],
        "uv build --wheel (from the sdist)",
    );
    let uv_wheel = only_file(&uv_wheel);
    assert_eq!(uv_wheel.file_name(), built.wheel.file_name());
    assert!(
        fs::read(&uv_wheel).unwrap() == fs::read(&built.wheel).unwrap(),
        "uv's wheel differs from python -m build's"
    );
}

#[test]
fn the_wheel_carries_the_licenses_the_man_pages_and_the_completions() {
    let names = members(&wheel());
    let dist_info = "vramguard-0.1.0.dist-info";
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let text = wheel_member(&format!("{dist_info}/licenses/{license}"));
        assert_eq!(text, fs::read(support::repo().join(license)).unwrap());
    }
    let fields = checked_metadata(&wheel_member(&format!("{dist_info}/METADATA")), "METADATA");
    assert!(
        fields.starts_with("2.4 MIT OR Apache-2.0 LICENSE-MIT LICENSE-APACHE\n"),
        "{fields}"
    );
    // What the command of this checkout prints, the same code as the wheel's.
    let cli = support::artifacts().cli;
    let printed = |args: &[&str]| {
        let mut command = Command::new(&cli);
        command.args(args);
        let output = support::run_with_deadline(command, DEADLINE);
        assert!(output.status.success(), "vramguard {args:?}");
        output.stdout
    };
    let data = "vramguard-0.1.0.data/data/share";
    assert_eq!(
        wheel_member(&format!("{data}/man/man1/vramguard.1")),
        printed(&["man"])
    );
    assert!(
        names.contains(&format!("{data}/man/man1/vramguard-run.1")),
        "{names:?}"
    );
    for (shell, path) in [
        ("bash", "bash-completion/completions/vramguard"),
        ("zsh", "zsh/site-functions/_vramguard"),
        ("fish", "fish/vendor_completions.d/vramguard.fish"),
    ] {
        assert_eq!(
            wheel_member(&format!("{data}/{path}")),
            printed(&["completions", shell]),
            "{shell}"
        );
    }
}
