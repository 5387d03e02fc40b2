//! A ledger the guard cannot use never kills its host program, and the program learns why, once:
//! a ledger file system too small for the ledger, one that filled up after the ledger was made
//! (a second program joins while the first holds memory), a sparse ledger (as an older build
//! made it) on a full file system, and a process out of file descriptors; each under both
//! `VRAMGUARD_ON_ERROR` modes; and `vramguard status` and `doctor` on such directories. The file
//! systems are tmpfs mounts in private mount namespaces (`support/private_mount.rs`).

#[path = "support/guard.rs"]
mod guard_support;
#[path = "support/private_mount.rs"]
mod private_mount;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use guard_support::{
    MIB, assert_card_safe, check_unusable_ledger_with, guard_lines, limited_client, run, snapshot,
};
use private_mount::PrivateMount;
use support::{ClientPath, Finished, Sandbox};

/// Every client path (the Python one included).
const ALL_PATHS: [ClientPath; 3] = [ClientPath::Direct, ClientPath::Procaddr, ClientPath::Python];

/// A sandbox with a 4 GiB card, a tmpfs of `size` in a private mount, and the ledger directory
/// to use inside it.
fn sandbox_with_tmpfs(size: &str) -> (Sandbox, PrivateMount, PathBuf) {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let mount = PrivateMount::tmpfs(&sandbox.root().join("shm"), size);
    let dir = mount.dir.join("vramguard");
    (sandbox, mount, dir)
}

/// `command` with `dir` as its ledger directory, run inside `mount`.
fn inside(mount: &PrivateMount, dir: &Path, mut command: Command) -> Command {
    command.env("VRAMGUARD_DIR", dir);
    mount.command(&command)
}

/// `vramguard <args>` with the ledger directory `dir`, run inside `mount`; it must exit by itself.
fn cli(sandbox: &Sandbox, mount: &PrivateMount, dir: &Path, args: &[&str]) -> Finished {
    let mut command = sandbox.program(support::artifacts().cli);
    command.args(args);
    let finished = run(inside(mount, dir, command));
    assert!(
        finished.status.code().is_some(),
        "vramguard {args:?} was killed: {finished:?}"
    );
    finished
}

/// Asserts every message of the guard says `fix` and none says `never`.
fn assert_messages(messages: &[String], fix: &str, never: &str) {
    assert!(!messages.is_empty());
    for message in messages {
        assert!(message.contains(fix), "no {fix:?} in: {message}");
        assert!(!message.contains(never), "{never:?} in: {message}");
    }
}

/// Asserts every message says the file system has no room and how to make some, and never
/// that the ledger is damaged.
fn assert_no_room(messages: &[String]) {
    assert_messages(
        messages,
        "no room for it on its file system",
        "remove the file",
    );
    assert_messages(messages, "--shm-size=", "damaged");
}

#[test]
fn a_ledger_file_system_too_small_for_the_ledger_follows_on_error() {
    let (sandbox, mount, dir) = sandbox_with_tmpfs("1m");
    let messages = check_unusable_ledger_with(&sandbox, "a 1 MiB file system", &ALL_PATHS, |c| {
        inside(&mount, &dir, c)
    });
    assert_no_room(&messages);

    // No ledger can be made there: `status` says so instead of "no guarded process has run yet".
    let status = cli(&sandbox, &mount, &dir, &["status"]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(status.stderr.contains("no ledger fits in"), "{status:?}");
    let doctor = cli(&sandbox, &mount, &dir, &["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{doctor:?}");
    let space = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  ledger:") && l.contains("free on the file system"))
        .unwrap_or_else(|| panic!("no free-space failure: {doctor:?}"));
    assert!(space.contains("the ledger needs 3.14 MiB"), "{space}");
    assert!(doctor.stdout.contains("--shm-size="), "{doctor:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn a_program_joining_after_the_file_system_filled_up_is_guarded() {
    let (sandbox, mount, dir) = sandbox_with_tmpfs("8m");
    let holder = || {
        let mut command = sandbox.command(ClientPath::Direct, true);
        command.args([
            "--chunk",
            "200MiB",
            "--count",
            "1",
            "--hold-until",
            sandbox.until_killed(),
        ]);
        let mut holder = support::spawn(inside(&mount, &dir, command));
        holder.wait_for_line("holding", guard_support::CLIENT_DEADLINE);
        holder
    };
    let first = holder();
    mount.fill();
    // Members that join now take new slots on a full file system: the ledger's storage was all
    // reserved when it was made, and joining asks for none.
    let second = holder();
    for path in ALL_PATHS {
        let third = run(inside(&mount, &dir, limited_client(&sandbox, path)));
        assert_eq!(third.status.code(), Some(2), "{path:?}: {third:?}");
        let summary = third.summary();
        assert_eq!((summary.ok, summary.failed), (2, 1), "{path:?}: {third:?}");
        let lines = guard_lines(&third.stderr);
        assert!(
            lines.len() == 1 && lines[0].contains("refused"),
            "{path:?}: guarded, the limit applied: {lines:?}"
        );
    }
    let status = cli(&sandbox, &mount, &dir, &["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let report: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let mut running: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    running.sort_unstable();
    let mut holders = vec![u64::from(first.pid()), u64::from(second.pid())];
    holders.sort_unstable();
    assert_eq!(running, holders, "{report}");
    let doctor = cli(&sandbox, &mount, &dir, &["doctor"]);
    assert!(
        doctor.stdout.lines().any(|l| l
            .starts_with("warn  ledger: only 0 B free on the file system")
            && l.contains("the ledger has all its storage")),
        "{doctor:?}"
    );
    assert!(
        doctor
            .stdout
            .contains("is valid (1 card(s), 2 guarded process(es))"),
        "{doctor:?}"
    );
    for holder in [first, second] {
        let holder = holder.kill();
        assert!(guard_lines(&holder.stderr).is_empty(), "{holder:?}");
    }
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
    assert!(
        report["devices"][0]["peak_bytes"].as_u64().unwrap() >= 1000 * MIB,
        "{report}"
    );
}

#[test]
fn a_sparse_ledger_on_a_full_file_system_follows_on_error() {
    let (sandbox, mount, dir) = sandbox_with_tmpfs("8m");
    let made = run(inside(
        &mount,
        &dir,
        limited_client(&sandbox, ClientPath::Direct),
    ));
    assert_eq!(made.summary().ok, 2, "{made:?}");
    // The ledger as an older build left it: sparse past the pages used so far.
    mount.shell(
        r#"fallocate --punch-hole --offset 65536 --length 4000000 "$1/vramguard/ledger.v1""#,
    );
    mount.fill();
    let messages = check_unusable_ledger_with(&sandbox, "a sparse ledger, full", &ALL_PATHS, |c| {
        inside(&mount, &dir, c)
    });
    assert_no_room(&messages);

    let status = cli(&sandbox, &mount, &dir, &["status"]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(
        status.stderr.contains("no room for it on its file system"),
        "{status:?}"
    );
    let doctor = cli(&sandbox, &mount, &dir, &["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{doctor:?}");
    let failures: Vec<&str> = doctor
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL  ledger:"))
        .collect();
    assert_eq!(failures.len(), 2, "{doctor:?}");
    assert!(failures[0].contains("no room for it"), "{failures:?}");
    assert!(
        failures[1].contains("0 B free on the file system"),
        "{failures:?}"
    );

    // With room again, the next program gives the ledger its storage and is guarded.
    mount.unfill();
    let again = run(inside(
        &mount,
        &dir,
        limited_client(&sandbox, ClientPath::Direct),
    ));
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert_eq!(again.summary().ok, 2, "{again:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn out_of_descriptors_is_said_once_with_its_remedy() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    // The clients use every descriptor left right after cuInit: the guard attached, and then
    // cannot open the ledger again to register the card.
    let messages = check_unusable_ledger_with(
        &sandbox,
        "no descriptor left",
        &[ClientPath::Direct, ClientPath::Procaddr],
        |mut command| {
            command.arg("--exhaust-fds");
            command
        },
    );
    assert_messages(&messages, "ulimit -n", "remove the file");
    assert_messages(&messages, "the ledger is fine", "damaged");
    // The ledger was never the problem: it is there and valid for the next program.
    let snapshot = snapshot(&sandbox);
    assert!(snapshot.processes.iter().all(|p| !p.alive), "{snapshot:?}");
    let next = run(limited_client(&sandbox, ClientPath::Direct));
    assert_eq!(next.status.code(), Some(2), "{next:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}
