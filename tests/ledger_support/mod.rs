//! Shared helpers of the ledger integration tests: private temporary directories, child
//! processes that re-run the test binary in a role (among them the shared "holder" role),
//! deadlines on every wait, the usual set-ups (a fresh member, bytes held), a seeded generator.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use vramguard_core::ledger::{DeviceId, LOCK_DEADLINE, Ledger, Request, Reservation, SlotId};

#[path = "../support/hang_guard.rs"]
mod hang_guard;
#[path = "../support/pid_namespace.rs"]
pub mod pid_namespace;
#[path = "../support/skip.rs"]
mod skip;
#[path = "../support/spawn.rs"]
mod spawn;

// Not every test that includes this module uses both.
#[allow(unused_imports)]
pub use hang_guard::HANG_GUARD;
#[allow(unused_imports)]
pub use skip::skip;

/// The environment variable that tells a re-run test binary which role to play.
pub const ROLE_VAR: &str = "VRAMGUARD_LEDGER_TEST_ROLE";
/// The environment variable carrying the ledger directory to a child.
pub const DIR_VAR: &str = "VRAMGUARD_LEDGER_TEST_DIR";

/// A directory removed (with its content) on drop, in `/dev/shm` where there is one (the
/// ledger's own file system), open to other users as far as the umask allows (children of some
/// tests run as another user), and sticky like `/dev/shm` itself (the ledger is created only
/// in a parent that others cannot write without the sticky bit).
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("vramguard-ledger-test-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o1777))
            .tempdir_in(base)
            .expect("create test directory");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    /// The ledger directory inside (not yet created).
    pub fn ledger_dir(&self) -> PathBuf {
        self.path().join("ledger")
    }
    /// Opens (creating it the first time) the ledger in [`TempDir::ledger_dir`].
    pub fn open_ledger(&self) -> Ledger {
        Ledger::open(&self.ledger_dir()).expect("open the test ledger")
    }
}

/// What most multi-process tests start from: a fresh temporary directory (removed on drop), its
/// ledger directory (for children), the ledger, test device 0 with `budget`, and this process
/// joined as `name`.
pub fn fresh_member(
    tag: &str,
    budget: u64,
    name: &str,
) -> (TempDir, PathBuf, Ledger, DeviceId, SlotId) {
    let tmp = TempDir::new(tag);
    let dir = tmp.ledger_dir();
    let ledger = tmp.open_ledger();
    let dev = device(&ledger, budget);
    let me = ledger.join(name).expect("join the test ledger");
    (tmp, dir, ledger, dev, me)
}

/// The role this process was started in, if it is a child of a multi-process test.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A required variable of a child role.
pub fn child_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child role needs {name}"))
}

/// The ledger directory given to a child.
pub fn child_dir() -> PathBuf {
    PathBuf::from(child_var(DIR_VAR))
}

/// Re-runs this test binary, running only `test` (which plays `role`), with `vars` set.
pub fn child_command(test: &str, role: &str, dir: &Path, vars: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    as_child(Command::new(&exe), test, role, dir, vars)
}

/// [`child_command`] for another user (`uid`/`gid` on the command): this test binary is first
/// copied into `into` (made world-readable), since the checkout it was built in may be closed to
/// other users (a clone in a private temporary directory, a home directory of mode 0750).
pub fn child_command_for_another_user(
    into: &Path,
    test: &str,
    role: &str,
    dir: &Path,
    vars: &[(&str, String)],
) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().expect("current test binary");
    let copy = into.join(exe.file_name().expect("the test binary has a name"));
    spawn::copy_program(&exe, &copy);
    for (path, mode) in [(into, 0o755), (copy.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("open the copy to other users");
    }
    as_child(Command::new(&copy), test, role, dir, vars)
}

/// `command` (this test binary, or a wrapper that execs it) made the child playing `role` in
/// `test` on the ledger directory `dir`, with `vars`; its reports are on its piped stdout.
pub fn as_child(
    mut command: Command,
    test: &str,
    role: &str,
    dir: &Path,
    vars: &[(&str, String)],
) -> Command {
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_VAR, role)
        .env(DIR_VAR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in vars {
        command.env(key, value);
    }
    command
}

pub fn spawn(test: &str, role: &str, dir: &Path, vars: &[(&str, String)]) -> Child {
    child_command(test, role, dir, vars)
        .spawn()
        .expect("spawn child test process")
}

/// Runs `work` on a thread of its own and returns what it returns; panics if it has not
/// finished after `timeout`, which only catches a hang (the thread is left behind).
pub fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    match receiver.recv_timeout(timeout) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {timeout:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked (see above)"),
    }
}

/// Runs `work` on this thread (so that it may borrow, a ledger for one) and returns what it
/// returns. A watchdog ends the whole test binary (abort, after saying what hung) if `work` has
/// not returned after `timeout`, which only catches a hang: a call that hangs on borrowed data
/// cannot be left behind on a thread of its own, as [`within`] does.
pub fn hang_guarded<T>(timeout: Duration, what: &str, work: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let what = what.to_owned();
    std::thread::spawn(move || {
        // Disconnected (work returned, or panicked and unwound): nothing to do.
        if let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(timeout) {
            eprintln!("hang guard: {what} did not return within {timeout:?}; aborting");
            std::process::abort();
        }
    });
    let value = work();
    drop(done);
    value
}

/// Waits for `child` until `deadline`; kills it and panics past it.
pub fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: child {} did not finish before its deadline",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` (deadline), asserts success, returns the lines it printed with `REPORT `.
pub fn finish(mut child: Child, deadline: Instant, what: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| line.strip_prefix("REPORT ").map(str::to_owned))
            .collect::<Vec<_>>()
    });
    let status = wait_until(&mut child, deadline, what);
    assert!(status.success(), "{what}: child failed with {status}");
    reader.join().expect("reader thread")
}

/// Reads lines starting with `REPORT ` from a child's stdout as they come, with a deadline each.
pub struct Reports {
    receiver: std::sync::mpsc::Receiver<String>,
}

impl Reports {
    pub fn new(child: &mut Child) -> Reports {
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(report) = line.strip_prefix("REPORT ")
                    && sender.send(report.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Reports { receiver }
    }
    /// The next report, or a panic after `timeout`.
    pub fn next(&self, timeout: Duration, what: &str) -> String {
        self.receiver
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("{what}: no report within {timeout:?}"))
    }
}

/// Prints a line the parent collects.
pub fn report(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "REPORT {line}");
    let _ = out.flush();
}

/// A deterministic UUID for test device `n`.
pub fn uuid(n: u8) -> [u8; 16] {
    let mut uuid = [0xA5u8; 16];
    uuid[0] = n;
    uuid
}

/// Registers test device 0 with `budget`.
pub fn device(ledger: &Ledger, budget: u64) -> DeviceId {
    ledger
        .register_device(uuid(0), "Test GPU", budget + (256 << 20), budget)
        .expect("register device")
}

/// Reserves `bytes` for `slot` on `dev` (refusing at once if they do not fit) and commits them.
pub fn hold(ledger: &Ledger, slot: SlotId, dev: DeviceId, bytes: u64) {
    let r = ledger
        .reserve(slot, dev, bytes, &Request::default())
        .expect("reserve bytes to hold");
    ledger.commit(r);
}

/// The first device's (used, reserved, held) in a fresh snapshot.
pub fn device_totals(ledger: &Ledger) -> (u64, u64, u64) {
    let snapshot = ledger.snapshot();
    let device = &snapshot.devices[0];
    (device.used, device.reserved, device.held)
}

/// Sleeps until `path` exists or `timeout` passed (the caller then carries on either way).
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The child role "holder": joins the ledger of [`child_dir`] (device 0 with budget
/// `HOLD_BUDGET`), holds `HOLD_BYTES`, reports `slot <index> pid <pid>`, then waits (at most
/// [`HANG_GUARD`]) for `STOP_FILE` and exits without leaving, like a crash: only the kernel drops
/// its lock.
pub fn holder() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, child_var("HOLD_BUDGET").parse().unwrap());
    let me = ledger.join("holder").unwrap();
    hold(&ledger, me, dev, child_var("HOLD_BYTES").parse().unwrap());
    report(format!("slot {} pid {}", me.index(), std::process::id()));
    wait_for_file(Path::new(&child_var("STOP_FILE")), HANG_GUARD);
    std::process::exit(0);
}

/// The variables of a [`holder`] child.
pub fn holder_vars(stop: &Path, budget: u64, bytes: u64) -> Vec<(&'static str, String)> {
    vec![
        ("STOP_FILE", stop.display().to_string()),
        ("HOLD_BUDGET", budget.to_string()),
        ("HOLD_BYTES", bytes.to_string()),
    ]
}

/// Starts a [`holder`] child (by re-running `test`) holding `bytes` until `stop` appears, and
/// waits (at most [`HANG_GUARD`]) until it holds them. Returns the child and its slot.
pub fn spawn_holder(
    test: &str,
    dir: &Path,
    stop: &Path,
    budget: u64,
    bytes: u64,
    what: &str,
) -> (Child, usize) {
    let mut child = spawn(test, "holder", dir, &holder_vars(stop, budget, bytes));
    let reports = Reports::new(&mut child);
    let (slot, _) = holder_slot(&reports.next(HANG_GUARD, what));
    (child, slot)
}

/// Parses a [`holder`]'s report into (slot, pid).
pub fn holder_slot(line: &str) -> (usize, i32) {
    let words: Vec<&str> = line.split(' ').collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// The tests' seeded generator: the same seed gives the same schedule.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n.max(1))
    }
}

/// `LEDGER_TEST_SEED`, or else a random seed (printed by tests so a failure can be replayed).
pub fn seed() -> u64 {
    std::env::var("LEDGER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Asks for `bytes` on `dev` while another member holds the device lock and cannot progress
/// (stopped inside it, or a forged word naming it): the request waits out the lock deadline, not
/// less, and is then admitted in a rebuilt ledger (a file other than the one at the path before),
/// not refused and not never (a request that never returns is a hang, ended by
/// [`hang_guarded`]). How long after the deadline it returns is the scheduler's business, not
/// asserted. Returns the reservation.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn admitted_after_a_rebuild_at_lock_deadline(
    ledger: &Ledger,
    slot: SlotId,
    dev: DeviceId,
    bytes: u64,
) -> Reservation {
    use std::os::unix::fs::MetadataExt;
    let inode = || {
        std::fs::symlink_metadata(ledger.path())
            .map(|m| m.ino())
            .ok()
    };
    let before = inode();
    let start = Instant::now();
    let reservation = hang_guarded(HANG_GUARD, "a request at a held device lock", || {
        ledger.reserve(slot, dev, bytes, &Request::default())
    })
    .expect("admitted in the rebuilt ledger");
    let waited = start.elapsed();
    assert!(
        waited >= LOCK_DEADLINE,
        "admitted before the lock deadline: {waited:?}"
    );
    assert_ne!(inode(), before, "the ledger was not rebuilt");
    assert_eq!(ledger.device_lock_token(dev), 0, "the rebuilt lock is held");
    reservation
}
