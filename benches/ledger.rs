//! Benchmark of the ledger's hot path: one reserve + commit + release of 1 MiB, timed one at a
//! time, uncontended and with 2, 4, 8 and 16 processes hammering the same device.
//!
//! Run: `cargo bench --bench ledger` (or `cargo bench --bench ledger -- --quick`).
//! Each worker process is this benchmark binary again, started with `LEDGER_BENCH_ROLE=worker`;
//! it writes its samples (nanoseconds, little-endian u32) to a file the parent merges.
//!
//! `cargo bench --bench ledger -- --backing [DIR]` measures instead what giving every page of
//! the ledger file its storage costs (`vramguard_core::ledger::backing`), at creation and at
//! join, in a directory of DIR's file system (default `/dev/shm`): median of 20 runs each.
//!
//! `cargo bench --bench ledger -- --wake [ROUNDS]` measures how soon a waiter in another process,
//! asleep in the queue, is admitted once room is made: by a release of the holder, and by the
//! holder's death (SIGKILL; the waiter finds it dead and takes its bytes back). ROUNDS of each
//! (default 20); the median, the 90th percentile and the worst. The tests check only that the
//! waiter is admitted (`tests/ledger_waiting.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vramguard_core::ledger::{Ledger, Request, backing, layout};

const ROLE_VAR: &str = "LEDGER_BENCH_ROLE";
const UUID: [u8; 16] = *b"ledger-bench-gpu";
const MIB: u64 = 1 << 20;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker needs {name}"))
}

/// Runs `iterations` timed reserve+commit+release cycles; returns the nanoseconds of each.
fn hammer(dir: &Path, iterations: usize, start_at_unix_ms: u64) -> Vec<u32> {
    let ledger = Ledger::open(dir).expect("open ledger");
    let dev = ledger
        .register_device(UUID, "Bench GPU", 1 << 40, 1 << 40)
        .expect("register");
    let me = ledger.join("ledger-bench").expect("join");
    let request = Request::default();
    while unix_ms() < start_at_unix_ms {
        std::thread::sleep(Duration::from_micros(200));
    }
    // Warm up caches and the branch predictor.
    for _ in 0..1000 {
        let r = ledger
            .reserve(me, dev, MIB, &request)
            .expect("warm-up reserve");
        ledger.commit(r);
        ledger.release(me, dev, MIB);
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let r = ledger.reserve(me, dev, MIB, &request).expect("reserve");
        ledger.commit(r);
        ledger.release(me, dev, MIB);
        samples.push(started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    ledger.leave(me);
    samples
}

fn worker() {
    let dir = PathBuf::from(env("LEDGER_BENCH_DIR"));
    let iterations: usize = env("LEDGER_BENCH_ITERATIONS").parse().expect("iterations");
    let start: u64 = env("LEDGER_BENCH_START").parse().expect("start");
    let samples = hammer(&dir, iterations, start);
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(env("LEDGER_BENCH_OUT"), bytes).expect("write samples");
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

fn run_processes(dir: &Path, processes: usize, iterations: usize) -> Vec<u32> {
    let exe = std::env::current_exe().expect("bench binary");
    let start = unix_ms() + 300;
    let outputs: Vec<PathBuf> = (0..processes)
        .map(|i| dir.join(format!("samples-{i}")))
        .collect();
    let mut children: Vec<_> = outputs
        .iter()
        .map(|out| {
            Command::new(&exe)
                .env(ROLE_VAR, "worker")
                .env("LEDGER_BENCH_DIR", dir.join("ledger"))
                .env("LEDGER_BENCH_ITERATIONS", iterations.to_string())
                .env("LEDGER_BENCH_START", start.to_string())
                .env("LEDGER_BENCH_OUT", out)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker did not finish within 300 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    outputs
        .iter()
        .flat_map(|out| {
            let bytes = std::fs::read(out).expect("read samples");
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The median of `runs` timings of `step`, each after its own untimed `prepare`.
fn median_of<T>(runs: usize, mut prepare: impl FnMut() -> T, mut step: impl FnMut(T)) -> Duration {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let input = prepare();
            let started = Instant::now();
            step(input);
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Gives back the storage of every page of `file` but the first 64 KiB (its size stays): a
/// ledger as an older build left it, sparse.
fn punch_holes(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let size = layout::FILE_SIZE as libc::off_t;
    // SAFETY: an open descriptor; the kernel checks the range.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            65536,
            size - 65536,
        )
    };
    assert_eq!(rc, 0, "punch holes: {}", std::io::Error::last_os_error());
}

/// A fresh directory in `base` (created if missing), removed on drop, made as `mkdir` makes one
/// (open to other users as far as the umask allows).
fn bench_dir(prefix: &str, base: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(base).expect("bench directory");
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir_in(base)
        .expect("bench directory")
}

/// `--backing [DIR]`: the cost of backing the ledger file at creation and at join.
fn backing_costs(base: &Path) {
    const RUNS: usize = 20;
    let size = layout::FILE_SIZE as u64;
    let tmp = bench_dir("vramguard-backing-bench-", base);
    let dir = tmp.path();
    let fresh_dir = {
        let mut n = 0;
        let dir = dir.to_path_buf();
        move || {
            n += 1;
            let fresh = dir.join(format!("fresh-{n}"));
            std::fs::create_dir_all(&fresh).expect("fresh directory");
            fresh
        }
    };
    println!(
        "vramguard ledger: backing the {size}-byte file, in {} (median of {RUNS} runs)",
        base.display()
    );
    let mut fresh = fresh_dir;
    let create = median_of(RUNS, &mut fresh, |d| {
        drop(Ledger::open(&d).expect("create"))
    });
    let reserve = median_of(
        RUNS,
        || {
            let path = fresh().join("file");
            std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .expect("new file")
        },
        |file| backing::reserve_new(&file, size).expect("reserve"),
    );
    let ledger_dir = dir.join("ledger");
    let path = Ledger::open(&ledger_dir)
        .expect("the ledger")
        .path()
        .to_owned();
    let open = || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the ledger")
    };
    let join = median_of(
        RUNS,
        || (),
        |()| drop(Ledger::open(&ledger_dir).expect("join")),
    );
    let check = median_of(RUNS, open, |file| {
        backing::ensure_whole(&file, size, true).expect("whole")
    });
    let refallocate = median_of(RUNS, open, |file| {
        use std::os::fd::AsRawFd;
        // SAFETY: an open descriptor; the kernel checks the range.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    });
    let sparse = median_of(
        RUNS,
        || {
            let file = open();
            punch_holes(&file);
            file
        },
        |file| backing::ensure_whole(&file, size, true).expect("made whole"),
    );
    drop(tmp);
    let us = |d: Duration| format!("{:.1} us", d.as_secs_f64() * 1e6);
    println!("{:<58} {:>12}", "step", "median");
    println!(
        "{:<58} {:>12}",
        "creation: Ledger::open of a new ledger (all of it)",
        us(create)
    );
    println!(
        "{:<58} {:>12}",
        "  of which reserving the file (backing::reserve_new)",
        us(reserve)
    );
    println!(
        "{:<58} {:>12}",
        "join: Ledger::open of an existing, whole ledger",
        us(join)
    );
    println!(
        "{:<58} {:>12}",
        "  of which making sure it is whole (backing::ensure_whole)",
        us(check)
    );
    println!(
        "{:<58} {:>12}",
        "join of a sparse ledger: ensure_whole backs what is missing",
        us(sparse)
    );
    println!(
        "{:<58} {:>12}",
        "(fallocate(2) over the whole ledger, every page there)",
        us(refallocate)
    );
    println!(
        "(rerun: cargo bench --bench ledger -- --backing {})",
        base.display()
    );
}

/// The wake-up figures' card: the holder takes 900 MiB of it, the waiter asks 200.
const WAKE_BUDGET: u64 = 1000 * MIB;

/// `CLOCK_MONOTONIC` in nanoseconds: the one clock the parent and its children share.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The wake-up device of the ledger in `dir`, and a member joined as `name`.
fn wake_member(
    dir: &Path,
    name: &str,
) -> (
    Ledger,
    vramguard_core::ledger::DeviceId,
    vramguard_core::ledger::SlotId,
) {
    let ledger = Ledger::open(dir).expect("open ledger");
    let dev = ledger
        .register_device(UUID, "Bench GPU", WAKE_BUDGET, WAKE_BUDGET)
        .expect("register");
    let me = ledger.join(name).expect("join");
    (ledger, dev, me)
}

/// Role `waiter`: asks for 200 MiB (waiting up to a minute), prints `waiting` when it queues
/// and `admitted <monotonic ns>` when it gets them, then leaves.
fn wake_waiter() {
    let (ledger, dev, me) = wake_member(&PathBuf::from(env("LEDGER_BENCH_DIR")), "wake waiter");
    let on_wait = |_: &vramguard_core::ledger::WaitReport| println!("waiting");
    let request = Request {
        wait_until: Some(Instant::now() + Duration::from_secs(60)),
        on_wait: Some(&on_wait),
        ..Request::default()
    };
    match ledger.reserve(me, dev, 200 * MIB, &request) {
        Ok(r) => {
            println!("admitted {}", monotonic_ns());
            ledger.rollback(r);
        }
        Err(refusal) => println!("refused {refusal}"),
    }
    ledger.leave(me);
}

/// Role `holder`: holds 900 MiB, prints `holding`, and waits a minute to be killed.
fn wake_holder() {
    let (ledger, dev, me) = wake_member(&PathBuf::from(env("LEDGER_BENCH_DIR")), "wake holder");
    let r = ledger
        .reserve(me, dev, 900 * MIB, &Request::default())
        .expect("the holder's bytes fit");
    ledger.commit(r);
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
}

/// Starts this binary in `role` on the ledger in `dir`; returns it and its stdout's lines.
fn start_role(role: &str, dir: &Path) -> (Child, std::io::Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .env(ROLE_VAR, role)
        .env("LEDGER_BENCH_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a bench child");
    let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    (child, lines)
}

/// The next line a child printed (it must print one).
fn next_line(lines: &mut std::io::Lines<BufReader<ChildStdout>>, what: &str) -> String {
    lines
        .next()
        .unwrap_or_else(|| panic!("{what}: the child ended without a word"))
        .expect("read a child's line")
}

/// One round: room made by `make_room` (given the holder, when it is a child of its own)
/// `settle` after the waiter queued (it is asleep by then, most likely: a benchmark may sleep,
/// nothing is asserted); returns the time from just before `make_room` to the waiter's admission.
fn wake_round(
    dir: &Path,
    holder_child: bool,
    settle: Duration,
    make_room: impl FnOnce(Option<&mut Child>),
) -> Duration {
    let mut holder = holder_child.then(|| {
        let (child, mut lines) = start_role("holder", dir);
        assert_eq!(next_line(&mut lines, "holder"), "holding");
        child
    });
    let (mut waiter, mut lines) = start_role("waiter", dir);
    assert_eq!(next_line(&mut lines, "waiter"), "waiting");
    std::thread::sleep(settle);
    let made_at = monotonic_ns();
    make_room(holder.as_mut());
    let line = next_line(&mut lines, "waiter");
    let admitted_at: u64 = line
        .strip_prefix("admitted ")
        .unwrap_or_else(|| panic!("the waiter was not admitted: {line}"))
        .parse()
        .expect("a time");
    assert!(waiter.wait().expect("reap the waiter").success());
    if let Some(mut holder) = holder {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    Duration::from_nanos(admitted_at.saturating_sub(made_at))
}

/// A new, empty directory `vramguard-<what>-bench-...` in `/dev/shm` (else the temporary
/// directory), where ledgers live.
fn fresh_bench_dir(what: &str) -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    bench_dir(&format!("vramguard-{what}-bench-"), &base)
}

/// The CPU cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `--wake [ROUNDS]`: the two wake-up latencies of a waiter in another process.
fn wake_latencies(rounds: usize) {
    let tmp = fresh_bench_dir("wake");
    let dir = tmp.path();
    let ledger_dir = dir.join("ledger");
    let (ledger, dev, me) = wake_member(&ledger_dir, "wake bench");
    let mut released: Vec<Duration> = (0..rounds)
        .map(|_| {
            let r = ledger
                .reserve(me, dev, 900 * MIB, &Request::default())
                .expect("the holder's bytes fit");
            ledger.commit(r);
            let settle = Duration::from_millis(20);
            wake_round(&ledger_dir, false, settle, |_| {
                ledger.release(me, dev, 900 * MIB)
            })
        })
        .collect();
    // Nobody wakes a waiter when a holder dies: it finds the death at the end of one of its
    // sleeps. The kill comes at moments spread over 100 ms, so that the figures show where in
    // its sleep a death may find it, not one moment of it.
    let mut killed: Vec<Duration> = (0..rounds)
        .map(|round| {
            let settle = Duration::from_millis(20 + (round as u64 * 37) % 100);
            wake_round(&ledger_dir, true, settle, |holder| {
                holder
                    .expect("a holder child")
                    .kill()
                    .expect("kill the holder")
            })
        })
        .collect();
    ledger.leave(me);
    println!(
        "vramguard ledger: a waiter in another process, asleep in the queue, admitted once room is made ({rounds} rounds each, {} CPU cores)",
        cores()
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "room made by", "median", "p90", "worst"
    );
    let show = |label: &str, samples: &mut Vec<Duration>| {
        samples.sort_unstable();
        let at =
            |fraction: f64| samples[((samples.len() as f64 - 1.0) * fraction).round() as usize];
        let time = |d: Duration| match d.as_secs_f64() * 1e6 {
            us if us < 10_000.0 => format!("{us:.0} us"),
            us => format!("{:.1} ms", us / 1000.0),
        };
        println!(
            "{label:<52} {:>10} {:>10} {:>10}",
            time(at(0.5)),
            time(at(0.9)),
            time(at(1.0))
        );
    };
    show("a release by the holder", &mut released);
    show(
        "the holder's death (SIGKILL; its bytes reclaimed)",
        &mut killed,
    );
    println!(
        "(from just before the release or the kill to the waiter's reservation returning, both on CLOCK_MONOTONIC; rerun: cargo bench --bench ledger -- --wake {rounds})"
    );
}

fn main() {
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("worker") => return worker(),
        Ok("waiter") => return wake_waiter(),
        Ok("holder") => return wake_holder(),
        _ => {}
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--wake") {
        let rounds = args
            .get(at + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(20usize)
            .max(1);
        wake_latencies(rounds);
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--backing") {
        let base = args
            .get(at + 1)
            .filter(|a| !a.starts_with("--"))
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        backing_costs(&base);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations = if quick { 20_000 } else { 200_000 };
    let tmp = fresh_bench_dir("ledger");
    let dir = tmp.path();
    println!(
        "vramguard ledger: reserve + commit + release of 1 MiB on one device ({} CPU cores)",
        cores()
    );
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>10}",
        "processes", "median ns", "p99 ns", "p99.9 ns", "samples"
    );
    for processes in [1usize, 2, 4, 8, 16] {
        let per_process = (iterations / processes).max(1000);
        let mut samples = if processes == 1 {
            hammer(&dir.join("ledger"), per_process, 0)
        } else {
            run_processes(dir, processes, per_process)
        };
        samples.sort_unstable();
        let label = if processes == 1 {
            "1 (uncontended, in-process)".to_string()
        } else {
            processes.to_string()
        };
        println!(
            "{label:<28} {:>10} {:>10} {:>12} {:>10}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            percentile(&samples, 0.999),
            samples.len()
        );
    }
    drop(tmp);
    println!(
        "(each sample includes one Instant::now() pair, ~20-40 ns; rerun: cargo bench --bench ledger)"
    );
}
