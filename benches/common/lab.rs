//! A private simulated machine for the benchmarks and the soak suite: a fresh directory holding
//! the simulated card's state file, a `libcuda.so.1` link to the simulated driver and the ledger
//! directory, and commands that run programs on it with or without the guard preloaded.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The build outputs the benchmarks need.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The release output directory.
    pub release: PathBuf,
    /// `libvramguard.so`.
    pub preload: PathBuf,
    /// The simulated driver, `libcuda.so`.
    pub libcuda: PathBuf,
    /// The simulator's control tool, `simcuda`.
    pub simcuda: PathBuf,
}

/// Finds the release build in `$CARGO_TARGET_DIR` or `target/`; panics, saying how to build it,
/// when something is missing.
pub fn artifacts() -> Artifacts {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let release = target.join("release");
    let found = Artifacts {
        preload: release.join("libvramguard.so"),
        libcuda: release.join("libcuda.so"),
        simcuda: release.join("simcuda"),
        release,
    };
    for file in [&found.preload, &found.libcuda, &found.simcuda] {
        assert!(
            file.is_file(),
            "{} is missing: run `cargo build --release --workspace` (or scripts/test.sh) first",
            file.display()
        );
    }
    found
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the C programs use for their timestamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A simulated machine in its own directory, removed on drop.
pub struct Lab {
    dir: tempfile::TempDir,
    artifacts: Artifacts,
    env: RefCell<BTreeMap<String, String>>,
}

impl Lab {
    /// A fresh machine with the simulated devices `devices` (`SIMCUDA_DEVICES` syntax).
    pub fn new(artifacts: &Artifacts, devices: &str) -> Lab {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("vramguard-lab-")
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", base.display()));
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&lib)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", lib.display()));
        std::os::unix::fs::symlink(&artifacts.libcuda, lib.join("libcuda.so.1")).unwrap_or_else(
            |e| {
                panic!(
                    "cannot link the simulated driver into {}: {e}",
                    lib.display()
                )
            },
        );
        let lab = Lab {
            dir,
            artifacts: artifacts.clone(),
            env: RefCell::new(BTreeMap::new()),
        };
        lab.set_env("LD_LIBRARY_PATH", &lib.to_string_lossy());
        lab.set_env(
            "SIMCUDA_STATE",
            &lab.dir().join("simcuda-state").to_string_lossy(),
        );
        lab.set_env("SIMCUDA_DEVICES", devices);
        lab.set_env("VRAMGUARD_DIR", &lab.ledger_dir().to_string_lossy());
        lab.set_env(
            "VRAMGUARD_DRIVER",
            &lib.join("libcuda.so.1").to_string_lossy(),
        );
        lab
    }

    /// The directory of this machine.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The ledger directory the guarded processes share (`VRAMGUARD_DIR`).
    pub fn ledger_dir(&self) -> PathBuf {
        self.dir().join("ledger")
    }

    /// The files in the ledger directory.
    pub fn ledger_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.ledger_dir())
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Sets a variable for every later command.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env
            .borrow_mut()
            .insert(key.to_owned(), value.to_owned());
    }

    /// A command running `program` on this machine, with `libvramguard.so` preloaded if `guarded`.
    pub fn command(&self, program: &Path, guarded: bool) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.env.borrow().iter())
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null());
        if guarded {
            command.env("LD_PRELOAD", &self.artifacts.preload);
        }
        command
    }

    /// `simcuda report --json`, parsed.
    pub fn sim_report(&self) -> serde_json::Value {
        let mut command = self.command(&self.artifacts.simcuda, false);
        command
            .args(["report", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = run_with_deadline(&mut command, Duration::from_secs(30));
        assert!(
            output.status.success(),
            "simcuda report failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("simcuda report --json printed something else ({e})"))
    }
}

/// Runs `command` (stdout and stderr as configured by the caller), killing it and panicking if it
/// has not finished within `deadline`.
pub fn run_with_deadline(command: &mut Command, deadline: Duration) -> Output {
    let description = format!("{command:?}");
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    wait_with_deadline(child, deadline)
        .unwrap_or_else(|| panic!("{description} ran past its deadline of {deadline:?}"))
}

/// Collects `child`'s output; kills it and returns `None` once `deadline` has passed. The exit is
/// awaited with a pidfd, so the caller learns of it at once (process start times are measured
/// through this).
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Option<Output> {
    let readers: Vec<_> = [
        child.stdout.take().map(box_read),
        child.stderr.take().map(box_read),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    })
    .collect();
    let exited = wait_for_exit(&mut child, Instant::now() + deadline);
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().ok().filter(|_| exited);
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let (stdout, stderr) = (
        outputs.next().unwrap_or_default(),
        outputs.next().unwrap_or_default(),
    );
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// Waits until `child` has exited (without collecting it) or `end` has passed; true if it exited.
fn wait_for_exit(child: &mut Child, end: Instant) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd =
        unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as libc::c_int;
    if pidfd < 0 {
        // No pidfd (old kernel): poll.
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_micros(200)),
                _ => return false,
            }
        }
    }
    let exited = loop {
        let left = end.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `poll` is one valid pollfd for an open descriptor we own.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready > 0 {
            break true;
        }
        if ready == 0 && left.is_zero() {
            break false;
        }
        // EINTR or a timeout rounded down: look again.
    };
    // SAFETY: `pidfd` is our own descriptor, closed once.
    unsafe { libc::close(pidfd) };
    exited
}

fn box_read(pipe: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    Box::new(pipe)
}
