//! Liveness: a member is alive exactly while the kernel holds its slot lock. PID reuse cannot
//! fool it (a dead member whose pid now belongs to a live process is reclaimed; a live member
//! whose recorded pid means nothing here is never touched), it works across PID namespaces, and a
//! forked child joins as a member of its own.

mod ledger_support;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ledger_support::{TempDir, child_dir, child_var, device, report, role, spawn};
use vramguard_core::ledger::{Ledger, Refusal, Request, layout};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1000 * MIB;

/// Joins, holds `HOLD_BYTES`, reports `slot <index> pid <pid>`, then waits for `STOP_FILE` and
/// exits without leaving (like a crash: only the kernel drops its lock).
fn holder() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("holder").unwrap();
    let r = ledger
        .reserve(
            me,
            dev,
            child_var("HOLD_BYTES").parse().unwrap(),
            &Request::default(),
        )
        .unwrap();
    ledger.commit(r);
    report(format!("slot {} pid {}", me.index(), std::process::id()));
    let stop = std::path::PathBuf::from(child_var("STOP_FILE"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::exit(0);
}

fn overwrite_pid(ledger: &Ledger, slot: usize, pid: u32) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ledger.path())
        .unwrap();
    let at = layout::SLOTS_OFFSET + slot * layout::SLOT_RECORD_SIZE + 4;
    file.write_at(&pid.to_le_bytes(), at as u64).unwrap();
}

fn parse_slot(line: &str) -> (usize, i32) {
    let words: Vec<&str> = line.split(' ').collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

#[test]
fn pid_reuse_cannot_fool_liveness() {
    if role().is_some() {
        return holder();
    }
    let tmp = TempDir::new("pidreuse");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("observer").unwrap();
    let stop_dead = tmp.path().join("stop-dead");
    let stop_live = tmp.path().join("stop-live");
    let vars = |stop: &std::path::Path, bytes: u64| {
        vec![
            ("STOP_FILE", stop.display().to_string()),
            ("HOLD_BYTES", bytes.to_string()),
        ]
    };
    let test = "pid_reuse_cannot_fool_liveness";
    let mut dead = spawn(test, "holder", &dir, &vars(&stop_dead, 300 * MIB));
    let dead_reports = ledger_support::Reports::new(&mut dead);
    let (dead_slot, _) = parse_slot(&dead_reports.next(Duration::from_secs(20), "dead holder"));
    let mut live = spawn(test, "holder", &dir, &vars(&stop_live, 600 * MIB));
    let live_reports = ledger_support::Reports::new(&mut live);
    let (live_slot, _) = parse_slot(&live_reports.next(Duration::from_secs(20), "live holder"));
    std::fs::write(&stop_dead, b"").unwrap();
    ledger_support::wait_until(
        &mut dead,
        Instant::now() + Duration::from_secs(10),
        "dead holder",
    );
    // The dead member's pid now "belongs" to a live process (ours); the live member's pid is one
    // that exists nowhere (as if it lived in another pid namespace).
    overwrite_pid(&ledger, dead_slot, std::process::id());
    overwrite_pid(&ledger, live_slot, 0x3fff_fff0);
    let snapshot = ledger.snapshot();
    let alive = |slot: usize| {
        snapshot
            .processes
            .iter()
            .find(|p| p.slot as usize == slot)
            .unwrap()
            .alive
    };
    assert!(
        !alive(dead_slot),
        "a dead member with a live pid must count as dead"
    );
    assert!(
        alive(live_slot),
        "a live member with a foreign pid must count as alive"
    );
    // 300 MiB of the dead member come back; the live member's 600 MiB are never taken.
    let r = ledger
        .reserve(me, dev, 400 * MIB, &Request::default())
        .expect("dead member's bytes reclaimed");
    assert!(matches!(
        ledger.reserve(me, dev, 1, &Request::default()),
        Err(Refusal::NoRoom { .. })
    ));
    assert_eq!(ledger.reclaim_dead(), 0);
    assert_eq!(ledger.snapshot().devices[0].used, 1000 * MIB);
    ledger.rollback(r);
    std::fs::write(&stop_live, b"").unwrap();
    ledger_support::wait_until(
        &mut live,
        Instant::now() + Duration::from_secs(10),
        "live holder",
    );
    assert_eq!(ledger.reclaim_dead(), 600 * MIB);
    ledger.leave(me);
}

/// Whether this kernel lets us make a pid namespace, or why not.
fn pid_namespaces_available() -> Result<(), String> {
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .output()
        .map_err(|error| format!("cannot run unshare: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unshare --pid --fork refused: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[test]
fn liveness_works_across_pid_namespaces() {
    if role().is_some() {
        return holder();
    }
    if let Err(reason) = pid_namespaces_available() {
        println!("SKIPPED liveness_works_across_pid_namespaces: {reason}");
        return;
    }
    let tmp = TempDir::new("pidns");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = device(&ledger, BUDGET);
    let me = ledger.join("host side").unwrap();
    let stop = tmp.path().join("stop");
    let inner = ledger_support::child_command(
        "liveness_works_across_pid_namespaces",
        "holder",
        &dir,
        &[
            ("STOP_FILE", stop.display().to_string()),
            ("HOLD_BYTES", (700 * MIB).to_string()),
        ],
    );
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    command.stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let reports = ledger_support::Reports::new(&mut child);
    let (slot, inner_pid) = parse_slot(&reports.next(Duration::from_secs(20), "namespaced holder"));
    println!("holder in a new pid namespace sees itself as pid {inner_pid}");
    assert!(
        inner_pid < 10,
        "the holder did not run in a new pid namespace (pid {inner_pid})"
    );
    let snapshot = ledger.snapshot();
    let member = snapshot
        .processes
        .iter()
        .find(|p| p.slot as usize == slot)
        .unwrap();
    assert!(member.alive);
    assert_eq!(member.pid, inner_pid);
    // Alive in its namespace: its bytes are never taken.
    assert!(matches!(
        ledger.reserve(me, dev, 400 * MIB, &Request::default()),
        Err(Refusal::NoRoom { .. })
    ));
    assert_eq!(ledger.reclaim_dead(), 0);
    // Dead: reclaimed by the next decision.
    std::fs::write(&stop, b"").unwrap();
    ledger_support::wait_until(
        &mut child,
        Instant::now() + Duration::from_secs(10),
        "namespaced holder",
    );
    let r = ledger
        .reserve(me, dev, 1000 * MIB, &Request::default())
        .expect("dead namespaced member reclaimed");
    ledger.rollback(r);
    ledger.leave(me);
}

/// Joins, holds 100 MiB, forks; the child joins as itself, holds 50 MiB, reports, and exits
/// without leaving. The parent then reclaims exactly the child's bytes and keeps its own.
fn forker() {
    let ledger = Ledger::open(&child_dir()).unwrap();
    let dev = device(&ledger, BUDGET);
    let parent = ledger.join("fork parent").unwrap();
    let r = ledger
        .reserve(parent, dev, 100 * MIB, &Request::default())
        .unwrap();
    ledger.commit(r);
    // SAFETY: the child only uses the ledger (system calls and small allocations in this
    // single-purpose process) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outcome = std::panic::catch_unwind(|| {
            let child = ledger.join("fork child").unwrap();
            assert_ne!(child, parent);
            let r = ledger
                .reserve(child, dev, 50 * MIB, &Request::default())
                .unwrap();
            ledger.commit(r);
            let snapshot = ledger.snapshot();
            let alive = snapshot.processes.iter().filter(|p| p.alive).count();
            report(format!("child joined slot {} alive {alive}", child.index()));
        });
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(if outcome.is_ok() { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child failed"
    );
    let reclaimed = ledger.reclaim_dead();
    report(format!(
        "reclaimed {} parent {}",
        reclaimed / MIB,
        ledger.charge(parent, dev) / MIB
    ));
    ledger.leave(parent);
}

#[test]
fn forked_child_joins_as_itself() {
    if role().is_some() {
        return forker();
    }
    let tmp = TempDir::new("fork");
    let child = spawn(
        "forked_child_joins_as_itself",
        "forker",
        &tmp.ledger_dir(),
        &[],
    );
    let lines = ledger_support::finish(child, Instant::now() + Duration::from_secs(30), "forker");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("child joined slot 1 alive 2"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "reclaimed 50 parent 100");
    let ledger = Ledger::open(&tmp.ledger_dir()).unwrap();
    assert_eq!(ledger.snapshot().devices[0].used, 0);
}
