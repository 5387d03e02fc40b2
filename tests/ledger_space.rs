//! The ledger's file system without room, without `fallocate`, and a process without file
//! descriptors: every page of the ledger has storage before it is mapped, so a full or small
//! file system refuses the ledger with an error (never a `SIGBUS`), and each cause has its own
//! remedy. The file systems are tmpfs and ramfs mounts in private mount namespaces
//! (`support/private_mount.rs`); the checks run in a child re-run of this binary inside.

mod ledger_support;
#[path = "support/private_mount.rs"]
mod private_mount;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_support::{TempDir, child_command, child_dir, device, finish, hold, report, role, uuid};
use private_mount::PrivateMount;
use vramguard_core::ledger::{Cause, Ledger, LedgerError, layout};

const SIZE: u64 = layout::FILE_SIZE as u64;
const BUDGET: u64 = 8 << 30;
const CHILD_DEADLINE: Duration = ledger_support::HANG_GUARD;

/// Bytes of storage the file system holds for the file at `path`.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Gives back the storage of bytes `from..` of the file at `path` (its size stays): the ledger
/// as an older build left it, created sparse, with only the pages used so far backed.
fn punch_holes_from(path: &Path, from: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: an open descriptor; the kernel checks the range.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            (SIZE - from) as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "punch holes: {}", std::io::Error::last_os_error());
    assert!(allocated(path) < SIZE / 2, "the holes were not punched");
}

/// Writes zeros to `dir/fill` until the file system is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut file = File::create(dir.join("fill")).unwrap();
    let zeros = vec![0u8; 64 * 1024];
    loop {
        match file.write(&zeros) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
                break;
            }
        }
    }
}

/// What a child in a private mount reports: runs `test` as `role` inside `mount`, with the
/// ledger directory `mount.dir/ledger`, and returns its report lines (it must exit by itself,
/// successfully: a SIGBUS fails the test here).
fn run_inside(mount: &PrivateMount, test: &str, role: &str) -> Vec<String> {
    let inner = child_command(test, role, &mount.dir.join("ledger"), &[]);
    let mut command = mount.command(&inner);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    finish(
        command
            .spawn()
            .expect("start the child in the private mount"),
        Instant::now() + CHILD_DEADLINE,
        role,
    )
}

/// Runs `test` as `role` in a child inside a fresh tmpfs of `size` (see [`run_inside`]).
fn run_in_tmpfs(size: &str, test: &str, role: &str) -> Vec<String> {
    let tmp = TempDir::new(role);
    let mount = PrivateMount::tmpfs(&tmp.path().join("mnt"), size);
    run_inside(&mount, test, role)
}

/// Asserts the error's message names the file and says `fix`, and not `never`.
fn assert_says(error: &LedgerError, fix: &str, never: &str) {
    let message = error.to_string();
    assert!(message.contains(layout::FILE_NAME), "no path in: {message}");
    assert!(message.contains(fix), "no {fix:?} in: {message}");
    assert!(!message.contains(never), "{never:?} in: {message}");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const TEST_NO_ROOM: &str = "a_file_system_too_small_refuses_a_new_ledger_cleanly";

fn no_room_child() {
    let dir = child_dir();
    let error = Ledger::open(&dir)
        .err()
        .expect("a 1 MiB file system cannot hold the ledger");
    match &error {
        LedgerError::NoSpace { needed, free, .. } => {
            report(format!("no space needed {needed} free {free:?}"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error.cause(), Cause::Space);
    assert_says(&error, "--shm-size=", "remove the file");
    report(format!("left behind {:?}", entries(&dir)));
    let again = Ledger::open_existing(&dir).err().unwrap();
    report(format!(
        "open existing missing {}",
        matches!(again, LedgerError::Missing { .. })
    ));
}

#[test]
fn a_file_system_too_small_refuses_a_new_ledger_cleanly() {
    if role().is_some() {
        return no_room_child();
    }
    let lines = run_in_tmpfs("1m", TEST_NO_ROOM, "no room");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(words[..3], ["no", "space", "needed"], "{lines:?}");
    assert_eq!(words[3], SIZE.to_string(), "{lines:?}");
    let free: u64 = words[5]
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or_else(|_| panic!("{lines:?}"));
    assert!(free <= 1 << 20, "{lines:?}");
    // No temporary file and no half-made ledger is left in the way of the next attempt.
    assert_eq!(lines[1], "left behind []");
    assert_eq!(lines[2], "open existing missing true");
}

const TEST_FULL: &str = "a_ledger_made_before_the_file_system_filled_up_keeps_working";

fn full_child() {
    let dir = child_dir();
    let first = Ledger::open(&dir).unwrap();
    let path = first.path().to_owned();
    report(format!("whole at creation {}", allocated(&path) >= SIZE));
    let dev = device(&first, BUDGET);
    let me = first.join("first").unwrap();
    hold(&first, me, dev, 1 << 30);
    fill(dir.parent().unwrap());
    // A second member on a full file system: new mapping, new slot, a device registered, bytes
    // reserved, committed, released; every page it touches had storage before.
    let second = Ledger::open(&dir).unwrap();
    let other = second.join("second").unwrap();
    let dev2 = second
        .register_device(uuid(7), "Second GPU", BUDGET, BUDGET)
        .unwrap();
    hold(&second, other, dev2, 2 << 30);
    hold(&second, other, device(&second, BUDGET), 3 << 30);
    let snapshot = second.snapshot();
    report(format!(
        "members {} devices {} used {}",
        snapshot.processes.len(),
        snapshot.devices.len(),
        snapshot.devices.iter().map(|d| d.used).sum::<u64>()
    ));
    second.leave(other);
    first.leave(me);
}

#[test]
fn a_ledger_made_before_the_file_system_filled_up_keeps_working() {
    if role().is_some() {
        return full_child();
    }
    let lines = run_in_tmpfs("8m", TEST_FULL, "full");
    assert_eq!(
        lines,
        [
            "whole at creation true".to_string(),
            format!("members 2 devices 2 used {}", 6u64 << 30),
        ]
    );
}

const TEST_SPARSE: &str = "a_sparse_ledger_is_made_whole_or_refused_on_a_full_file_system";

fn sparse_child() {
    let dir = child_dir();
    let path = {
        let ledger = Ledger::open(&dir).unwrap();
        device(&ledger, BUDGET);
        ledger.path().to_owned()
    };
    // As an older build left it: the header and the first device records backed, the rest not.
    punch_holes_from(&path, 64 * 1024);
    fill(dir.parent().unwrap());
    for (what, result) in [
        ("open", Ledger::open(&dir)),
        ("open existing", Ledger::open_existing(&dir)),
    ] {
        let error = result.err().expect("a sparse ledger on a full file system");
        assert_eq!(error.cause(), Cause::Space, "{error:?}");
        assert_says(&error, "--shm-size=", "remove the file");
        let LedgerError::NoSpace { needed, .. } = error else {
            unreachable!()
        };
        // What it lacks: all of the file but the pages still backed.
        report(format!(
            "{what} refused, needs {}",
            needed + allocated(&path) == SIZE
        ));
    }
    fs::remove_file(dir.parent().unwrap().join("fill")).unwrap();
    // With room, joining gives the file the storage it lacks, and keeps its content.
    let ledger = Ledger::open(&dir).unwrap();
    report(format!("whole after join {}", allocated(&path) >= SIZE));
    report(format!(
        "device kept {}",
        ledger.find_device(uuid(0)).is_some()
    ));
    let me = ledger.join("after").unwrap();
    hold(&ledger, me, ledger.find_device(uuid(0)).unwrap(), 1 << 30);
    ledger.leave(me);
}

#[test]
fn a_sparse_ledger_is_made_whole_or_refused_on_a_full_file_system() {
    if role().is_some() {
        return sparse_child();
    }
    let lines = run_in_tmpfs("8m", TEST_SPARSE, "sparse");
    assert_eq!(
        lines,
        [
            "open refused, needs true",
            "open existing refused, needs true",
            "whole after join true",
            "device kept true",
        ]
    );
}

const TEST_RACE: &str = "creators_racing_on_a_nearly_full_file_system_share_one_ledger";

fn race_child() {
    let dir = child_dir();
    const CREATORS: usize = 4;
    let barrier = std::sync::Barrier::new(CREATORS);
    let opened: Vec<Result<Ledger, LedgerError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CREATORS)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    Ledger::open(&dir)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ledgers = Vec::new();
    for outcome in opened {
        match outcome {
            Ok(ledger) => ledgers.push(ledger),
            Err(error) => report(format!("error {error}")),
        }
    }
    // One file for all: every member is seen by every other.
    let members: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(i, ledger)| ledger.join(&format!("creator {i}")).unwrap())
        .collect();
    for ledger in &ledgers {
        report(format!(
            "sees {} members",
            ledger.snapshot().processes.len()
        ));
    }
    for (ledger, me) in ledgers.iter().zip(members) {
        ledger.leave(me);
    }
    report(format!("files {:?}", entries(&dir)));
}

#[test]
fn creators_racing_on_a_nearly_full_file_system_share_one_ledger() {
    if role().is_some() {
        return race_child();
    }
    let tmp = TempDir::new("race");
    // Room for one ledger and a half: racing creators cannot all reserve at once.
    let mount = PrivateMount::tmpfs(&tmp.path().join("mnt"), "5m");
    for round in 0..5 {
        mount.shell(r#"rm -rf "$1/ledger""#);
        let lines = run_inside(&mount, TEST_RACE, "race");
        assert_eq!(
            lines,
            [
                "sees 4 members",
                "sees 4 members",
                "sees 4 members",
                "sees 4 members",
                "files [\"ledger.v1\"]"
            ],
            "round {round}"
        );
    }
}

const TEST_RAMFS: &str = "a_file_system_without_fallocate_gets_zeros_and_refuses_holes";

fn ramfs_child() {
    let dir = child_dir();
    let path = {
        let ledger = Ledger::open(&dir).unwrap();
        device(&ledger, BUDGET);
        ledger.path().to_owned()
    };
    report(format!("whole at creation {}", allocated(&path) >= SIZE));
    let ledger = Ledger::open(&dir).unwrap();
    report(format!("joined {}", ledger.join("second").is_ok()));
    // A sparse copy (only its first page written) cannot be made whole here: refused.
    let sparse_dir = dir.parent().unwrap().join("sparse");
    fs::create_dir_all(&sparse_dir).unwrap();
    let sparse = sparse_dir.join(layout::FILE_NAME);
    let header = &fs::read(&path).unwrap()[..4096];
    fs::write(&sparse, header).unwrap();
    fs::set_permissions(&sparse, fs::Permissions::from_mode(0o666)).unwrap();
    File::options()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let error = Ledger::open(&sparse_dir)
        .err()
        .expect("holes that cannot be backed");
    assert_eq!(error.cause(), Cause::Damaged);
    assert_says(&error, "remove the file", "--shm-size");
    match error {
        LedgerError::NotBacked { missing, .. } => report(format!("refused holes {}", missing > 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_system_without_fallocate_gets_zeros_and_refuses_holes() {
    if role().is_some() {
        return ramfs_child();
    }
    let tmp = TempDir::new("ramfs");
    let mount = PrivateMount::ramfs(&tmp.path().join("mnt"));
    let lines = run_inside(&mount, TEST_RAMFS, "ramfs");
    assert_eq!(
        lines,
        [
            "whole at creation true",
            "joined true",
            "refused holes true"
        ]
    );
}

#[test]
fn a_new_ledger_has_storage_for_every_page() {
    let tmp = TempDir::new("whole");
    let ledger = tmp.open_ledger();
    assert!(
        allocated(ledger.path()) >= SIZE,
        "{}",
        allocated(ledger.path())
    );
}

const TEST_DESCRIPTORS: &str = "out_of_descriptors_is_told_apart_from_a_damaged_ledger";

fn descriptors_child() {
    let dir = child_dir();
    let ledger = Ledger::open(&dir).unwrap();
    let mut held = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        held.push(file);
    }
    let errors = [
        ("open", Ledger::open(&dir).err()),
        ("join", ledger.join("no descriptor").err()),
        (
            "register",
            ledger.register_device(uuid(3), "GPU", BUDGET, BUDGET).err(),
        ),
    ];
    for (what, error) in errors {
        let error = error.unwrap_or_else(|| panic!("{what} worked without a descriptor"));
        assert_eq!(error.cause(), Cause::Descriptors, "{what}: {error:?}");
        assert_says(&error, "ulimit -n", "remove the file");
        assert_says(&error, "the ledger is fine", "damaged");
        let LedgerError::Descriptors {
            system_wide, limit, ..
        } = error
        else {
            unreachable!()
        };
        report(format!(
            "{what}: process limit {}",
            !system_wide && limit.is_some()
        ));
    }
    drop(held);
    report(format!("with descriptors {}", ledger.join("again").is_ok()));
}

#[test]
fn out_of_descriptors_is_told_apart_from_a_damaged_ledger() {
    if role().is_some() {
        return descriptors_child();
    }
    let tmp = TempDir::new("descriptors");
    let lines = finish(
        ledger_support::spawn(TEST_DESCRIPTORS, "descriptors", &tmp.ledger_dir(), &[]),
        Instant::now() + CHILD_DEADLINE,
        "descriptors",
    );
    assert_eq!(
        lines,
        [
            "open: process limit true",
            "join: process limit true",
            "register: process limit true",
            "with descriptors true",
        ]
    );
}

const TEST_READER: &str = "a_reader_that_cannot_write_refuses_a_sparse_ledger";

fn reader_child() {
    let dir = child_dir();
    match Ledger::open_existing(&dir) {
        Err(error @ LedgerError::NotBacked { .. }) => {
            assert_says(&error, "remove the file", "--shm-size");
            report("sparse refused");
        }
        Ok(ledger) => report(format!(
            "whole read, read-only {}, devices {}",
            ledger.is_read_only(),
            ledger.snapshot().devices.len()
        )),
        Err(other) => panic!("{other:?}"),
    }
}

/// `command` run as a user who may not write the ledger: as root, nobody (`setpriv`); otherwise
/// this user, whom the file's mode keeps from writing.
fn without_write_access(command: Command, file: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    fs::set_permissions(
        file,
        fs::Permissions::from_mode(if root { 0o644 } else { 0o444 }),
    )
    .unwrap();
    if !root {
        return command;
    }
    let mut setpriv = private_mount::run_through(
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups", "--"].map(String::from),
        &command,
    );
    setpriv
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    setpriv
}

#[test]
fn a_reader_that_cannot_write_refuses_a_sparse_ledger() {
    if role().is_some() {
        return reader_child();
    }
    let tmp = TempDir::new("reader");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.ledger_dir();
    let path: PathBuf = {
        let ledger = tmp.open_ledger();
        device(&ledger, BUDGET);
        ledger.path().to_owned()
    };
    let read = |what: &str| {
        let command = child_command(TEST_READER, "reader", &dir, &[]);
        let child = without_write_access(command, &path).spawn().unwrap();
        finish(child, Instant::now() + CHILD_DEADLINE, what)
    };
    assert_eq!(read("whole"), ["whole read, read-only true, devices 1"]);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    punch_holes_from(&path, 64 * 1024);
    assert_eq!(read("sparse"), ["sparse refused"]);
}
