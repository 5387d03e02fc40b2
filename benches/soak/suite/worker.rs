//! The soak's worker processes (`benches/c/vg_soak_worker.c`): what each one is told to do, how it
//! is started, how its published status is read, and how its end is collected.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::cprogs::CProgram;
use super::lab::Lab;

/// How many devices the status record has room for (`VG_MAX_DEVICES` in the C worker).
pub const STATUS_DEVICES: usize = 4;
/// The status record: 19 little 64-bit words, in the order of `struct vg_worker_status`.
const STATUS_WORDS: usize = 4 + 2 * STATUS_DEVICES + 7;
/// Its size in bytes; the worker sizes its file to exactly this.
pub const STATUS_SIZE: usize = STATUS_WORDS * 8;

/// One reading of a worker's status file (`struct vg_worker_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Odd while a driver call is in progress.
    pub seq: u64,
    /// CLOCK_MONOTONIC (ns) when the current driver call started.
    pub op_started_ns: u64,
    /// The worker's pid, as it sees it.
    pub pid: u64,
    /// How many devices it uses.
    pub devices: u64,
    /// Allocation bytes held, by visible device ordinal.
    pub bytes: [u64; STATUS_DEVICES],
    /// Primary contexts held, by visible device ordinal.
    pub contexts: [u64; STATUS_DEVICES],
    /// Driver calls made.
    pub ops: u64,
    /// Allocations that succeeded.
    pub allocs_ok: u64,
    /// Allocations refused with CUDA_ERROR_OUT_OF_MEMORY.
    pub allocs_refused: u64,
    /// Calls that failed otherwise.
    pub allocs_failed_other: u64,
    /// Frees that succeeded.
    pub frees: u64,
    /// Children forked.
    pub forks: u64,
    /// 1 once the worker has freed everything and is exiting.
    pub finished: u64,
}

impl WorkerStatus {
    /// Parses a status file's bytes; `None` unless it is exactly one record.
    pub fn parse(bytes: &[u8]) -> Option<WorkerStatus> {
        if bytes.len() != STATUS_SIZE {
            return None;
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8-byte chunk")))
            .collect();
        let array = |at: usize| -> [u64; STATUS_DEVICES] {
            words[at..at + STATUS_DEVICES].try_into().expect("slice")
        };
        let after = 4 + 2 * STATUS_DEVICES;
        Some(WorkerStatus {
            seq: words[0],
            op_started_ns: words[1],
            pid: words[2],
            devices: words[3],
            bytes: array(4),
            contexts: array(4 + STATUS_DEVICES),
            ops: words[after],
            allocs_ok: words[after + 1],
            allocs_refused: words[after + 2],
            allocs_failed_other: words[after + 3],
            frees: words[after + 4],
            forks: words[after + 5],
            finished: words[after + 6],
        })
    }

    /// True when no driver call is in progress.
    pub fn quiescent(&self) -> bool {
        self.seq.is_multiple_of(2)
    }
}

/// Everything random about one worker, chosen by the soak's seeded generator.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// "direct", "dlsym" or "procaddr".
    pub path: &'static str,
    /// `VRAMGUARD_POLICY`.
    pub policy: &'static str,
    /// `VRAMGUARD_ON_ERROR`.
    pub on_error: &'static str,
    /// `CUDA_VISIBLE_DEVICES`: the physical index of each visible ordinal.
    pub visible: [usize; 2],
    /// The worker's own seed.
    pub seed: u64,
    /// CLOCK_MONOTONIC (ns) at which it stops.
    pub until_ns: u64,
    /// Largest single allocation.
    pub max_chunk: u64,
    /// Whether it forks children now and then.
    pub forks: bool,
}

impl WorkerPlan {
    /// A random plan: any path, deny or wait, open or (one in four) closed, either device order.
    pub fn random(
        rng: &mut fastrand::Rng,
        until_ns: u64,
        max_chunk: u64,
        forks: bool,
    ) -> WorkerPlan {
        WorkerPlan {
            path: rng.choice(["direct", "dlsym", "procaddr"]).unwrap(),
            policy: rng.choice(["deny", "wait"]).unwrap(),
            on_error: if rng.u8(..4) == 0 { "closed" } else { "open" },
            visible: if rng.bool() { [0, 1] } else { [1, 0] },
            seed: rng.u64(..) >> 1,
            until_ns,
            max_chunk,
            forks,
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// A running worker.
pub struct Worker {
    child: Child,
    plan: WorkerPlan,
    status_path: PathBuf,
    log_path: PathBuf,
    started: Instant,
}

impl Worker {
    /// Starts worker number `number` of the run (under the guard if `guarded`), as `plan` says.
    pub fn start(
        lab: &Lab,
        programs: &CProgram,
        plan: WorkerPlan,
        number: u64,
        guarded: bool,
    ) -> Worker {
        let dir = lab.dir().join("workers");
        let status_path = dir.join(format!("{number}.status"));
        let log_path = dir.join(format!("{number}.log"));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut command = lab.command(programs.for_path(plan.path), guarded);
        command
            .args(["--path", plan.path, "--devices", "2", "--max-held", "6"])
            .arg("--seed")
            .arg(plan.seed.to_string())
            .arg("--until")
            .arg(plan.until_ns.to_string())
            .arg("--max-chunk")
            .arg(plan.max_chunk.to_string())
            .arg("--status")
            .arg(&status_path)
            .args(["--forks", if plan.forks { "1" } else { "0" }])
            .env("VRAMGUARD_POLICY", plan.policy)
            .env("VRAMGUARD_ON_ERROR", plan.on_error)
            .env(
                "CUDA_VISIBLE_DEVICES",
                format!("{},{}", plan.visible[0], plan.visible[1]),
            )
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a soak worker: {e}"));
        Worker {
            child,
            plan,
            status_path,
            log_path,
            started: Instant::now(),
        }
    }

    /// The worker's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it was told to do, for messages.
    pub fn describe(&self) -> String {
        let p = &self.plan;
        format!(
            "path={} policy={} on_error={} visible={},{} seed={} started {:?} ago",
            p.path,
            p.policy,
            p.on_error,
            p.visible[0],
            p.visible[1],
            p.seed,
            self.started.elapsed()
        )
    }

    /// The physical device index of visible ordinal `ordinal` (`CUDA_VISIBLE_DEVICES` order).
    pub fn physical(&self, ordinal: usize) -> usize {
        self.plan
            .visible
            .get(ordinal)
            .copied()
            .unwrap_or(usize::MAX)
    }

    /// Its status file now; `None` before it has written it.
    pub fn status(&self) -> Option<WorkerStatus> {
        std::fs::read(&self.status_path)
            .ok()
            .and_then(|bytes| WorkerStatus::parse(&bytes))
    }

    /// Driver calls it made, from its last status.
    pub fn final_operations(&self) -> u64 {
        self.status().map_or(0, |s| s.ops)
    }

    /// Children it forked, from its last status.
    pub fn final_forks(&self) -> u64 {
        self.status().map_or(0, |s| s.forks)
    }

    /// Whether it has exited (is a zombie not yet collected), without collecting it.
    pub fn has_exited(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child waitable.
        let result =
            unsafe { libc::waitid(libc::P_PID, self.pid() as libc::id_t, &mut info, flags) };
        // SAFETY: waitid filled `info` (pid 0: no state change yet).
        result != 0 || unsafe { info.si_pid() } != 0
    }

    /// How it ended, if it has.
    pub fn try_exit(&mut self) -> Option<Exit> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok()??;
        Some(match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Code(-1),
        })
    }

    /// Kills it (SIGKILL, after SIGCONT in case it is stopped) and collects it.
    pub fn kill(&mut self) {
        signal(self.pid(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines the worker (and the guard inside it) wrote on stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Sends `signal` to process `pid`; false if it is gone.
pub fn signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a pid we started and a valid signal number has no memory effects.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Waits up to `patience` until process `pid` is stopped (state `T` or `t` in `/proc/pid/stat`).
pub fn wait_until_stopped(pid: i32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Whether process `pid` maps the file with device number `dev` and inode `inode` (from
/// `/proc/pid/maps`: `address perms offset major:minor inode path`, the device in hex).
pub fn maps_file(pid: i32, dev: u64, inode: u64) -> bool {
    let wanted = (libc::major(dev), libc::minor(dev));
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().any(|line| {
        let mut fields = line.split_ascii_whitespace().skip(3);
        let device = fields
            .next()
            .and_then(|d| d.split_once(':'))
            .and_then(|(a, b)| {
                Some((
                    u32::from_str_radix(a, 16).ok()?,
                    u32::from_str_radix(b, 16).ok()?,
                ))
            });
        let node = fields.next().and_then(|n| n.parse::<u64>().ok());
        device == Some(wanted) && node == Some(inode)
    })
}

/// Makes this process the reaper of its orphaned descendants (children forked by workers that
/// died first), so that the end of the run can wait until they are gone too: until then they
/// keep their parent's memory alive, as on a real driver.
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if result != 0 {
        eprintln!(
            "soak: cannot become a subreaper ({}); orphans are left to init",
            std::io::Error::last_os_error()
        );
    }
}

/// Collects orphaned descendants that have exited, never a process in `workers` (those are
/// collected through their [`Worker`]). With a nonzero `patience`, waits up to that long for all
/// remaining children (`workers` must then be empty).
pub fn reap_orphans(workers: &[Worker], patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child waitable.
        let result = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        if result != 0 {
            return; // no children at all
        }
        // SAFETY: waitid filled `info` for a child event (or left it zeroed: pid 0).
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if workers.iter().any(|w| w.pid() == pid) {
            return; // a worker's end: its Worker collects it
        }
        // SAFETY: `pid` is an exited child of ours that no one else waits for.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}
