//! Liveness: a member is alive exactly while the kernel holds its slot lock. PID reuse cannot
//! fool it (a dead member whose pid now belongs to a live process is reclaimed; a live member
//! whose recorded pid means nothing here is never touched), it works across PID namespaces, and a
//! forked child joins as a member of its own.

mod ledger_support;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Instant;

use ledger_support::{
    HANG_GUARD, TempDir, child_dir, device, fresh_member, hold, holder, holder_slot, holder_vars,
    report, role, spawn, spawn_holder,
};
use vramguard_core::ledger::{Ledger, Refusal, Request, layout};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 1000 * MIB;

fn overwrite_pid(ledger: &Ledger, slot: usize, pid: u32) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ledger.path())
        .unwrap();
    let at = layout::SLOTS_OFFSET + slot * layout::SLOT_RECORD_SIZE + 4;
    file.write_at(&pid.to_le_bytes(), at as u64).unwrap();
}

#[test]
fn pid_reuse_cannot_fool_liveness() {
    if role().is_some() {
        return holder();
    }
    let (tmp, dir, ledger, dev, me) = fresh_member("pidreuse", BUDGET, "observer");
    let stop_dead = tmp.path().join("stop-dead");
    let stop_live = tmp.path().join("stop-live");
    let test = "pid_reuse_cannot_fool_liveness";
    let (mut dead, dead_slot) =
        spawn_holder(test, &dir, &stop_dead, BUDGET, 300 * MIB, "dead holder");
    let (mut live, live_slot) =
        spawn_holder(test, &dir, &stop_live, BUDGET, 600 * MIB, "live holder");
    std::fs::write(&stop_dead, b"").unwrap();
    ledger_support::wait_until(&mut dead, Instant::now() + HANG_GUARD, "dead holder");
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
    ledger_support::wait_until(&mut live, Instant::now() + HANG_GUARD, "live holder");
    assert_eq!(ledger.reclaim_dead(), 600 * MIB);
    ledger.leave(me);
}

/// Whether this kernel lets us make a pid namespace, or why not.
fn pid_namespaces_available() -> Result<(), String> {
    let output = Command::new("unshare")
        .args(ledger_support::pid_namespace::unshare_pid_args())
        .args(["--mount-proc", "true"])
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
        return ledger_support::skip("liveness_works_across_pid_namespaces", &reason);
    }
    let (tmp, dir, ledger, dev, me) = fresh_member("pidns", BUDGET, "host side");
    let stop = tmp.path().join("stop");
    let inner = ledger_support::child_command(
        "liveness_works_across_pid_namespaces",
        "holder",
        &dir,
        &holder_vars(&stop, BUDGET, 700 * MIB),
    );
    let mut command = Command::new("unshare");
    command
        .args(ledger_support::pid_namespace::unshare_pid_args())
        .args(["--mount-proc", "--"])
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
    let (slot, inner_pid) = holder_slot(&reports.next(HANG_GUARD, "namespaced holder"));
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
    ledger_support::wait_until(&mut child, Instant::now() + HANG_GUARD, "namespaced holder");
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
    hold(&ledger, parent, dev, 100 * MIB);
    // SAFETY: the child only uses the ledger (system calls and small allocations in this
    // single-purpose process) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outcome = std::panic::catch_unwind(|| {
            let child = ledger.join("fork child").unwrap();
            assert_ne!(child, parent);
            hold(&ledger, child, dev, 50 * MIB);
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
    let lines = ledger_support::finish(child, Instant::now() + HANG_GUARD, "forker");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("child joined slot 1 alive 2"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "reclaimed 50 parent 100");
    let ledger = tmp.open_ledger();
    assert_eq!(ledger.snapshot().devices[0].used, 0);
}
