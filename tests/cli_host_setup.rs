//! `vramguard host-setup`: the hardened ledger directory made by root for one group, idempotent
//! and saying what it did; refused to anyone but root; `vramguard status` of a user outside the
//! group says so plainly; the `tmpfiles.d` entry it prints is the one shipped in
//! `deploy/tmpfiles.d/`, `--install` writes it, and systemd's own `systemd-tmpfiles` makes the
//! same directory from it. Other users are played with `setpriv` (root only; skipped otherwise).

#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/other_users.rs"]
mod other_users;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_support::*;
use other_users::is_root;

/// The group of these tests' directories (a number no name needs to exist for), a member and an
/// outsider.
const GROUP: u32 = 47_321;
const MEMBER: u32 = 47_322;
const OUTSIDER: u32 = 47_323;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vramguard args` (as root), with no VRAMGUARD_* of the caller's.
fn vramguard_as_root(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(vramguard());
    command.args(args);
    clean(&mut command, vars);
    run_with_deadline(&mut command, HANG_GUARD)
}

fn clean(command: &mut Command, vars: &[(&str, &str)]) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VRAMGUARD_") {
            command.env_remove(&key);
        }
    }
    command.envs(vars.iter().copied());
}

/// `program args` as user `uid` with the supplementary `groups` only.
fn vramguard_as(
    program: &Path,
    uid: u32,
    groups: &[u32],
    args: &[&str],
    vars: &[(&str, &str)],
) -> Output {
    let mut command = other_users::as_user(program, uid, groups);
    command.args(args);
    clean(&mut command, vars);
    run_with_deadline(&mut command, HANG_GUARD)
}

/// Whether other users can be played here; records the skip if not.
fn can_play_other_users(test: &str) -> bool {
    other_users::can_play_other_users(
        test,
        "needs root (host-setup is root's, and other users are played with setpriv)",
        skip,
    )
}

/// A copy of the command line that other users can run.
fn cli_for_others(dir: &TempDir) -> PathBuf {
    let copy = dir.join("vramguard-cli");
    fs::copy(vramguard(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    copy
}

fn owner_group_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn host_setup_is_idempotent_says_what_it_did_and_is_root_only() {
    if !can_play_other_users("host_setup_is_idempotent_says_what_it_did_and_is_root_only") {
        return;
    }
    let tmp = TempDir::new("host-setup");
    let cli = cli_for_others(&tmp);
    let dir = tmp.join("vramguard");
    let dir_arg = dir.display().to_string();
    let group = GROUP.to_string();
    // Not root: refused, nothing made.
    let out = vramguard_as(&cli, OUTSIDER, &[], &["host-setup", "--dir", &dir_arg], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("only root"), "{out:?}");
    assert!(!dir.exists());
    // Root: made, and said so.
    let out = vramguard_as_root(&["host-setup", "--dir", &dir_arg, "--group", &group], &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("created {dir_arg}")), "{stdout}");
    assert!(stdout.contains("mode 3770"), "{stdout}");
    assert_eq!(owner_group_mode(&dir), (0, GROUP, 0o3770));
    // Again: nothing changed, and said so.
    let out = vramguard_as_root(&["host-setup", "--dir", &dir_arg, "--group", &group], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("already set up; nothing changed"),
        "{out:?}"
    );
    assert_eq!(owner_group_mode(&dir), (0, GROUP, 0o3770));
    // A damaged mode and another group (VRAMGUARD_GROUP, VRAMGUARD_DIR) are put right.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let other = (GROUP + 10).to_string();
    let out = vramguard_as_root(
        &["host-setup"],
        &[("VRAMGUARD_GROUP", &other), ("VRAMGUARD_DIR", &dir_arg)],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("was root, 47321, 0777"),
        "{out:?}"
    );
    assert_eq!(owner_group_mode(&dir), (0, GROUP + 10, 0o3770));
    // A group that does not exist by name: refused with the fix.
    let out = vramguard_as_root(
        &[
            "host-setup",
            "--dir",
            &dir_arg,
            "--group",
            "no-such-group-here",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("groupadd"), "{out:?}");
}

#[test]
fn status_run_by_an_outsider_says_so_plainly() {
    if !can_play_other_users("status_run_by_an_outsider_says_so_plainly") {
        return;
    }
    let tmp = TempDir::new("outsider-status");
    let cli = cli_for_others(&tmp);
    let dir = tmp.join("vramguard");
    let dir_arg = dir.display().to_string();
    let out = vramguard_as_root(
        &[
            "host-setup",
            "--dir",
            &dir_arg,
            "--group",
            &GROUP.to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let vars = [("VRAMGUARD_DIR", dir_arg.as_str())];
    let out = vramguard_as(&cli, OUTSIDER, &[], &["status"], &vars);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("is for the members of group {GROUP} only"))
            && stderr.contains("you (47323) are not in it")
            && stderr.contains("usermod -aG"),
        "{stderr}"
    );
    assert!(!stderr.contains("failed"), "{stderr}");
    let out = vramguard_as(&cli, MEMBER, &[GROUP], &["status"], &vars);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("no guarded process has run yet"),
        "{out:?}"
    );
}

#[test]
fn the_tmpfiles_entry_is_shipped_installed_and_made_by_systemd_tmpfiles() {
    let shipped = fs::read_to_string(repo().join("deploy/tmpfiles.d/vramguard.conf")).unwrap();
    let out = vramguard_as_root(&["host-setup", "--tmpfiles"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        shipped,
        "deploy/tmpfiles.d/vramguard.conf is out of date"
    );
    assert!(shipped.contains("\nd /dev/shm/vramguard 3770 root video -\n"));
    let root = TempDir::new("tmpfiles");
    let root_arg = root.path().display().to_string();
    let out = vramguard_as_root(
        &["host-setup", "--tmpfiles", "--install", "--root", &root_arg],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let installed = root.join("etc/tmpfiles.d/vramguard.conf");
    assert_eq!(fs::read_to_string(&installed).unwrap(), shipped);
    let found = Command::new("systemd-tmpfiles")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found || !is_root() {
        skip(
            "the_tmpfiles_entry_is_shipped_installed_and_made_by_systemd_tmpfiles",
            if found {
                "needs root to let systemd-tmpfiles give the directory to root and a group"
            } else {
                "systemd-tmpfiles is not installed (scripts/setup.sh installs systemd)"
            },
        );
        return;
    }
    // The root's own user database, with the group the entry names.
    let video = 4711;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(
        root.join("etc/group"),
        format!("root:x:0:\nvideo:x:{video}:\n"),
    )
    .unwrap();
    fs::create_dir_all(root.join("dev/shm")).unwrap();
    fs::set_permissions(root.join("dev/shm"), fs::Permissions::from_mode(0o1777)).unwrap();
    for _ in 0..2 {
        let out = run_with_deadline(
            Command::new("systemd-tmpfiles")
                .arg("--create")
                .arg(format!("--root={root_arg}"))
                .arg(&installed),
            HANG_GUARD,
        );
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        assert_eq!(
            owner_group_mode(&root.join("dev/shm/vramguard")),
            (0, video, 0o3770)
        );
    }
}
