//! A guarded program of a user outside the group of the hardened ledger directory (`vramguard
//! host-setup`): it is never stopped, it says once that the directory is for that group and it
//! is not in it, and it follows `VRAMGUARD_ON_ERROR` (`open`: calls pass through, `closed`:
//! allocations refused); a member of the group in the same directory is guarded. The users are
//! played with `setpriv` (root only; skipped otherwise, with the reason).

#[path = "support/guard.rs"]
mod guard_support;
#[path = "support/other_users.rs"]
mod other_users;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use guard_support::{check_unusable_ledger_with, guard_lines, limited_client, run};
use support::{ClientPath, Sandbox};
use vramguard_core::ledger::host_setup;

/// The hardened directory's group, a member and an outsider (numbers no name needs to exist for).
const GROUP: u32 = 47_331;
const MEMBER: u32 = 47_332;
const OUTSIDER: u32 = 47_333;

/// `command` run by user `uid` with the supplementary `groups` only, on the ledger `dir`.
fn as_user(command: Command, uid: u32, groups: &[u32], dir: &Path) -> Command {
    let mut wrapped = other_users::as_user(command.get_program(), uid, groups);
    wrapped.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped.env("VRAMGUARD_DIR", dir);
    wrapped
}

/// Lets other users reach the sandbox's simulated card (its state must be writable by them).
fn open_to_others(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = if meta.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            open_to_others(&entry.unwrap().path());
        }
    }
}

#[test]
fn a_guarded_program_outside_the_group_says_so_once_and_follows_on_error() {
    const TEST: &str = "a_guarded_program_outside_the_group_says_so_once_and_follows_on_error";
    if !other_users::can_play_other_users(
        TEST,
        "needs root to run the programs as other users",
        support::skip,
    ) {
        return;
    }
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    std::fs::set_permissions(sandbox.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    open_to_others(&sandbox.root().join("card"));
    let shm = tempfile::Builder::new()
        .prefix("vramguard-outsider-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let dir = shm.path().join("vramguard");
    host_setup::set_up(&dir, GROUP).unwrap();
    let paths = [ClientPath::Direct, ClientPath::Procaddr];
    let messages = check_unusable_ledger_with(&sandbox, "an outsider", &paths, |command| {
        as_user(command, OUTSIDER, &[], &dir)
    });
    for message in &messages {
        assert!(
            message.contains(&format!("is for the members of group {GROUP} only"))
                && message.contains("are not in it"),
            "{message}"
        );
    }
    // A member of the group in the same directory is guarded: the limit applies.
    for path in paths {
        let finished = run(as_user(
            limited_client(&sandbox, path),
            MEMBER,
            &[GROUP],
            &dir,
        ));
        let summary = finished.summary();
        assert_eq!(summary.ok, 2, "{path:?}: {finished:?}");
        assert!(
            guard_lines(&finished.stderr)
                .iter()
                .all(|line| !line.contains("cannot use the ledger")),
            "{finished:?}"
        );
    }
}
