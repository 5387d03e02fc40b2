//! Damaged and hostile ledger files: each kind gives a reader its own clear error naming the
//! path and the fix, and a damaged one (truncated, wrong size, garbage, a bad header) is replaced
//! with a fresh ledger by the next process that opens it to join; random and mutated files never
//! make the ledger panic, hang or read out of bounds; two processes racing to create the ledger
//! end up sharing one file.

mod ledger_support;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use ledger_support::{HANG_GUARD, Rng, TempDir, child_dir, hold, report, role, spawn, uuid};
use vramguard_core::ledger::{Ledger, LedgerError, Request, layout};

const TEST_UNWRITABLE: &str = "unwritable_ledger_is_reported_with_the_fix";

/// A ledger directory whose ledger file is `content`.
fn directory_with(tmp: &TempDir, content: &[u8]) -> std::path::PathBuf {
    let dir = tmp.ledger_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(layout::FILE_NAME), content).unwrap();
    dir
}

fn valid_bytes() -> Vec<u8> {
    let tmp = TempDir::new("valid");
    let ledger = tmp.open_ledger();
    let dev = ledger
        .register_device(uuid(1), "Valid", 8 << 30, 7 << 30)
        .unwrap();
    let me = ledger.join("valid").unwrap();
    hold(&ledger, me, dev, 1 << 30);
    let bytes = std::fs::read(ledger.path()).unwrap();
    ledger.leave(me);
    bytes
}

/// A process that opens `dir` to join replaces the damaged file there with a fresh, empty
/// ledger (a reader, [`Ledger::open_existing`], changes nothing: checked before this).
fn assert_rebuilt_by_newcomer(dir: &Path) {
    let before = std::fs::symlink_metadata(dir.join(layout::FILE_NAME)).unwrap();
    let ledger = Ledger::open(dir).expect("a newcomer rebuilds the damaged ledger");
    let after = std::fs::symlink_metadata(ledger.path()).unwrap();
    assert_ne!(
        before.ino(),
        after.ino(),
        "the damaged file was not replaced"
    );
    assert_eq!(after.len(), layout::FILE_SIZE as u64);
    let snapshot = ledger.snapshot();
    assert!(snapshot.devices.is_empty() && snapshot.processes.is_empty());
    let entries = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(entries, 1, "only the ledger is left in the directory");
}

/// Asserts the error names the ledger path and says what to do.
fn assert_clear(error: &LedgerError, path: &Path, fix: &str) {
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "no path in: {message}"
    );
    assert!(message.contains(fix), "no fix ({fix}) in: {message}");
}

#[test]
fn truncated_file_is_refused_to_readers_and_rebuilt_by_a_newcomer() {
    let tmp = TempDir::new("truncated");
    let mut bytes = valid_bytes();
    bytes.truncate(4096);
    let dir = directory_with(&tmp, &bytes);
    let error = Ledger::open_existing(&dir).err().unwrap();
    assert!(
        matches!(error, LedgerError::WrongSize { actual: 4096, .. }),
        "{error:?}"
    );
    assert_clear(&error, &dir.join(layout::FILE_NAME), "remove the file");
    assert_rebuilt_by_newcomer(&dir);
    // Empty, too.
    let dir = directory_with(&tmp, b"");
    assert!(matches!(
        Ledger::open_existing(&dir).err().unwrap(),
        LedgerError::WrongSize { actual: 0, .. }
    ));
    assert_rebuilt_by_newcomer(&dir);
}

#[test]
fn file_of_the_wrong_size_is_refused_to_readers_and_rebuilt_by_a_newcomer() {
    let tmp = TempDir::new("longer");
    let mut bytes = valid_bytes();
    bytes.extend_from_slice(&[0; 4096]);
    let dir = directory_with(&tmp, &bytes);
    let error = Ledger::open_existing(&dir).err().unwrap();
    assert!(matches!(error, LedgerError::WrongSize { .. }), "{error:?}");
    assert_clear(&error, &dir.join(layout::FILE_NAME), "VRAMGUARD_DIR");
    assert_rebuilt_by_newcomer(&dir);
}

#[test]
fn other_layout_version_is_refused() {
    let tmp = TempDir::new("version");
    let mut bytes = valid_bytes();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let dir = directory_with(&tmp, &bytes);
    let error = Ledger::open(&dir).err().unwrap();
    assert!(
        matches!(
            error,
            LedgerError::LayoutVersion {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert_clear(
        &error,
        &dir.join(layout::FILE_NAME),
        "made by a newer vramguard",
    );
    assert_clear(&error, &dir.join(layout::FILE_NAME), "upgrade");
    // An older layout: the same version everywhere, or a new file.
    let mut bytes = valid_bytes();
    bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
    let dir = directory_with(&tmp, &bytes);
    let error = Ledger::open(&dir).err().unwrap();
    assert!(
        matches!(error, LedgerError::LayoutVersion { found: 0, .. }),
        "{error:?}"
    );
    assert_clear(
        &error,
        &dir.join(layout::FILE_NAME),
        "same vramguard version",
    );
    assert_clear(&error, &dir.join(layout::FILE_NAME), "remove the file");
}

#[test]
fn garbage_and_bad_headers_are_refused_to_readers_and_rebuilt_by_a_newcomer() {
    let tmp = TempDir::new("garbage");
    let mut rng = Rng::new(7);
    let garbage: Vec<u8> = (0..layout::FILE_SIZE)
        .map(|_| rng.next_u64() as u8)
        .collect();
    let dir = directory_with(&tmp, &garbage);
    let error = Ledger::open_existing(&dir).err().unwrap();
    assert!(matches!(error, LedgerError::BadMagic { .. }), "{error:?}");
    assert_clear(
        &error,
        &dir.join(layout::FILE_NAME),
        "not a vramguard ledger",
    );
    assert_rebuilt_by_newcomer(&dir);
    // Right magic and version, but a header field that disagrees.
    let mut bytes = valid_bytes();
    bytes[24..28].copy_from_slice(&4096u32.to_le_bytes());
    let dir = directory_with(&tmp, &bytes);
    let error = Ledger::open_existing(&dir).err().unwrap();
    assert!(
        matches!(
            error,
            LedgerError::BadHeader {
                field: "max_processes",
                found: 4096,
                ..
            }
        ),
        "{error:?}"
    );
    assert_rebuilt_by_newcomer(&dir);
}

#[test]
fn symlink_is_never_followed() {
    let tmp = TempDir::new("symlink");
    let target = tmp.path().join("elsewhere");
    std::fs::write(&target, valid_bytes()).unwrap();
    let dir = tmp.ledger_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&target, dir.join(layout::FILE_NAME)).unwrap();
    let error = Ledger::open(&dir).err().unwrap();
    assert!(matches!(error, LedgerError::Symlink { .. }), "{error:?}");
    assert_clear(&error, &dir.join(layout::FILE_NAME), "symbolic link");
    assert!(matches!(
        Ledger::open_existing(&dir).err().unwrap(),
        LedgerError::Symlink { .. }
    ));
}

#[test]
fn directory_and_fifo_are_not_ledgers() {
    let tmp = TempDir::new("kinds");
    let dir = tmp.ledger_dir();
    std::fs::create_dir_all(dir.join(layout::FILE_NAME)).unwrap();
    let error = Ledger::open(&dir).err().unwrap();
    assert!(
        matches!(
            error,
            LedgerError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{error:?}"
    );
    assert_clear(&error, &dir.join(layout::FILE_NAME), "not a regular file");
    std::fs::remove_dir(dir.join(layout::FILE_NAME)).unwrap();
    let fifo = std::ffi::CString::new(dir.join(layout::FILE_NAME).display().to_string()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    // Opening a FIFO for reading without a writer would block for good.
    let opening = dir.clone();
    let error = ledger_support::within(HANG_GUARD, "opening a FIFO", move || {
        Ledger::open(&opening).err().unwrap()
    });
    assert!(
        matches!(
            error,
            LedgerError::NotRegularFile {
                kind: "named pipe (FIFO)",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn ledger_directory_that_is_a_file_is_reported() {
    let tmp = TempDir::new("dirfile");
    let dir = tmp.ledger_dir();
    std::fs::write(&dir, b"not a directory").unwrap();
    let error = Ledger::open(&dir).err().unwrap();
    assert!(matches!(error, LedgerError::Directory { .. }), "{error:?}");
    assert_clear(&error, &dir, "mkdir -p -m 1777");
}

/// As an unprivileged user (65534) when run as root, else as ourselves with the file at 0444.
fn unwritable_child() {
    let dir = child_dir();
    match Ledger::open(&dir) {
        Err(error @ LedgerError::PermissionDenied { .. }) => report(format!("denied {error}")),
        other => report(format!("unexpected {:?}", other.err())),
    }
    match Ledger::open_existing(&dir) {
        Ok(ledger) => {
            report(format!("read-only {}", ledger.is_read_only()));
            report(format!("devices {}", ledger.snapshot().devices.len()));
            let error = ledger.join("reader").err().unwrap();
            report(format!("join {error}"));
        }
        Err(error) => report(format!("unexpected {error}")),
    }
}

#[test]
fn unwritable_ledger_is_reported_with_the_fix() {
    if role().is_some() {
        return unwritable_child();
    }
    let tmp = TempDir::new("unwritable");
    let dir = tmp.ledger_dir();
    let ledger = Ledger::open(&dir).unwrap();
    ledger
        .register_device(uuid(1), "Shared", 8 << 30, 7 << 30)
        .unwrap();
    std::fs::set_permissions(ledger.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: getuid has no preconditions.
    let mut command = if unsafe { libc::getuid() } == 0 {
        use std::os::unix::process::CommandExt;
        // `tmp` (world-readable) holds the copy of this binary the other user runs.
        let mut command = ledger_support::child_command_for_another_user(
            tmp.path(),
            TEST_UNWRITABLE,
            "unwritable",
            &dir,
            &[],
        );
        command.uid(65534).gid(65534);
        command
    } else {
        std::fs::set_permissions(ledger.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        ledger_support::child_command(TEST_UNWRITABLE, "unwritable", &dir, &[])
    };
    let child = command.spawn().unwrap();
    let lines = ledger_support::finish(child, Instant::now() + HANG_GUARD, "unwritable child");
    let path = ledger.path().display().to_string();
    assert!(
        lines[0].starts_with("denied ")
            && lines[0].contains(&path)
            && lines[0].contains("chmod 0666"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "read-only true");
    assert_eq!(lines[2], "devices 1");
    assert!(
        lines[3].starts_with("join ") && lines[3].contains("read-only"),
        "{lines:?}"
    );
}

/// Opens `dir` and, if it opens, uses every operation; must neither panic nor hang.
fn exercise(dir: &Path) -> Result<(), LedgerError> {
    let ledger = Ledger::open(dir)?;
    let _ = ledger.snapshot();
    let _ = ledger.reclaim_dead();
    let dev = ledger.register_device(uuid(9), "Fuzz", 1 << 30, 1 << 30)?;
    let me = ledger.join("fuzz")?;
    let request = Request {
        wait_until: Some(Instant::now() + Duration::from_millis(5)),
        ..Request::default()
    };
    if let Ok(r) = ledger.reserve(me, dev, 1 << 20, &request) {
        ledger.commit(r);
    }
    let _ = ledger.set_claim(me, dev, 2 << 20, &Request::default());
    let _ = (
        ledger.available(me, dev, Some(1 << 29)),
        ledger.unbacked_by_others(me, dev),
        ledger.charge(me, dev),
    );
    ledger.release(me, dev, 1 << 20);
    let _ = ledger.snapshot();
    ledger.leave(me);
    Ok(())
}

#[test]
fn random_and_mutated_files_never_panic() {
    let tmp = TempDir::new("fuzz");
    let seed = ledger_support::seed();
    println!("fuzz seed {seed}");
    let mut rng = Rng::new(seed);
    let valid = valid_bytes();
    let (mut opened, mut refused) = (0u32, 0u32);
    let started = Instant::now();
    for round in 0..300 {
        let bytes: Vec<u8> = match round % 3 {
            // Random bytes of a random length (sometimes the exact size).
            0 => {
                let len = if rng.below(2) == 0 {
                    layout::FILE_SIZE
                } else {
                    rng.below(layout::FILE_SIZE as u64 * 2) as usize
                };
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
            // A valid file with random words overwritten anywhere past the header.
            1 => {
                let mut bytes = valid.clone();
                for _ in 0..1 + rng.below(64) {
                    let at = (layout::HEADER_SIZE as u64
                        + rng.below((bytes.len() - layout::HEADER_SIZE - 8) as u64))
                        as usize
                        & !7;
                    bytes[at..at + 8].copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                bytes
            }
            // A valid file with the device table and the first slots filled with garbage,
            // the high-water hints included.
            _ => {
                let mut bytes = valid.clone();
                let end = layout::SLOTS_OFFSET + 8 * layout::SLOT_RECORD_SIZE;
                for byte in &mut bytes[64..end] {
                    *byte = rng.next_u64() as u8;
                }
                // Keep the lock words free of tokens naming a live slot of ours (that would be a
                // correct 5 s lock timeout, just slow).
                for device in 0..layout::MAX_DEVICES {
                    let at = layout::DEVICES_OFFSET + device * layout::DEVICE_RECORD_SIZE + 64;
                    if rng.below(2) == 0 {
                        bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
                    }
                }
                bytes
            }
        };
        let dir = tmp.path().join(format!("f{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(layout::FILE_NAME), &bytes).unwrap();
        // A lock word left with a live owner's token costs one lock deadline per operation, well
        // within the hang guard.
        let exercised = dir.clone();
        let outcome = ledger_support::within(HANG_GUARD, &format!("round {round}"), move || {
            exercise(&exercised)
        });
        match outcome {
            Ok(()) => opened += 1,
            Err(error) => {
                refused += 1;
                assert!(
                    error.to_string().contains(&dir.display().to_string()),
                    "{error}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "fuzz: 300 files in {:?}: {opened} usable, {refused} refused with an error",
        started.elapsed()
    );
    // A damaged file is replaced by the process that opens it: most rounds end in a usable
    // ledger, and none in a panic or a hang.
    assert!(opened > 0);
}

#[test]
fn racing_creators_share_one_file() {
    let tmp = TempDir::new("create-race");
    let dir = tmp.ledger_dir();
    let barrier = std::sync::Barrier::new(8);
    let identities: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let ledger = Ledger::open(&dir).unwrap();
                    let me = ledger.join("creator").unwrap();
                    let meta = std::fs::metadata(ledger.path()).unwrap();
                    barrier.wait();
                    assert_eq!(ledger.snapshot().processes.len(), 8);
                    barrier.wait();
                    ledger.leave(me);
                    (meta.dev(), meta.ino())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        identities.windows(2).all(|w| w[0] == w[1]),
        "{identities:?}"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [layout::FILE_NAME], "temporary files left behind");
}

#[test]
fn a_process_joins_what_another_process_created() {
    if role().is_some() {
        let ledger = Ledger::open(&child_dir()).unwrap();
        ledger
            .register_device(uuid(3), "From child", 1 << 30, 1 << 30)
            .unwrap();
        return;
    }
    let tmp = TempDir::new("cross");
    let child = spawn(
        "a_process_joins_what_another_process_created",
        "create",
        &tmp.ledger_dir(),
        &[],
    );
    ledger_support::finish(child, Instant::now() + HANG_GUARD, "creator");
    let ledger = Ledger::open_existing(&tmp.ledger_dir()).unwrap();
    assert_eq!(ledger.snapshot().devices[0].name, "From child");
    let file = std::fs::File::open(ledger.path()).unwrap();
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).unwrap();
    assert_eq!(&magic, b"VRAMGRD\0");
}
