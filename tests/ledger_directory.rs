//! The ledger directory and what other users can do to it: a directory that is a symbolic link,
//! belongs to another user or is writable by others without the sticky bit is refused with the
//! reason and the fix; a relative `VRAMGUARD_DIR` is refused; nothing but the ledger directory
//! itself is ever created; a ledger file planted by another user (a symbolic link, an empty file)
//! is never followed nor trusted and its message names the fix; and the hardened directory of
//! `host-setup` (root's, one group, 3770): an outsider can neither read, write, plant nor remove
//! anything in it, members share it, cannot remove each other's files, and get files 0660 of the
//! group. The other users are played by copies of this test binary run under `setpriv` with
//! other user and group ids (root only; skipped otherwise, with the reason).

mod ledger_support;
#[path = "support/other_users.rs"]
mod other_users;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ledger_support::{HANG_GUARD, TempDir, child_dir, child_var, device, hold, report, role, uuid};
use other_users::is_root;
use vramguard_core::ledger::{
    Cause, DirectoryProblem, Ledger, LedgerError, directory, host_setup, layout,
};

/// The group of the hardened directory in these tests (a number no name needs to exist for).
const GROUP: u32 = 47_311;
/// Two members of [`GROUP`] and an outsider.
const MEMBER: u32 = 47_312;
const SECOND_MEMBER: u32 = 47_313;
const OUTSIDER: u32 = 47_314;

const TEST_PLANTED: &str = "a_ledger_file_planted_by_another_user_is_never_trusted";
const TEST_HARDENED: &str = "the_hardened_directory_keeps_outsiders_out_and_members_in";
const TEST_RELATIVE: &str = "a_relative_directory_is_refused";

/// Whether other users can be played here (root and `setpriv`); records the skip if not.
fn can_play_other_users(test: &str) -> bool {
    other_users::can_play_other_users(
        test,
        "needs root to run children as other users",
        ledger_support::skip,
    )
}

/// A copy of this test binary that other users can run (in `tmp`, world-readable).
fn program_for_others(tmp: &TempDir, test: &str) -> PathBuf {
    let command =
        ledger_support::child_command_for_another_user(tmp.path(), test, "copy", tmp.path(), &[]);
    PathBuf::from(command.get_program())
}

/// This test binary's copy `program`, playing `role` in `test` as user `uid` with the
/// supplementary `groups` only, on the ledger directory `dir`.
fn as_user(
    program: &Path,
    test: &str,
    role: &str,
    dir: &Path,
    uid: u32,
    groups: &[u32],
    vars: &[(&str, String)],
) -> Command {
    ledger_support::as_child(
        other_users::as_user(program, uid, groups),
        test,
        role,
        dir,
        vars,
    )
}

/// Runs `command` to its end (deadline) and returns its reports.
fn reports_of(mut command: Command, what: &str) -> Vec<String> {
    let child = command.spawn().expect("spawn a child as another user");
    ledger_support::finish(child, Instant::now() + HANG_GUARD, what)
}

/// The kind of error `result` has, or `ok`.
fn outcome<T>(result: std::io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(error) => format!("{:?}", error.kind()),
    }
}

/// A directory of `mode` owned by `uid` inside `tmp`.
fn directory_of(tmp: &TempDir, name: &str, uid: u32, mode: u32) -> PathBuf {
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

#[test]
fn a_symlinked_directory_is_refused_and_never_written_through() {
    let tmp = TempDir::new("dir-symlink");
    // Somebody else's directory (root's here) that a link in /dev/shm points at.
    let target = tmp.path().join("some-root-dir");
    std::fs::create_dir(&target).unwrap();
    let link = tmp.path().join("vramguard");
    symlink(&target, &link).unwrap();
    for create in [true, false] {
        let result = if create {
            Ledger::open(&link)
        } else {
            Ledger::open_existing(&link)
        };
        let error = result.err().expect("a symbolic link is refused");
        assert!(
            matches!(
                &error,
                LedgerError::UnsafeDirectory {
                    problem: DirectoryProblem::Symlink { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("symbolic link"), "{message}");
        assert!(message.contains("host-setup"), "{message}");
        assert_eq!(error.cause(), Cause::Setup);
    }
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "something was created through the link"
    );
    // host-setup refuses it too: the link is never followed, whoever runs it.
    let error = host_setup::set_up(&link, GROUP).expect_err("refused");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
}

#[test]
fn a_directory_others_could_change_is_refused_with_the_reason() {
    let tmp = TempDir::new("dir-unsafe");
    // World-writable without the sticky bit, root's: anyone could remove the ledger.
    let open = directory_of(&tmp, "no-sticky", 0, 0o777);
    let error = Ledger::open(&open).err().expect("refused");
    assert!(
        matches!(
            &error,
            LedgerError::UnsafeDirectory {
                problem: DirectoryProblem::WritableWithoutSticky { mode: 0o777, .. },
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("without the sticky bit") && message.contains("chmod +t"),
        "{message}"
    );
    // Group-writable without the sticky bit.
    let group = directory_of(&tmp, "group-no-sticky", 0, 0o770);
    let error = Ledger::open(&group).err().expect("refused");
    assert!(error.to_string().contains("its group"), "{error}");
    assert!(!group.join(layout::FILE_NAME).exists());
    // Another user's (sticky or not): its owner could replace the ledger at any time.
    if is_root() {
        for (name, mode) in [("foreign-sticky", 0o1777), ("foreign-no-sticky", 0o777)] {
            let foreign = directory_of(&tmp, name, 65534, mode);
            let error = Ledger::open(&foreign).err().expect("refused");
            assert!(
                matches!(
                    &error,
                    LedgerError::UnsafeDirectory {
                        problem: DirectoryProblem::ForeignOwner { uid: 65534, .. },
                        ..
                    }
                ),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("neither root nor you") && message.contains("host-setup"),
                "{message}"
            );
            assert!(!foreign.join(layout::FILE_NAME).exists());
        }
    } else {
        ledger_support::skip(
            "a_directory_others_could_change_is_refused_with_the_reason (foreign part)",
            "needs root to give a directory to another user",
        );
    }
    // Root's 1777 (the open mode) and a private 0700 are fine.
    for (name, mode) in [("sticky", 0o1777), ("private", 0o700)] {
        let fine = directory_of(&tmp, name, directory::effective_uid(), mode);
        Ledger::open(&fine).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn relative_child() {
    match Ledger::open(Path::new("relative-ledger")) {
        Err(error @ LedgerError::RelativeDirectory { .. }) => report(format!("refused {error}")),
        other => report(format!("unexpected {:?}", other.err())),
    }
}

#[test]
fn a_relative_directory_is_refused() {
    if role().is_some() {
        return relative_child();
    }
    let tmp = TempDir::new("dir-relative");
    let mut command = ledger_support::child_command(TEST_RELATIVE, "relative", tmp.path(), &[]);
    command.current_dir(tmp.path());
    let lines = ledger_support::finish(
        command.spawn().unwrap(),
        Instant::now() + HANG_GUARD,
        "relative",
    );
    assert!(
        lines[0].starts_with("refused ") && lines[0].contains("absolute path"),
        "{lines:?}"
    );
    assert!(
        !tmp.path().join("relative-ledger").exists(),
        "created relative to the working directory"
    );
}

#[test]
fn parents_are_never_created() {
    let tmp = TempDir::new("dir-parents");
    let dir = tmp.path().join("a").join("b").join("vramguard");
    let error = Ledger::open(&dir).err().expect("refused");
    assert!(matches!(&error, LedgerError::NoParent { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("does not exist") && message.contains("host-setup"),
        "{message}"
    );
    assert!(!tmp.path().join("a").exists(), "a parent was created");
    // The ledger directory itself is created, in a parent that exists.
    let dir = tmp.path().join("vramguard");
    Ledger::open(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
    assert_eq!(mode, if is_root() { 0o1777 } else { 0o700 });
    // Never in a parent others could write without the sticky bit (the new directory could be
    // swapped before it is opened).
    let unsafe_parent = directory_of(&tmp, "unsafe-parent", directory::effective_uid(), 0o777);
    let error = Ledger::open(&unsafe_parent.join("vramguard"))
        .err()
        .expect("refused");
    assert!(
        matches!(
            &error,
            LedgerError::UnsafeDirectory {
                problem: DirectoryProblem::UnsafeParent { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!unsafe_parent.join("vramguard").exists());
}

fn plant_child() {
    let file = child_dir().join(layout::FILE_NAME);
    match child_var("PLANT").as_str() {
        "symlink" => symlink(child_var("TARGET"), &file).unwrap(),
        _ => std::fs::write(&file, b"").unwrap(),
    }
    report("planted");
}

#[test]
fn a_ledger_file_planted_by_another_user_is_never_trusted() {
    if role().is_some() {
        return plant_child();
    }
    if !can_play_other_users(TEST_PLANTED) {
        return;
    }
    let tmp = TempDir::new("planted");
    let program = program_for_others(&tmp, TEST_PLANTED);
    // A root file the link points at: it must never be opened, let alone written.
    let target = tmp.path().join("root-file");
    std::fs::write(&target, b"root's").unwrap();
    for plant in ["symlink", "empty"] {
        // The open mode: root's directory, 1777.
        let dir = directory_of(&tmp, &format!("open-{plant}"), 0, 0o1777);
        let vars = [
            ("PLANT", plant.to_string()),
            ("TARGET", target.display().to_string()),
        ];
        let planting = as_user(&program, TEST_PLANTED, "plant", &dir, 65534, &[], &vars);
        assert_eq!(reports_of(planting, "planting"), ["planted"]);
        if plant == "empty" {
            // Root may remove any file, so a newcomer run by root replaces a planted empty file
            // with a fresh ledger of its own, as it replaces any damaged one ("Rebuilding"):
            // never opened as a ledger, and the guard works there at once.
            let ledger = Ledger::open(&dir).expect("root replaces a planted empty file");
            let meta = std::fs::metadata(ledger.path()).unwrap();
            assert_eq!((meta.uid(), meta.len()), (0, layout::FILE_SIZE as u64));
            let me = ledger.join("after the planted file").unwrap();
            hold(&ledger, me, device(&ledger, 1 << 30), 1 << 20);
            ledger.leave(me);
            continue;
        }
        let error = Ledger::open(&dir).err().expect("a planted file is refused");
        let LedgerError::Foreign { uid, problem } = &error else {
            panic!("{plant}: {error:?}");
        };
        assert_eq!(*uid, 65534);
        assert!(
            matches!(**problem, LedgerError::Symlink { .. }),
            "{problem:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("belongs to nobody") && message.contains("host-setup"),
            "{message}"
        );
        // Not the advice for one's own damaged file, which this user cannot follow.
        assert!(!message.contains("stop every guarded program"), "{message}");
        assert_eq!(std::fs::read(&target).unwrap(), b"root's");
        // host-setup removes what is not a ledger, and the guard then works there.
        let done = host_setup::set_up(&dir, GROUP).unwrap();
        assert!(
            done.iter()
                .any(|line| line.starts_with("removed ") && line.contains("nobody")),
            "{done:?}"
        );
        let ledger = Ledger::open(&dir).unwrap();
        let me = ledger.join("after host-setup").unwrap();
        hold(&ledger, me, device(&ledger, 1 << 30), 1 << 20);
        ledger.leave(me);
        assert_eq!(std::fs::read(&target).unwrap(), b"root's");
    }
}

fn member_child() {
    let dir = child_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let dev = match ledger.find_device(uuid(0)) {
        Some(dev) => dev,
        None => device(&ledger, 4 << 30),
    };
    let me = ledger.join("member").unwrap();
    hold(&ledger, me, dev, 1 << 30);
    let meta = std::fs::metadata(ledger.path()).unwrap();
    report(format!(
        "file mode {:o} group {}",
        meta.mode() & 0o7777,
        meta.gid()
    ));
    report(format!("used {}", ledger.snapshot().devices[0].used));
    if child_var("REMOVE") == "yes" {
        report(format!(
            "remove {}",
            outcome(std::fs::remove_file(ledger.path()))
        ));
    }
    ledger.leave(me);
}

fn outsider_child() {
    let dir = child_dir();
    let file = dir.join(layout::FILE_NAME);
    for (what, result) in [
        ("open", Ledger::open(&dir).err()),
        ("open_existing", Ledger::open_existing(&dir).err()),
    ] {
        match result {
            Some(error) => report(format!("{what} {:?} {error}", error.cause())),
            None => report(format!("{what} ok")),
        }
    }
    report(format!("list {}", outcome(std::fs::read_dir(&dir))));
    report(format!("read {}", outcome(std::fs::read(&file))));
    report(format!(
        "write {}",
        outcome(std::fs::OpenOptions::new().write(true).open(&file))
    ));
    report(format!(
        "plant {}",
        outcome(std::fs::write(dir.join("planted"), b""))
    ));
    report(format!(
        "link {}",
        outcome(symlink("/etc", dir.join("linked")))
    ));
    report(format!("remove {}", outcome(std::fs::remove_file(&file))));
}

#[test]
fn the_hardened_directory_keeps_outsiders_out_and_members_in() {
    if let Some(role) = role() {
        return match role.as_str() {
            "member" => member_child(),
            _ => outsider_child(),
        };
    }
    if !can_play_other_users(TEST_HARDENED) {
        return;
    }
    let tmp = TempDir::new("hardened");
    let program = program_for_others(&tmp, TEST_HARDENED);
    let dir = tmp.path().join("vramguard");
    let done = host_setup::set_up(&dir, GROUP).unwrap();
    assert!(done[0].starts_with("created "), "{done:?}");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, GROUP, 0o3770)
    );
    // A member creates the ledger: 0660, of the directory's group.
    let first = reports_of(
        as_user(
            &program,
            TEST_HARDENED,
            "member",
            &dir,
            MEMBER,
            &[GROUP],
            &[("REMOVE", "no".into())],
        ),
        "first member",
    );
    assert_eq!(
        first[0],
        format!("file mode 660 group {GROUP}"),
        "{first:?}"
    );
    assert_eq!(first[1], format!("used {}", 1u64 << 30));
    let owner = std::fs::metadata(dir.join(layout::FILE_NAME))
        .unwrap()
        .uid();
    assert_eq!(owner, MEMBER);
    // Root and a second member join the same ledger; the second cannot remove the first's file
    // (the sticky bit), which is how a machine's ledger would be split in two.
    let ledger = Ledger::open(&dir).unwrap();
    let me = ledger.join("root member").unwrap();
    hold(&ledger, me, ledger.find_device(uuid(0)).unwrap(), 1 << 30);
    let second = reports_of(
        as_user(
            &program,
            TEST_HARDENED,
            "member",
            &dir,
            SECOND_MEMBER,
            &[GROUP],
            &[("REMOVE", "yes".into())],
        ),
        "second member",
    );
    assert_eq!(second[1], format!("used {}", 2u64 << 30), "{second:?}");
    assert_eq!(second[2], "remove PermissionDenied", "{second:?}");
    // The outsider: nothing at all, and told so plainly.
    let outsider = reports_of(
        as_user(
            &program,
            TEST_HARDENED,
            "outsider",
            &dir,
            OUTSIDER,
            &[],
            &[],
        ),
        "outsider",
    );
    for line in &outsider[..2] {
        assert!(
            line.contains("Permission") && line.contains(&format!("members of group {GROUP} only")),
            "{outsider:?}"
        );
        assert!(line.contains("are not in it"), "{outsider:?}");
    }
    for (index, what) in ["list", "read", "write", "plant", "link", "remove"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            outsider[2 + index],
            format!("{what} PermissionDenied"),
            "{outsider:?}"
        );
    }
    assert!(!dir.join("planted").exists() && !dir.join("linked").exists());
    assert_eq!(ledger.snapshot().devices[0].used, 1 << 30);
    ledger.leave(me);
    // host-setup again: nothing to change but the ledger file, which becomes root's.
    let done = host_setup::set_up(&dir, GROUP).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].contains("ledger.v1: owner root"), "{done:?}");
    assert!(host_setup::set_up(&dir, GROUP).unwrap().is_empty());
}
