//! Finding, creating, checking and mapping the ledger file.
//!
//! The directory is opened and checked by `directory`, and every file in it is opened, created,
//! linked and removed relative to the directory's descriptor.
//!
//! The file is opened without following symbolic links and accepted only if it is a regular file
//! of exactly the layout's size whose header carries the magic number, this layout version and
//! this layout's sizes and offsets. A new file is built under a temporary name, initialised, and
//! then hard-linked into place, which fails if another process published one first: nobody ever
//! maps a half-initialised ledger, and two processes racing to create it end up sharing one.
//! Every page of the file has storage before it is mapped (`backing`): a new file is reserved
//! whole before it is initialised, an existing one made whole before it is mapped, so that no
//! page is ever first touched, by any operation, on a file system without room for it.
//!
//! Also here: new open file descriptions of an open ledger (through `/proc/self/fd`, so that they
//! work after the file was removed), and noticing and repairing a file truncated while mapped.
#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::backing::{self, Unbacked};
use super::directory::Directory;
use super::error::LedgerError;
use super::layout::{self, FILE_NAME, FILE_SIZE, LAYOUT_VERSION, LedgerLayout, MAGIC};
use super::liveness;

/// How long a creator that found no room waits for another creator's ledger to appear.
const PUBLISHER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A shared mapping of a validated ledger file.
pub struct Mapping {
    base: NonNull<LedgerLayout>,
}

// SAFETY: the mapping holds only atomics (interior mutability made for sharing between threads
// and processes), and `Mapping` never hands out anything but shared references to them.
unsafe impl Send for Mapping {}
// SAFETY: as above; concurrent access goes through atomic operations only.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, writable: bool, path: &Path) -> Result<Mapping, LedgerError> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of `FILE_SIZE` bytes of an open file, at an address the
        // kernel picks; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                protection(writable),
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(mmap_error(path));
        }
        let base = NonNull::new(base.cast::<LedgerLayout>()).ok_or_else(|| LedgerError::Io {
            path: path.to_owned(),
            op: "mmap",
            source: io::Error::other("null mapping"),
        })?;
        Ok(Mapping { base })
    }

    /// Maps `fd` (a validated ledger file) in place of the file mapped now, at the same
    /// address, in one step: every reference into the mapping stays valid and from now on reads
    /// the new file. The caller makes sure no operation of this process writes meanwhile.
    pub fn remap(
        &self,
        fd: BorrowedFd<'_>,
        writable: bool,
        path: &Path,
    ) -> Result<(), LedgerError> {
        use std::os::fd::AsRawFd;
        // SAFETY: replaces exactly the region this `Mapping` owns (`FILE_SIZE` bytes at `base`,
        // mapped in `new`) with a shared mapping of the same size of another file of exactly
        // that size (checked by the caller); MAP_FIXED swaps the pages atomically, so the region
        // is always mapped and the references into it stay valid.
        let base = unsafe {
            libc::mmap(
                self.base.as_ptr().cast(),
                FILE_SIZE,
                protection(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(mmap_error(path));
        }
        Ok(())
    }

    /// The ledger's records.
    pub fn layout(&self) -> &LedgerLayout {
        // SAFETY: `base` points to a live, page-aligned mapping of exactly
        // `size_of::<LedgerLayout>()` bytes (checked against the file size before mapping) that
        // stays mapped until `self` drops. Every field is an atomic, and all bit patterns are valid
        // for atomics, so whatever other processes wrote is a valid `LedgerLayout`. A read-only
        // mapping is only ever loaded from (callers refuse writes when the ledger is read-only).
        unsafe { self.base.as_ref() }
    }
}

/// The protection of a mapping of the ledger file: read-write, or read-only.
fn protection(writable: bool) -> libc::c_int {
    if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

/// The error of an `mmap` of the ledger file `path` that just failed (from `errno`).
#[cold]
fn mmap_error(path: &Path) -> LedgerError {
    LedgerError::from_io(path, "mmap", 0, io::Error::last_os_error())
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), FILE_SIZE);
        }
    }
}

/// An open, validated ledger.
pub struct OpenLedger {
    /// The ledger file's path.
    pub path: PathBuf,
    /// The descriptor the mapping came from. It never holds a lock, so liveness questions asked
    /// through it see every holder.
    pub file: File,
    /// The mapping.
    pub mapping: Mapping,
    /// Whether only reading is possible.
    pub read_only: bool,
    /// Device and inode of the file (to recognise it when reopening).
    pub identity: (u64, u64),
}

/// The ledger file inside `dir`.
pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Opens (and with `create`, first creates) the ledger in `dir`. The directory is opened and
/// checked first (`directory`: never through a link, refused when others could change it under
/// us), and the file is opened relative to it.
pub fn open(dir: &Path, create: bool) -> Result<OpenLedger, LedgerError> {
    let path = ledger_path(dir);
    let directory = Directory::open(dir, create)?;
    // Creation races resolve themselves within a round or two: link() lets exactly one publisher
    // win, and everybody else opens the winner's file.
    for _ in 0..8 {
        let opened = match open_file(&directory, &path, true) {
            Err(LedgerError::Missing { .. }) if create => {
                match create_and_publish(&directory, &path) {
                    // Racing creators each reserve a whole file: on a nearly full file system
                    // one may find no room while another's file is on its way.
                    Err(no_space @ LedgerError::NoSpace { .. }) => {
                        if !room_after_other_creators(&directory) {
                            return Err(no_space);
                        }
                    }
                    other => other?,
                }
                continue;
            }
            Err(damage) if create && is_damage(&damage) => {
                match directory.open_file(FILE_NAME, true) {
                    Ok(damaged) if damaged.metadata().is_ok_and(|meta| meta.is_file()) => {
                        if let Err(error) = replace_damaged(&directory, &path, &damaged) {
                            // Another user's damaged file in a sticky directory cannot be
                            // replaced by this one: say whose it is and who can remove it.
                            return Err(match disowned(&directory, damage) {
                                foreign @ LedgerError::Foreign { .. } => foreign,
                                _ => error,
                            });
                        }
                        continue;
                    }
                    _ => Err(damage),
                }
            }
            Err(LedgerError::PermissionDenied { .. } | LedgerError::ReadOnly { .. }) if !create => {
                open_file(&directory, &path, false)
            }
            other => other,
        };
        return opened.map_err(|error| disowned(&directory, error));
    }
    Err(LedgerError::Io {
        path,
        op: "create",
        source: io::Error::other("the file kept disappearing while it was being opened"),
    })
}

/// `error` about the ledger file, as [`LedgerError::Foreign`] when the file cannot be used and
/// belongs to someone who is neither root nor the caller (who then cannot remove it).
fn disowned(directory: &Directory, error: LedgerError) -> LedgerError {
    let unusable = matches!(
        error,
        LedgerError::Symlink { .. }
            | LedgerError::NotRegularFile { .. }
            | LedgerError::WrongSize { .. }
            | LedgerError::BadMagic { .. }
            | LedgerError::BadHeader { .. }
    );
    match directory.entry(FILE_NAME) {
        Ok(owner) if unusable && !owner.trusted() => LedgerError::Foreign {
            uid: owner.uid,
            problem: Box::new(error),
        },
        _ => error,
    }
}

/// Whether `error` says the file at the path is a damaged ledger (not a ledger of another
/// layout, nor one this process may not use), which a member or a newcomer replaces with a
/// fresh one.
pub fn is_damage(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::BadMagic { .. }
            | LedgerError::BadHeader { .. }
            | LedgerError::WrongSize { .. }
            | LedgerError::Truncated { .. }
    )
}

/// After a creation that found no room: whether to try again. Racing creators each reserve a
/// whole file, so on a nearly full file system one may find no room while another's file is on
/// its way, or all may fail together. Waits (up to [`PUBLISHER_WAIT`]) while others are at work;
/// then true if the ledger appeared, or if the file system has room for it now (after a pause
/// that differs from creator to creator, so that those who failed together do not meet again).
/// False when there is no room, or the wait ran out (a temporary file of a creator that died).
fn room_after_other_creators(directory: &Directory) -> bool {
    let dir = directory.path();
    let deadline = std::time::Instant::now() + PUBLISHER_WAIT;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let pause = std::time::Duration::from_micros(200 + u64::from(clock % 2000));
    let mut paused = false;
    loop {
        if directory.entry(FILE_NAME).is_ok() {
            return true;
        }
        let others = another_creator_at_work(dir);
        if !others && paused {
            return backing::free_space(dir).is_some_and(|free| free >= FILE_SIZE as u64);
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        // Nobody else at work yet: look again once after the pause (a creator may be starting).
        paused = !others;
        std::thread::sleep(pause);
    }
}

/// Whether `dir` holds a temporary ledger file (see [`create_and_publish`]).
fn another_creator_at_work(dir: &Path) -> bool {
    let prefix = format!(".{FILE_NAME}.");
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".tmp")
        })
    })
}

fn io_error<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> LedgerError + 'a {
    move |source| LedgerError::from_io(path, op, 0, source)
}

/// How a fresh ledger is put in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// `linkat()`: only if no file is at the path (the loser opens the winner's).
    IfMissing,
    /// `renameat()`: over the damaged file at the path (under that file's rebuild lock).
    Replace,
}

fn create_and_publish(directory: &Directory, path: &Path) -> Result<(), LedgerError> {
    build_and_publish(directory, path, Publish::IfMissing)
}

/// Replaces the damaged file `damaged` at `path` (in `directory`) with a fresh ledger, unless
/// someone did so already: under `damaged`'s rebuild lock (members that found it damaged take
/// turns), and only if `damaged` is still the file at the path. Whoever comes next finds the
/// fresh file and follows it, so concurrent rebuilders end in one ledger.
pub fn replace_damaged(
    directory: &Directory,
    path: &Path,
    damaged: &File,
) -> Result<(), LedgerError> {
    let damaged_identity = damaged
        .metadata()
        .map(|meta| (meta.dev(), meta.ino()))
        .map_err(io_error(path, "stat"))?;
    let locker = reopen(damaged, path, damaged_identity)?;
    let deadline = std::time::Instant::now() + PUBLISHER_WAIT;
    let _turn = super::lock::acquire_byte_lock(locker, layout::REBUILD_LOCK_BYTE, deadline)
        .map_err(|busy| LedgerError::LockTimeout {
            path: path.to_owned(),
            what: "rebuild",
            waited: busy.waited,
        })?;
    match directory.identity(FILE_NAME) {
        Ok(identity) if identity == damaged_identity => {
            build_and_publish(directory, path, Publish::Replace)
        }
        // Replaced by someone else already (or removed: the caller creates it anew).
        _ => Ok(()),
    }
}

fn build_and_publish(
    directory: &Directory,
    path: &Path,
    publish: Publish,
) -> Result<(), LedgerError> {
    // Unique per process (pid), per call (counter) and per pid namespace sharing the directory
    // (clock): O_EXCL below refuses a name that exists anyway.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let temporary = format!(
        ".{FILE_NAME}.{}.{}.{}.tmp",
        liveness::current_pid(),
        CALLS.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let file = directory
        .create_new(&temporary)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => LedgerError::Directory {
                dir: directory.path().to_owned(),
                source,
            },
            _ => LedgerError::from_io(path, "create", FILE_SIZE as u64, source),
        })?;
    let result = (|| {
        backing::reserve_new(&file, FILE_SIZE as u64).map_err(|source| {
            LedgerError::from_io(path, "reserve (fallocate)", FILE_SIZE as u64, source)
        })?;
        let mapping = Mapping::new(file.as_fd(), true, path)?;
        layout::initialise_header(&mapping.layout().header, liveness::unix_ms());
        drop(mapping);
        let published = match publish {
            Publish::IfMissing => directory.link(&temporary, FILE_NAME),
            Publish::Replace => directory.rename(&temporary, FILE_NAME),
        };
        match published {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(LedgerError::Io {
                path: path.to_owned(),
                op: "publish (link)",
                source: error,
            }),
        }
    })();
    let _ = directory.remove(&temporary);
    result
}

fn file_kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "named pipe (FIFO)"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens the ledger file of `directory` (`path`, for messages) without following links, checks
/// that it is a regular file of the right size, maps it and validates its header.
fn open_file(
    directory: &Directory,
    path: &Path,
    writable: bool,
) -> Result<OpenLedger, LedgerError> {
    let file = directory
        .open_file(FILE_NAME, writable)
        .map_err(|source| classify_open_error(path, source))?;
    let meta = file.metadata().map_err(io_error(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(LedgerError::NotRegularFile {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        });
    }
    if meta.len() != FILE_SIZE as u64 {
        return Err(LedgerError::WrongSize {
            path: path.to_owned(),
            actual: meta.len(),
            expected: FILE_SIZE as u64,
        });
    }
    backing::ensure_whole(&file, FILE_SIZE as u64, writable).map_err(
        |unbacked| match unbacked {
            Unbacked::Failed(source) => LedgerError::from_io(
                path,
                "reserve (fallocate)",
                (FILE_SIZE as u64).saturating_sub(meta.blocks().saturating_mul(512)),
                source,
            ),
            Unbacked::Holes { missing } => LedgerError::NotBacked {
                path: path.to_owned(),
                missing,
            },
        },
    )?;
    let mapping = Mapping::new(file.as_fd(), writable, path)?;
    validate(&mapping, path)?;
    Ok(OpenLedger {
        path: path.to_owned(),
        file,
        mapping,
        read_only: !writable,
        identity: (meta.dev(), meta.ino()),
    })
}

/// Opens `path` (never following a link, never blocking on a FIFO, never creating).
fn open_descriptor(path: &Path, writable: bool) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| classify_open_error(path, source))
}

fn classify_open_error(path: &Path, source: io::Error) -> LedgerError {
    let path_buf = path.to_owned();
    match source.raw_os_error() {
        Some(libc::ENOENT) => LedgerError::Missing { path: path_buf },
        Some(libc::ELOOP) => match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => LedgerError::Symlink { path: path_buf },
            _ => LedgerError::Io {
                path: path_buf,
                op: "open",
                source,
            },
        },
        Some(libc::EISDIR) => LedgerError::NotRegularFile {
            path: path_buf,
            kind: "directory",
        },
        Some(libc::ENXIO) | Some(libc::ENODEV) => LedgerError::NotRegularFile {
            path: path_buf,
            kind: "special file",
        },
        Some(libc::EACCES) | Some(libc::EPERM) => LedgerError::PermissionDenied { path: path_buf },
        Some(libc::EROFS) | Some(libc::ETXTBSY) => LedgerError::ReadOnly { path: path_buf },
        _ => LedgerError::from_io(path, "open", 0, source),
    }
}

fn validate(mapping: &Mapping, path: &Path) -> Result<(), LedgerError> {
    let header = &mapping.layout().header;
    let magic = header.magic.load(Ordering::Acquire);
    if magic == layout::TRUNCATED_MAGIC {
        return Err(LedgerError::Truncated {
            path: path.to_owned(),
        });
    }
    if magic != MAGIC {
        return Err(LedgerError::BadMagic {
            path: path.to_owned(),
        });
    }
    let version = header.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(LedgerError::LayoutVersion {
            path: path.to_owned(),
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    if let Some((field, found, expected)) = layout::header_mismatch(header) {
        return Err(LedgerError::BadHeader {
            path: path.to_owned(),
            field,
            found,
            expected,
        });
    }
    Ok(())
}

/// A new open file description of the same ledger file (for locks that must be this call's
/// own: a forked child shares the parent's descriptions, and OFD locks never conflict within one).
///
/// Reopened through `/proc/self/fd/<fd>` of `file`, the descriptor the mapping came from, so it
/// still works after the file or its directory was removed (members of a removed ledger must go
/// on reclaiming each other's bytes). Only where `/proc` is missing is the path used, and then the
/// file found there must be the same file.
pub fn reopen(file: &File, ledger_path: &Path, identity: (u64, u64)) -> Result<File, LedgerError> {
    use std::os::fd::AsRawFd;
    let through_proc = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // No O_NOFOLLOW here: following this one magic link to the open file is the point.
    let reopened = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&through_proc)
    {
        Ok(reopened) => reopened,
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR)
            ) =>
        {
            open_descriptor(ledger_path, true)?
        }
        Err(error) => return Err(classify_open_error(ledger_path, error)),
    };
    let meta = reopened.metadata().map_err(io_error(ledger_path, "stat"))?;
    if (meta.dev(), meta.ino()) != identity {
        return Err(LedgerError::Io {
            path: ledger_path.to_owned(),
            op: "reopen",
            source: io::Error::other("the ledger file was replaced by another file while in use"),
        });
    }
    Ok(reopened)
}

/// Whether the file behind `file` is shorter than the layout (someone truncated it: touching the
/// missing part of the mapping would fault with `SIGBUS`). An `fstat` that fails says nothing.
pub fn is_truncated(file: &File) -> bool {
    file.metadata()
        .is_ok_and(|meta| meta.len() < FILE_SIZE as u64)
}

/// Gives a truncated ledger its size back and marks it truncated, without touching the mapping:
/// the lost pages come back zero-filled and with storage again (where the file system has room),
/// so no process that still maps the file faults on them any more, and the mark in place of the
/// magic number tells every member (and every newcomer) that the content is gone. Needs a
/// writable descriptor; best effort otherwise.
pub fn restore_size_and_mark(file: &File) {
    use std::os::unix::fs::FileExt;
    // Growing only: a concurrent restorer sets the same size; the content is lost either way.
    if is_truncated(file) {
        let _ = file.set_len(FILE_SIZE as u64);
    }
    let _ = backing::ensure_whole(file, FILE_SIZE as u64, true);
    let _ = file.write_at(&layout::TRUNCATED_MAGIC.to_le_bytes(), 0);
}

/// Makes the descriptor of `onto` refer to the file of `from` (`dup2`): the same descriptor
/// number, and so the same `File`, now stands for the other file.
pub fn take_over_descriptor(onto: &File, from: &File, path: &Path) -> Result<(), LedgerError> {
    use std::os::fd::AsRawFd;
    // SAFETY: both descriptors are open and owned by the `File`s borrowed here; dup2 closes the
    // old file of `onto` and makes its number refer to `from`'s open file description, so `onto`
    // still owns exactly one open descriptor.
    let done = unsafe { libc::dup2(from.as_raw_fd(), onto.as_raw_fd()) };
    if done < 0 {
        return Err(LedgerError::from_io(
            path,
            "dup2",
            0,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Device and inode of the file at `path` (not following a link), if there is one.
pub fn identity_at(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Checks the header of an open mapping (what a newcomer checks when it opens the file).
pub fn check_header(mapping: &Mapping, path: &Path) -> Result<(), LedgerError> {
    validate(mapping, path)
}
