//! Shared helpers of the integration tests that run programs against the simulated driver
//! (`mod support;`): where the release artifacts are, the test clients (built once per target
//! directory, race-free across test binaries), a [`Sandbox`] with its own simulated card and
//! ledger directory, and running children with deadlines.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

mod hang_guard;
pub mod pid_namespace;
mod skip;
mod spawn;

// Not every test that includes this module uses both.
#[allow(unused_imports)]
pub use hang_guard::HANG_GUARD;
#[allow(unused_imports)]
pub use skip::skip;

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, else `<repo>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo().join(dir)
            }
        }
        _ => repo().join("target"),
    }
}

/// The release build directory the tests use.
pub fn release_dir() -> PathBuf {
    target_dir().join("release")
}

/// Paths of the built artifacts.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// `libvramguard.so`, the preload library.
    pub preload: PathBuf,
    /// `libcuda.so`, the simulated driver (soname `libcuda.so.1`).
    pub simulator: PathBuf,
    /// The `simcuda` control and report tool.
    pub simcuda: PathBuf,
    /// The `vramguard` command line.
    pub cli: PathBuf,
    /// `libnvidia_ml.so`, the simulated management library (soname `libnvidia-ml.so.1`).
    pub nvml: PathBuf,
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, or `cargo build --release --workspace` first",
        path.display()
    );
    path
}

/// All artifacts; panics with the command to run when one is missing.
pub fn artifacts() -> Artifacts {
    let release = release_dir();
    Artifacts {
        preload: require(release.join("libvramguard.so")),
        simulator: require(release.join("libcuda.so")),
        simcuda: require(release.join("simcuda")),
        cli: require(release.join("vramguard")),
        nvml: nvml_simulator(),
    }
}

/// The simulated management library, `libnvidia_ml.so` (soname `libnvidia-ml.so.1`).
pub fn nvml_simulator() -> PathBuf {
    require(release_dir().join("libnvidia_ml.so"))
}

/// The simulator's artifacts only (for the simulator's own tests).
pub fn simulator_artifacts() -> (PathBuf, PathBuf) {
    let release = release_dir();
    (
        require(release.join("libcuda.so")),
        require(release.join("simcuda")),
    )
}

/// How a client reaches the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientPath {
    /// Linked with `-lcuda`.
    Direct,
    /// `dlopen` + `dlsym` of the exported names.
    Dlsym,
    /// cudart's way: `cuGetProcAddress_v2`, then everything through `cuGetProcAddress`.
    Procaddr,
    /// Python `ctypes`.
    Python,
}

impl ClientPath {
    /// Every path.
    pub const ALL: [ClientPath; 4] = [
        ClientPath::Direct,
        ClientPath::Dlsym,
        ClientPath::Procaddr,
        ClientPath::Python,
    ];

    /// The name the client prints in its summary (`path=...`).
    pub fn name(self) -> &'static str {
        match self {
            ClientPath::Direct => "direct",
            ClientPath::Dlsym => "dlsym",
            ClientPath::Procaddr => "procaddr",
            ClientPath::Python => "python",
        }
    }
}

/// The built test clients.
#[derive(Debug, Clone)]
pub struct Clients {
    pub direct: PathBuf,
    pub dlsym: PathBuf,
    pub procaddr: PathBuf,
    /// `tests/clients/client.py` (run with `python3`).
    pub python: PathBuf,
}

impl Clients {
    /// The program of one path.
    pub fn path(&self, which: ClientPath) -> &Path {
        match which {
            ClientPath::Direct => &self.direct,
            ClientPath::Dlsym => &self.dlsym,
            ClientPath::Procaddr => &self.procaddr,
            ClientPath::Python => &self.python,
        }
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Builds the C clients into `<target>/clients/` (once; rebuilt when a source or the simulator
/// is newer) and returns every client's path. Test binaries running at once serialise on a lock.
pub fn clients() -> Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(build_clients).clone()
}

fn build_clients() -> Clients {
    let (simulator, _) = simulator_artifacts();
    let sources = repo().join("tests/clients");
    let shared: Vec<PathBuf> = ["workload.c", "workload.h", "cuda_min.h", "go_file.h"]
        .iter()
        .map(|f| sources.join(f))
        .chain([simulator.clone()])
        .collect();
    let link_simulator = format!(
        "-L{}",
        simulator
            .parent()
            .expect("the simulator has a directory")
            .display()
    );
    let [direct, dlsym, procaddr] = [
        ("client-direct", "bind_direct.c"),
        ("client-dlsym", "bind_dlsym.c"),
        ("client-procaddr", "bind_procaddr.c"),
    ]
    .map(|(name, binding)| {
        let binding = sources.join(binding);
        let workload = sources.join("workload.c");
        let mut args: Vec<&OsStr> = ["-O1", "-Wall", "-Wextra", "-Werror", "-std=c11"]
            .map(OsStr::new)
            .to_vec();
        args.extend([
            workload.as_os_str(),
            binding.as_os_str(),
            OsStr::new("-pthread"),
        ]);
        if name == "client-direct" {
            args.extend([OsStr::new(&link_simulator), OsStr::new("-lcuda")]);
        } else {
            args.push(OsStr::new("-ldl"));
        }
        let inputs: Vec<PathBuf> = shared.iter().cloned().chain([binding.clone()]).collect();
        build_c(name, &inputs, &args)
    });
    Clients {
        direct,
        dlsym,
        procaddr,
        python: sources.join("client.py"),
    }
}

/// A management library that cannot answer (`tests/clients/broken_nvml.c`): `nvmlInit_v2` fails,
/// or with `BROKEN_NVML=hang` never returns, as NVML can on a wedged GPU.
pub fn broken_nvml() -> PathBuf {
    let source = repo().join("tests/clients/broken_nvml.c");
    build_c(
        "libbroken-nvml.so",
        std::slice::from_ref(&source),
        &[
            "-shared".as_ref(),
            "-fPIC".as_ref(),
            "-Wall".as_ref(),
            "-Werror".as_ref(),
            source.as_os_str(),
        ],
    )
}

/// Compiles a C program or library with `cc -o <output> <args>` into `<target>/clients/`, unless
/// it is already newer than every one of `inputs`, and returns its path. Test binaries building
/// at once serialise on a lock in that directory (given up after 5 minutes).
pub fn build_c(output: &str, inputs: &[PathBuf], args: &[&OsStr]) -> PathBuf {
    let out = target_dir().join("clients");
    fs::create_dir_all(&out).expect("create the clients directory");
    let lock_path = out.join(".build-lock");
    let lock = File::create(&lock_path).expect("create the clients build lock");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // SAFETY: flock on a descriptor we own; non-blocking, retried until the deadline. The
        // lock goes with the descriptor when `lock` is dropped.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "another test binary held {} for 5 minutes",
            lock_path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let target = out.join(output);
    let newest_input = inputs.iter().filter_map(|p| modified(p)).max();
    if modified(&target).is_some_and(|built| Some(built) >= newest_input) {
        return target;
    }
    let temporary = out.join(format!("{output}.tmp{}", std::process::id()));
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_string()));
    cc.arg("-o").arg(&temporary).args(args);
    let output = run_with_deadline(cc, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "building {} failed:\n{}{}",
        target.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&temporary, &target).expect("move the build into place");
    target
}

/// The ways the simulated driver may answer `cuGetProcAddress` (`SIMCUDA_PROCADDR`): with its
/// exported symbols, or with internal functions that `dlsym` cannot find, as real drivers do.
/// Tests of the runtime's path run under each.
pub const ANSWER_MODES: [&str; 2] = ["exported", "internal"];

/// The management library's soname, as the sandbox's library directory holds it.
const NVML_NAME: &str = "libnvidia-ml.so.1";

/// A file whose creation lets waiting test programs go on: the clients' `--hold-until`,
/// `--hold-if-complete-until` and `--resume-file`, the interposer programs' stages
/// (`tests/clients/go_file.h`). Created by [`GoFile::go`], or when dropped, so that the programs
/// of a test that failed do not wait for it.
pub struct GoFile(PathBuf);

impl GoFile {
    /// A go file at `path` (not created yet).
    pub fn at(path: PathBuf) -> GoFile {
        let _ = fs::remove_file(&path);
        GoFile(path)
    }

    /// The path, as a program argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("sandbox paths are UTF-8")
    }

    /// Lets the programs waiting for this file go on.
    pub fn go(&self) {
        fs::write(&self.0, b"").expect("create the go file");
    }
}

impl Drop for GoFile {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, b"");
    }
}

/// A private simulated card, library directory and ledger directory; removed on drop.
pub struct Sandbox {
    root: tempfile::TempDir,
    /// `SIMCUDA_STATE`.
    pub state: PathBuf,
    /// Holds `libcuda.so.1` -> the simulated driver and `libnvidia-ml.so.1` -> the simulated
    /// management library; goes first in `LD_LIBRARY_PATH`.
    pub lib_dir: PathBuf,
    /// `VRAMGUARD_DIR`.
    pub ledger_dir: PathBuf,
    env: HashMap<String, String>,
    /// See [`Sandbox::until_killed`].
    never_created: String,
}

impl Sandbox {
    /// A sandbox whose card has `sim_devices` (`SIMCUDA_DEVICES` syntax).
    pub fn new(sim_devices: &str) -> Sandbox {
        let (simulator, _) = simulator_artifacts();
        let root = tempfile::Builder::new()
            .prefix("vramguard-test-")
            .tempdir()
            .expect("create a temporary directory");
        let lib_dir = root.path().join("lib");
        let ledger_dir = root.path().join("ledger");
        fs::create_dir_all(&lib_dir).expect("create the library directory");
        fs::create_dir_all(&ledger_dir).expect("create the ledger directory");
        symlink(&simulator, lib_dir.join("libcuda.so.1")).expect("link libcuda.so.1");
        let nvml = lib_dir.join(NVML_NAME);
        symlink(nvml_simulator(), &nvml).expect("link libnvidia-ml.so.1");
        let state = root.path().join("card").join("state");
        let mut env = HashMap::new();
        env.insert("SIMCUDA_STATE".to_string(), state.display().to_string());
        env.insert("SIMCUDA_DEVICES".to_string(), sim_devices.to_string());
        env.insert("VRAMGUARD_NVML".to_string(), nvml.display().to_string());
        let never_created = root.path().join("never-created").display().to_string();
        Sandbox {
            root,
            state,
            lib_dir,
            ledger_dir,
            env,
            never_created,
        }
    }

    /// The sandbox directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Takes the management library away, as on a machine without it: the link is removed and
    /// `VRAMGUARD_NVML` names the missing file (never a real `libnvidia-ml.so.1` of the host).
    pub fn without_nvml(&mut self) -> &mut Sandbox {
        let _ = fs::remove_file(self.lib_dir.join(NVML_NAME));
        self
    }

    /// A `--hold-until` file this sandbox never creates: a program given it holds what it took
    /// until the test kills it, however long the test takes to look (a program the test never
    /// kills gives up after five minutes: `tests/clients/go_file.h`).
    pub fn until_killed(&self) -> &str {
        &self.never_created
    }

    /// A [`GoFile`] in the sandbox named `name` (one name per thing that waits).
    pub fn go_file(&self, name: &str) -> GoFile {
        GoFile::at(self.root().join(format!("go-{name}")))
    }

    /// Sets a variable for every command of this sandbox (`SIMCUDA_*`, `VRAMGUARD_*`,
    /// `CUDA_VISIBLE_DEVICES`...). Card settings apply when the card is created: set them
    /// before the first command, or call [`Sandbox::init`].
    pub fn set_env(&mut self, key: &str, value: &str) -> &mut Sandbox {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Makes the simulated driver answer `cuGetProcAddress` in `mode` (one of [`ANSWER_MODES`]).
    pub fn answering(&mut self, mode: &str) -> &mut Sandbox {
        assert!(ANSWER_MODES.contains(&mode), "no answer mode {mode:?}");
        self.set_env("SIMCUDA_PROCADDR", mode)
    }

    /// Removes a variable set with [`Sandbox::set_env`].
    pub fn unset_env(&mut self, key: &str) -> &mut Sandbox {
        self.env.remove(key);
        self
    }

    fn apply(&self, command: &mut Command) {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("SIMCUDA_")
                || key.starts_with("VRAMGUARD_")
                || key == "LD_PRELOAD"
                || key == "CUDA_VISIBLE_DEVICES"
            {
                command.env_remove(&key);
            }
        }
        command.env("LD_LIBRARY_PATH", &self.lib_dir);
        command.env("VRAMGUARD_DIR", &self.ledger_dir);
        command.env("VRAMGUARD_DRIVER", self.lib_dir.join("libcuda.so.1"));
        command.env("PYTHONDONTWRITEBYTECODE", "1");
        command.envs(&self.env);
    }

    /// A command running any program in this sandbox's environment (no preload).
    pub fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        self.apply(&mut command);
        command
    }

    /// A client command: `LD_LIBRARY_PATH`, `SIMCUDA_*`, `VRAMGUARD_DIR`, `VRAMGUARD_DRIVER`,
    /// `VRAMGUARD_NVML`, and `LD_PRELOAD` of the guard when `guarded`.
    pub fn command(&self, path: ClientPath, guarded: bool) -> Command {
        let clients = clients();
        let mut command = match path {
            ClientPath::Python => {
                let mut c = Command::new("python3");
                c.arg(&clients.python);
                c
            }
            other => Command::new(clients.path(other)),
        };
        self.apply(&mut command);
        if guarded {
            command.env("LD_PRELOAD", artifacts().preload);
        }
        command
    }

    /// Runs a client to completion (a hang guard as deadline) with `args`; returns its outcome and
    /// pid.
    pub fn run_client(&self, path: ClientPath, guarded: bool, args: &[&str]) -> (Finished, u32) {
        let mut command = self.command(path, guarded);
        command.args(args);
        let running = spawn(command);
        let pid = running.pid();
        (running.finish(HANG_GUARD), pid)
    }

    /// Starts a client in the background with `args`.
    pub fn start_client(&self, path: ClientPath, guarded: bool, args: &[&str]) -> Running {
        let mut command = self.command(path, guarded);
        command.args(args);
        spawn(command)
    }

    /// [`Sandbox::start_client`], then waits (up to `timeout`) until the client prints that it is
    /// holding its memory.
    pub fn start_holding(
        &self,
        path: ClientPath,
        guarded: bool,
        args: &[&str],
        timeout: Duration,
    ) -> Running {
        let mut client = self.start_client(path, guarded, args);
        client.wait_for_line("holding", timeout);
        client
    }

    /// Starts a client (linked with `-lcuda`) that takes one allocation of `chunk` in the primary
    /// context and holds it until killed; returns once it holds it.
    pub fn hold(&self, guarded: bool, chunk: &str) -> Running {
        self.start_holding(
            ClientPath::Direct,
            guarded,
            &[
                "--chunk",
                chunk,
                "--count",
                "1",
                "--hold-until",
                self.until_killed(),
            ],
            HANG_GUARD,
        )
    }

    /// Starts a client through `path` that takes `chunk` in one allocation and holds it until
    /// `release` goes; returns once it holds.
    pub fn start_holder(
        &self,
        path: ClientPath,
        guarded: bool,
        chunk: &str,
        release: &GoFile,
    ) -> Running {
        let args = [
            "--chunk",
            chunk,
            "--count",
            "1",
            "--hold-until",
            release.arg(),
        ];
        self.start_holding(path, guarded, &args, HANG_GUARD)
    }

    /// A `simcuda` tool command.
    pub fn simcuda(&self, args: &[&str]) -> Command {
        let (_, tool) = simulator_artifacts();
        let mut command = self.program(tool);
        command.args(args);
        command
    }

    fn simcuda_ok(&self, args: &[&str]) -> String {
        let output = run_with_deadline(self.simcuda(args), HANG_GUARD);
        assert!(
            output.status.success(),
            "simcuda {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `simcuda init`: (re)creates the card from the sandbox's variables.
    pub fn init(&self) {
        self.simcuda_ok(&["init"]);
    }

    /// `simcuda reset`.
    pub fn reset(&self) {
        self.simcuda_ok(&["reset"]);
    }

    /// `simcuda report --json`, parsed.
    pub fn sim_report(&self) -> Value {
        let text = self.simcuda_ok(&["report", "--json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("simcuda report is not JSON ({e}): {text}"))
    }
}

/// Collects a child's pipe on a thread, line by line.
struct LineReader {
    lines: Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl LineReader {
    fn new(pipe: impl Read + Send + 'static) -> LineReader {
        let (sender, lines) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader {
            lines,
            thread: Some(thread),
        }
    }
}

/// A child running in the background, its output collected as it comes.
pub struct Running {
    child: Child,
    stdout: LineReader,
    stderr: LineReader,
    seen: Vec<String>,
    errors: Vec<String>,
}

/// One of a child's piped output streams.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A finished child.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The client summary in stdout.
    pub fn summary(&self) -> Summary {
        parse_summary(&self.stdout)
    }
}

/// Starts `command` with piped output.
pub fn spawn(mut command: Command) -> Running {
    let mut child = spawn::spawn_piped(&mut command);
    let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
    let stderr = LineReader::new(child.stderr.take().expect("piped stderr"));
    Running {
        child,
        stdout,
        stderr,
        seen: Vec::new(),
        errors: Vec::new(),
    }
}

impl Running {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout lines read so far by the waits.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits until a stdout line contains `needle`; panics (killing the child) after `timeout`
    /// or if the child's output ends first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_or_end(needle, timeout)
            .unwrap_or_else(|| self.ended_before(needle))
    }

    /// Waits until a stderr line contains `needle`; panics (killing the child) after `timeout`
    /// or if the child's stderr ends first.
    pub fn wait_for_stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_on(Stream::Stderr, needle, timeout)
            .unwrap_or_else(|| self.ended_before(needle))
    }

    /// Waits until a stdout line contains `needle` (`Some(line)`) or the child's stdout ends
    /// (`None`: it exited without printing one); panics (killing the child) after `timeout`.
    pub fn wait_for_line_or_end(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_on(Stream::Stdout, needle, timeout)
    }

    fn wait_on(&mut self, stream: Stream, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = match stream {
                Stream::Stdout => self.stdout.lines.recv_timeout(left),
                Stream::Stderr => self.stderr.lines.recv_timeout(left),
            };
            match received {
                Ok(line) => {
                    let found = line.contains(needle).then(|| line.clone());
                    match stream {
                        Stream::Stdout => self.seen.push(line),
                        Stream::Stderr => self.errors.push(line),
                    }
                    if found.is_some() {
                        return found;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?} within {timeout:?}; stdout so far:\n{}\nstderr so far:\n{}",
                        self.seen.join("\n"),
                        self.errors.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn ended_before(&mut self, needle: &str) -> ! {
        let _ = self.child.kill();
        self.seen.extend(self.stdout.lines.try_iter());
        self.errors.extend(self.stderr.lines.try_iter());
        panic!(
            "output ended before a line with {needle:?}; stdout:\n{}\nstderr:\n{}",
            self.seen.join("\n"),
            self.errors.join("\n")
        );
    }

    /// SIGKILLs the child and reaps it. Output its own children still write is not awaited.
    pub fn kill(mut self) -> Finished {
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap the killed child");
        self.collect(status, Duration::from_millis(300))
    }

    /// Waits for the child to exit; kills it and panics after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("wait for the child") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let rest: Vec<String> = self.stdout.lines.try_iter().collect();
                    panic!(
                        "child did not finish within {timeout:?}; stdout:\n{}\n{}",
                        self.seen.join("\n"),
                        rest.join("\n")
                    );
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        self.collect(status, Duration::from_secs(5))
    }

    /// Gathers the rest of the output: until the pipes close (every writer, including forked
    /// children, gone) or `grace` passes.
    fn collect(mut self, status: ExitStatus, grace: Duration) -> Finished {
        let deadline = Instant::now() + grace;
        for (reader, into) in [
            (&mut self.stdout, &mut self.seen),
            (&mut self.stderr, &mut self.errors),
        ] {
            while let Ok(line) = reader
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                into.push(line);
            }
            if let Some(thread) = reader.thread.take_if(|t| t.is_finished()) {
                let _ = thread.join();
            }
        }
        let mut stdout = self.seen.join("\n");
        stdout.push('\n');
        let mut stderr = self.errors.join("\n");
        stderr.push('\n');
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` to completion; kills it and panics if it takes longer than `timeout`.
pub fn run_with_deadline(command: Command, timeout: Duration) -> Output {
    let finished = spawn(command).finish(timeout);
    Output {
        status: finished.status,
        stdout: finished.stdout.into_bytes(),
        stderr: finished.stderr.into_bytes(),
    }
}

/// Runs `command` to completion (a hang is killed at `timeout`) and returns its stdout; panics
/// with its stderr, under `what`, when it fails.
pub fn stdout_of_success(command: Command, timeout: Duration, what: &str) -> Vec<u8> {
    let output = run_with_deadline(command, timeout);
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A client's final `summary` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub path: String,
    pub ok: u64,
    pub failed: u64,
    pub bytes: u64,
    /// `None` for `first_error=none`.
    pub first_error: Option<String>,
}

/// Parses the last `summary ...` line of a client's stdout; panics if there is none.
pub fn parse_summary(stdout: &str) -> Summary {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .collect();
    let number = |key: &str| -> u64 {
        fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("summary without a number {key}: {line}"))
    };
    Summary {
        path: fields
            .get("path")
            .unwrap_or_else(|| panic!("summary without path: {line}"))
            .to_string(),
        ok: number("ok"),
        failed: number("failed"),
        bytes: number("bytes"),
        first_error: fields
            .get("first_error")
            .filter(|v| **v != "none")
            .map(|v| v.to_string()),
    }
}

/// The `alloc ok <bytes>` events of a client's stdout.
pub fn allocations(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("alloc ok "))
        .filter_map(|b| b.trim().parse().ok())
        .collect()
}

/// Helpers to read `simcuda report --json`.
pub mod report {
    use serde_json::Value;

    /// Device `index` of a report.
    pub fn device(report: &Value, index: usize) -> &Value {
        &report["devices"][index]
    }

    /// A number field of device `index`.
    pub fn device_u64(report: &Value, index: usize, key: &str) -> u64 {
        device(report, index)[key]
            .as_u64()
            .unwrap_or_else(|| panic!("device {index} has no {key}: {report}"))
    }

    /// The process records of `pid`.
    pub fn process(report: &Value, pid: u32) -> Option<&Value> {
        report["processes"]
            .as_array()?
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// How often `pid` called entry point `name` (0 when never).
    pub fn calls(report: &Value, pid: u32, name: &str) -> u64 {
        process(report, pid)
            .and_then(|p| p["calls"][name].as_u64())
            .unwrap_or(0)
    }

    /// Calls of every entry point whose name starts with `prefix`, summed over `pid`.
    pub fn calls_with_prefix(report: &Value, pid: u32, prefix: &str) -> u64 {
        process(report, pid)
            .and_then(|p| p["calls"].as_object())
            .map(|calls| {
                calls
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .filter_map(|(_, v)| v.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }
}
