//! Helpers for the command line's integration tests (`tests/cli_*.rs`): where the built
//! artifacts are, private temporary directories, a simulated card, and running a child with a
//! deadline. Included with `#[path = "support/cli.rs"] mod cli_support;`.
#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "hang_guard.rs"]
mod hang_guard;
#[path = "skip.rs"]
mod skip;
#[path = "spawn.rs"]
pub mod spawn;

// Not every test that includes this module uses both.
#[allow(unused_imports)]
pub use hang_guard::HANG_GUARD;
#[allow(unused_imports)]
pub use skip::skip;

/// The `vramguard` executable cargo built for these tests.
pub fn vramguard() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vramguard"))
}

/// The directory of the release artifacts (`target/release`, or `$CARGO_TARGET_DIR/release`).
pub fn release_dir() -> PathBuf {
    vramguard()
        .parent()
        .expect("the executable has a directory")
        .to_path_buf()
}

/// The workspace root (for the scripts and docs).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built artifact next to `vramguard`, with a clear message when it is missing.
pub fn artifact(name: &str) -> PathBuf {
    let path = release_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh (or cargo build --release --workspace --all-targets) first",
        path.display()
    );
    path
}

/// The guard library.
pub fn library() -> PathBuf {
    artifact("libvramguard.so").canonicalize().unwrap()
}

/// A private temporary directory, removed when dropped; open to other users as far as the umask
/// allows, like a directory made with `mkdir`, and sticky (the ledger directory is created only
/// in a parent others cannot write without the sticky bit).
pub struct TempDir {
    dir: tempfile::TempDir,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("vramguard-cli-test-{label}-"))
            .permissions(fs::Permissions::from_mode(0o1777))
            .tempdir()
            .unwrap();
        TempDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path().join(name)
    }
}

/// A simulated card in a temporary directory: the state file, a lib dir with `libcuda.so.1` ->
/// the simulated driver and `libnvidia-ml.so.1` -> the simulated management library, and a
/// ledger directory.
pub struct SimCard {
    pub dir: TempDir,
}

impl SimCard {
    pub fn new(devices: &str) -> SimCard {
        let dir = TempDir::new("sim");
        fs::create_dir(dir.join("lib")).unwrap();
        symlink(artifact("libcuda.so"), dir.join("lib/libcuda.so.1")).unwrap();
        symlink(
            artifact("libnvidia_ml.so"),
            dir.join("lib/libnvidia-ml.so.1"),
        )
        .unwrap();
        fs::write(dir.join("devices"), devices).unwrap();
        let card = SimCard { dir };
        let out = run_with_deadline(card.command(artifact("simcuda")).arg("init"), HANG_GUARD);
        assert!(
            out.status.success(),
            "simcuda init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        card
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    pub fn driver(&self) -> PathBuf {
        self.dir.join("lib/libcuda.so.1")
    }

    /// A command with the card's environment (and none of the caller's guard settings).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let text = key.to_string_lossy();
            if text.starts_with("VRAMGUARD_") || text.starts_with("SIMCUDA_") {
                command.env_remove(&key);
            }
        }
        let devices =
            fs::read_to_string(self.dir.join("devices")).unwrap_or_else(|_| "4GiB".into());
        command
            .env_remove("LD_PRELOAD")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env("LD_LIBRARY_PATH", self.dir.join("lib"))
            .env("SIMCUDA_STATE", self.dir.join("card-state"))
            .env("SIMCUDA_DEVICES", devices)
            .env("VRAMGUARD_DIR", self.ledger_dir())
            .env("VRAMGUARD_DRIVER", self.driver())
            .env("VRAMGUARD_NVML", self.dir.join("lib/libnvidia-ml.so.1"));
        command
    }
}

/// Runs `command` to completion, killing it and panicking if it takes longer than `deadline`.
pub fn run_with_deadline(command: &mut Command, deadline: Duration) -> Output {
    run_with_deadline_and_pid(command, deadline).1
}

/// [`run_with_deadline`], also returning the pid the command ran as.
pub fn run_with_deadline_and_pid(command: &mut Command, deadline: Duration) -> (u32, Output) {
    let mut child = spawn::spawn_piped(command);
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    (pid, output)
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
