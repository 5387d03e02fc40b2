//! Why the ledger could not be used, and why a request was refused.
//!
//! Every [`LedgerError`] names the file or directory involved and says what to do about it, since
//! the message usually ends up in front of a user who never heard of the ledger. Running out of
//! space, file descriptors or memory is told apart from a damaged file ([`LedgerError::from_io`]),
//! since each has its own remedy, and [`Cause`] groups the variants by remedy for the guard, which
//! says each cause once per process.
//!
//! Unsafe code here: one `getrlimit` call, into a local.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::directory;
use crate::units::format_size;

/// What the user can do when the ledger file itself is unusable.
const REMOVE_FIX: &str = "stop every guarded program and remove the file (it is recreated on the \
                          next start), or point VRAMGUARD_DIR at another directory";

/// What to do when the ledger's file system (often a container's `/dev/shm`) has no room.
pub const SPACE_FIX: &str = "make room there: in Docker give the container more shared memory \
                         (`docker run --shm-size=256m`; the default /dev/shm is 64 MiB), or \
                         remove what fills it (`df -h` and `ls -la` on the directory), or set \
                         VRAMGUARD_DIR to a directory with room, the same for every guarded program";

/// The ledger could not be opened, created or trusted.
#[derive(Debug)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger directory could not be created or is not a directory.
    Directory {
        /// the directory
        dir: PathBuf,
        /// what went wrong
        source: io::Error,
    },
    /// A system call on the ledger file failed.
    Io {
        /// the ledger file
        path: PathBuf,
        /// the operation that failed
        op: &'static str,
        /// the error
        source: io::Error,
    },
    /// The ledger's file system has no room for the pages of the ledger file (`ENOSPC`,
    /// `EDQUOT`): they cannot be reserved, so the file is not used (a page without storage
    /// kills the process that touches it).
    NoSpace {
        /// the ledger file
        path: PathBuf,
        /// the operation that failed
        op: &'static str,
        /// bytes the ledger needed
        needed: u64,
        /// bytes free on the file system when it failed, if known
        free: Option<u64>,
    },
    /// Part of the ledger file has no storage and it cannot be reserved from here (a read-only
    /// descriptor, or a file system that cannot reserve space): the file is not used.
    NotBacked {
        /// the ledger file
        path: PathBuf,
        /// bytes without storage, at least
        missing: u64,
    },
    /// This process (`EMFILE`) or the whole system (`ENFILE`) has no file descriptor left; the
    /// ledger itself is fine.
    Descriptors {
        /// the ledger file
        path: PathBuf,
        /// the operation that failed
        op: &'static str,
        /// the whole system is out of descriptors, not just this process
        system_wide: bool,
        /// this process's limit (`RLIMIT_NOFILE`, `ulimit -n`), if known
        limit: Option<u64>,
    },
    /// Out of memory or address space (`ENOMEM`: a memory limit of the container, `ulimit -v`);
    /// the ledger itself is fine.
    NoMemory {
        /// the ledger file
        path: PathBuf,
        /// the operation that failed
        op: &'static str,
    },
    /// The file (or directory) exists but this user may not open it for writing.
    PermissionDenied {
        /// the ledger file
        path: PathBuf,
    },
    /// The ledger exists but is not writable here; only reading is possible.
    ReadOnly {
        /// the ledger file
        path: PathBuf,
    },
    /// The ledger does not exist (and this call does not create it).
    Missing {
        /// the ledger file
        path: PathBuf,
    },
    /// The path is a symbolic link (never followed).
    Symlink {
        /// the ledger file
        path: PathBuf,
    },
    /// The path is not a regular file.
    NotRegularFile {
        /// the ledger file
        path: PathBuf,
        /// what it is instead
        kind: &'static str,
    },
    /// The file has the wrong size for this layout.
    WrongSize {
        /// the ledger file
        path: PathBuf,
        /// its size
        actual: u64,
        /// the size of this layout
        expected: u64,
    },
    /// The file does not start with the ledger's magic number.
    BadMagic {
        /// the ledger file
        path: PathBuf,
    },
    /// The file is a ledger of another layout version.
    LayoutVersion {
        /// the ledger file
        path: PathBuf,
        /// the version in the file
        found: u32,
        /// the version this build uses
        expected: u32,
    },
    /// The file was truncated while processes had it mapped: the member that noticed gave it its
    /// size back (so nobody faults on it) and marked it; its content is lost.
    Truncated {
        /// the ledger file
        path: PathBuf,
    },
    /// A header field disagrees with this layout.
    BadHeader {
        /// the ledger file
        path: PathBuf,
        /// the field
        field: &'static str,
        /// its value
        found: u64,
        /// the expected value
        expected: u64,
    },
    /// Every process slot is taken by a live process.
    SlotsFull {
        /// the ledger file
        path: PathBuf,
    },
    /// Every device record is taken.
    DevicesFull {
        /// the ledger file
        path: PathBuf,
    },
    /// A lock of the ledger could not be taken before its deadline (its holder is alive but not
    /// progressing, for example stopped with SIGSTOP).
    LockTimeout {
        /// the ledger file
        path: PathBuf,
        /// which lock
        what: &'static str,
        /// how long we tried
        waited: Duration,
    },
    /// This process's membership is no longer valid (its slot changed hands).
    SlotLost {
        /// the ledger file
        path: PathBuf,
    },
    /// A device or slot handle does not belong to this ledger.
    UnknownHandle {
        /// the ledger file
        path: PathBuf,
    },
    /// `VRAMGUARD_DIR` is a relative path (it would name another directory in every working
    /// directory).
    RelativeDirectory {
        /// the directory as given
        dir: PathBuf,
    },
    /// The ledger directory's parent does not exist (only the ledger directory itself is ever
    /// created).
    NoParent {
        /// the ledger directory
        dir: PathBuf,
        /// its missing parent
        parent: PathBuf,
    },
    /// The ledger directory is not one this user can trust (see [`DirectoryProblem`]).
    UnsafeDirectory {
        /// the ledger directory
        dir: PathBuf,
        /// what is wrong with it
        problem: DirectoryProblem,
    },
    /// The ledger directory exists but this user may not enter it: it belongs to a group this
    /// process is not in (the hardened directory of `vramguard host-setup`).
    Outsider {
        /// the ledger directory
        dir: PathBuf,
        /// its owner
        uid: u32,
        /// its group
        gid: u32,
        /// its mode
        mode: u32,
    },
    /// The ledger file is unusable (`problem`) and belongs to another user, whom nobody but
    /// root can make remove it: planted, or made by a broken program.
    Foreign {
        /// the file's owner
        uid: u32,
        /// why it is unusable
        problem: Box<LedgerError>,
    },
    /// This handle is moving its members to a rebuilt ledger; the operation is made again there
    /// (callers of the public operations never see this).
    Rebuilding {
        /// the ledger file
        path: PathBuf,
    },
}

/// Why a ledger directory is refused.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DirectoryProblem {
    /// The path is a symbolic link (never followed).
    Symlink {
        /// the link's owner
        uid: u32,
        /// where it points, if readable
        target: Option<PathBuf>,
    },
    /// It belongs to a user who is neither root nor the caller.
    ForeignOwner {
        /// its owner
        uid: u32,
        /// its mode
        mode: u32,
    },
    /// Group or others may write it, and it lacks the sticky bit: they could remove or replace
    /// the ledger.
    WritableWithoutSticky {
        /// its owner
        uid: u32,
        /// its mode
        mode: u32,
    },
    /// It is missing, and its parent is not safe to create it in (owned by another user, or
    /// writable by others without the sticky bit: the new directory could be swapped).
    UnsafeParent {
        /// the parent
        parent: PathBuf,
        /// the parent's owner
        uid: u32,
        /// the parent's mode
        mode: u32,
    },
    /// The path has no last component (`/`, `..`).
    NoName,
}

/// The kinds of trouble a [`LedgerError`] can be, each with its own remedy. A guarded process
/// says each kind once (`LedgerError::cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum Cause {
    /// The ledger's file system is full.
    Space,
    /// Out of file descriptors.
    Descriptors,
    /// Out of memory or address space.
    Memory,
    /// Not allowed to use the file or its directory.
    Permission,
    /// The file or directory is missing, of the wrong kind, or a symbolic link.
    Setup,
    /// The file's content cannot be trusted (wrong size, magic or header; not backed).
    Damaged,
    /// The file was truncated while in use.
    Truncated,
    /// The file is of another layout version.
    Layout,
    /// A lock stayed busy past its deadline.
    Busy,
    /// Every process slot or device record is taken.
    Full,
    /// This process's membership or handles are no longer valid.
    Membership,
    /// Any other failing system call.
    System,
}

impl Cause {
    /// A number below 32 of its own, for sets of causes kept in one word.
    pub fn index(self) -> u32 {
        self as u32
    }
}

impl LedgerError {
    /// The error for `op` on the ledger file `path` failing with `source`: running out of
    /// space, descriptors or memory gets its own variant (and its own remedy), anything else is
    /// [`LedgerError::Io`]. `needed`: the bytes the operation wanted from the file system.
    pub fn from_io(path: &Path, op: &'static str, needed: u64, source: io::Error) -> LedgerError {
        let path_buf = path.to_owned();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => LedgerError::NoSpace {
                free: path.parent().and_then(super::backing::free_space),
                path: path_buf,
                op,
                needed,
            },
            Some(code @ (libc::EMFILE | libc::ENFILE)) => LedgerError::Descriptors {
                path: path_buf,
                op,
                system_wide: code == libc::ENFILE,
                limit: descriptor_limit(),
            },
            Some(libc::ENOMEM) => LedgerError::NoMemory { path: path_buf, op },
            _ => LedgerError::Io {
                path: path_buf,
                op,
                source,
            },
        }
    }

    /// Which kind of trouble this is.
    pub fn cause(&self) -> Cause {
        match self {
            Self::NoSpace { .. } => Cause::Space,
            Self::Descriptors { .. } => Cause::Descriptors,
            Self::NoMemory { .. } => Cause::Memory,
            Self::PermissionDenied { .. } | Self::ReadOnly { .. } => Cause::Permission,
            Self::Directory { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Cause::Permission
            }
            Self::Outsider { .. } => Cause::Permission,
            Self::Directory { .. }
            | Self::RelativeDirectory { .. }
            | Self::NoParent { .. }
            | Self::UnsafeDirectory { .. }
            | Self::Foreign { .. }
            | Self::Missing { .. }
            | Self::Symlink { .. }
            | Self::NotRegularFile { .. } => Cause::Setup,
            Self::WrongSize { .. }
            | Self::BadMagic { .. }
            | Self::BadHeader { .. }
            | Self::NotBacked { .. } => Cause::Damaged,
            Self::Truncated { .. } => Cause::Truncated,
            Self::LayoutVersion { .. } => Cause::Layout,
            Self::LockTimeout { .. } => Cause::Busy,
            Self::SlotsFull { .. } | Self::DevicesFull { .. } => Cause::Full,
            Self::SlotLost { .. } | Self::UnknownHandle { .. } | Self::Rebuilding { .. } => {
                Cause::Membership
            }
            Self::Io { .. } => Cause::System,
        }
    }
}

/// This process's soft limit of open files, if it has one.
fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live `rlimit` the call fills.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Directory { dir, source }
                if source.kind() == io::ErrorKind::PermissionDenied && dir.is_dir() =>
            {
                write!(
                    f,
                    "ledger directory {}: {source}; make it writable for every GPU user (`sudo \
                     chmod 1777 {}`) or set VRAMGUARD_DIR to a directory of your own (budgets are \
                     then not shared with others)",
                    dir.display(),
                    dir.display()
                )
            }
            Self::Directory { dir, source } => write!(
                f,
                "ledger directory {}: {source}; create it with `mkdir -p -m 1777 {}` or set \
                 VRAMGUARD_DIR to a directory every GPU user can write",
                dir.display(),
                dir.display()
            ),
            Self::Io { path, op, source } => {
                write!(
                    f,
                    "ledger {}: {op} failed: {source}; {REMOVE_FIX}",
                    path.display()
                )
            }
            Self::NoSpace {
                path,
                op,
                needed,
                free,
            } => {
                let free = free.map_or_else(|| "unknown".to_string(), format_size);
                write!(
                    f,
                    "ledger {}: {op} failed: no room for it on its file system ({} needed, \
                     {free} free); {SPACE_FIX}",
                    path.display(),
                    format_size(*needed)
                )
            }
            Self::NotBacked { path, missing } => write!(
                f,
                "ledger {}: {} of it have no storage on its file system and cannot be reserved \
                 from here (read-only, or a file system that cannot reserve space), and touching \
                 them could kill the program; {REMOVE_FIX}",
                path.display(),
                format_size(*missing)
            ),
            Self::Descriptors {
                path,
                op,
                system_wide: false,
                limit,
            } => {
                let limit = limit.map_or_else(String::new, |n| format!(" of {n}"));
                write!(
                    f,
                    "ledger {}: {op} failed: this process has used all its file descriptors (its \
                     limit{limit}, `ulimit -n`); the ledger is fine: raise the limit before \
                     starting the program (`ulimit -n 65536`, in Docker `--ulimit nofile=65536`)",
                    path.display()
                )
            }
            Self::Descriptors {
                path,
                op,
                system_wide: true,
                ..
            } => write!(
                f,
                "ledger {}: {op} failed: the system's table of open files is full; the ledger is \
                 fine: close programs or raise the system's limit (`sysctl fs.file-max`)",
                path.display()
            ),
            Self::NoMemory { path, op } => write!(
                f,
                "ledger {}: {op} failed: out of memory or address space; the ledger is fine: \
                 raise the program's memory limit (the container's, or `ulimit -v`) or free memory",
                path.display()
            ),
            Self::PermissionDenied { path } => write!(
                f,
                "ledger {}: permission denied; its owner (or root) can run `chmod 0666 {}`, or set \
                 VRAMGUARD_DIR to a directory of your own (budgets are then not shared with others)",
                path.display(),
                path.display()
            ),
            Self::ReadOnly { path } => write!(
                f,
                "ledger {}: opened read-only, so this process cannot take part; `chmod 0666 {}` \
                 (by its owner) lets it join",
                path.display(),
                path.display()
            ),
            Self::Missing { path } => write!(
                f,
                "ledger {} does not exist: no guarded program has run with this VRAMGUARD_DIR yet",
                path.display()
            ),
            Self::Symlink { path } => write!(
                f,
                "ledger {} is a symbolic link, which is never followed; remove it (`rm {}`) and \
                 let vramguard create the file, or set VRAMGUARD_DIR to the link's target directory",
                path.display(),
                path.display()
            ),
            Self::NotRegularFile { path, kind } => write!(
                f,
                "ledger {} is a {kind}, not a regular file; remove it and let vramguard create the \
                 file, or set VRAMGUARD_DIR to another directory",
                path.display()
            ),
            Self::WrongSize {
                path,
                actual,
                expected,
            } => write!(
                f,
                "ledger {} has {actual} bytes instead of {expected} (truncated, damaged or of \
                 another vramguard version); {REMOVE_FIX}",
                path.display()
            ),
            Self::BadMagic { path } => write!(
                f,
                "ledger {} is not a vramguard ledger (wrong magic number); {REMOVE_FIX}",
                path.display()
            ),
            Self::Truncated { path } => write!(
                f,
                "ledger {} was truncated while in use (by a user with write access to it) and \
                 its content is lost; processes that had it open no longer use it and follow \
                 VRAMGUARD_ON_ERROR until they restart; {REMOVE_FIX}",
                path.display()
            ),
            Self::LayoutVersion {
                path,
                found,
                expected,
            } if found > expected => write!(
                f,
                "ledger {} was made by a newer vramguard (layout version {found}, this one knows \
                 {expected}); upgrade this program's vramguard so that every guarded program runs \
                 the same version",
                path.display()
            ),
            Self::LayoutVersion {
                path,
                found,
                expected,
            } => write!(
                f,
                "ledger {} has layout version {found}, this vramguard uses {expected}; run the same \
                 vramguard version everywhere, or {REMOVE_FIX}",
                path.display()
            ),
            Self::BadHeader {
                path,
                field,
                found,
                expected,
            } => write!(
                f,
                "ledger {}: header field {field} is {found}, expected {expected} (damaged file); \
                 {REMOVE_FIX}",
                path.display()
            ),
            Self::SlotsFull { path } => write!(
                f,
                "ledger {}: all {} process slots are taken by live processes; wait for some to exit",
                path.display(),
                super::MAX_PROCESSES
            ),
            Self::DevicesFull { path } => write!(
                f,
                "ledger {}: all {} device records are taken; {REMOVE_FIX}",
                path.display(),
                super::MAX_DEVICES
            ),
            Self::LockTimeout { path, what, waited } => write!(
                f,
                "ledger {}: the {what} lock stayed busy for {waited:?}: a live process holds it \
                 without progressing (stopped or traced?); resume or kill it (`vramguard status` \
                 lists the members)",
                path.display()
            ),
            Self::SlotLost { path } => write!(
                f,
                "ledger {}: this process's slot was taken over (its liveness lock was lost); \
                 restart the program",
                path.display()
            ),
            Self::UnknownHandle { path } => write!(
                f,
                "ledger {}: a device or slot handle that does not belong to this ledger was used",
                path.display()
            ),
            Self::RelativeDirectory { dir } => write!(
                f,
                "ledger directory {:?} is a relative path, which would name another directory in \
                 every working directory; set VRAMGUARD_DIR to an absolute path (the default is \
                 /dev/shm/vramguard)",
                dir.display().to_string()
            ),
            Self::NoParent { dir, parent } => write!(
                f,
                "ledger directory {}: its parent {} does not exist, and vramguard creates nothing \
                 but the ledger directory itself; create the parent (`sudo mkdir -p {}`), then the \
                 directory (`sudo vramguard host-setup --dir {}`), or set VRAMGUARD_DIR to a \
                 directory whose parent exists",
                dir.display(),
                parent.display(),
                parent.display(),
                dir.display()
            ),
            Self::UnsafeDirectory { dir, problem } => write_unsafe_directory(f, dir, problem),
            Self::Outsider {
                dir,
                uid,
                gid,
                mode,
            } => write_outsider(f, dir, *uid, *gid, *mode),
            Self::Foreign { uid, problem } => {
                let (path, what) = match &**problem {
                    Self::Symlink { path } => (path, "a symbolic link".to_string()),
                    Self::NotRegularFile { path, kind } => (path, format!("a {kind}")),
                    Self::WrongSize { path, actual, .. } => {
                        (path, format!("a file of {actual} bytes, not a ledger"))
                    }
                    Self::BadMagic { path } => (path, "not a vramguard ledger".to_string()),
                    Self::BadHeader { path, .. } => {
                        (path, "a ledger with a damaged header".to_string())
                    }
                    other => return write!(f, "{other}"),
                };
                write!(
                    f,
                    "ledger {} is {what}, and it belongs to {}, not to you or root, so you cannot \
                     remove it: never used, and the guard cannot work in this directory until an \
                     administrator removes it (`sudo rm {}`); `sudo vramguard host-setup` does \
                     that and makes a ledger directory for one group, where nobody else can put \
                     files",
                    path.display(),
                    directory::user_name(*uid),
                    path.display()
                )
            }
            Self::Rebuilding { path } => write!(
                f,
                "ledger {}: this process is moving to a rebuilt ledger; try again",
                path.display()
            ),
        }
    }
}

/// The message of [`LedgerError::UnsafeDirectory`]: what is wrong, and the fix that applies.
fn write_unsafe_directory(
    f: &mut fmt::Formatter<'_>,
    dir: &Path,
    problem: &DirectoryProblem,
) -> fmt::Result {
    let shown = dir.display();
    let setup = format!("`sudo vramguard host-setup --dir {shown}` (root's, for one group)");
    match problem {
        DirectoryProblem::Symlink { uid, target } => write!(
            f,
            "ledger directory {shown} is a symbolic link (made by {}{}), which is never followed: \
             whoever made it could point every guarded program at a directory of their choosing; \
             remove it (`sudo rm {shown}`) and make the directory with {setup}, or set \
             VRAMGUARD_DIR to the real directory",
            directory::user_name(*uid),
            target
                .as_ref()
                .map_or_else(String::new, |t| format!(", to {}", t.display()))
        ),
        DirectoryProblem::ForeignOwner { uid, mode } => write!(
            f,
            "ledger directory {shown} belongs to {} (mode {mode:04o}), neither root nor you: its \
             owner could remove or replace the ledger at any time; make it root's with {setup}, \
             or set VRAMGUARD_DIR to a directory of your own (budgets are then not shared with \
             others)",
            directory::user_name(*uid)
        ),
        DirectoryProblem::WritableWithoutSticky { uid: _, mode } => write!(
            f,
            "ledger directory {shown} has mode {mode:04o}: writable by {} without the sticky bit, \
             so anyone who may write it could remove or replace the ledger; its owner can run \
             `chmod +t {shown}` (or `chmod 0700` for a private one), or root can run {setup}",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ),
        DirectoryProblem::UnsafeParent { parent, uid, mode } => write!(
            f,
            "ledger directory {shown} does not exist, and vramguard does not create it in {} \
             (owned by {}, mode {mode:04o}): another user could swap it before it is used; \
             create it beforehand ({setup}) or set VRAMGUARD_DIR to a directory in a safe place \
             such as /dev/shm",
            parent.display(),
            directory::user_name(*uid)
        ),
        DirectoryProblem::NoName => write!(
            f,
            "ledger directory {shown} has no name of its own; set VRAMGUARD_DIR to a directory \
             such as /dev/shm/vramguard"
        ),
    }
}

/// The message of [`LedgerError::Outsider`]: whose directory it is and how to be let in.
fn write_outsider(
    f: &mut fmt::Formatter<'_>,
    dir: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> fmt::Result {
    let me = directory::user_name(directory::effective_uid());
    let group = directory::group_name(gid);
    let shown = dir.display();
    if mode & 0o070 == 0 || directory::in_group(gid) {
        return write!(
            f,
            "ledger directory {shown} belongs to {} (group {group}, mode {mode:04o}) and you \
             ({me}) may not enter it, so this program cannot use the machine's ledger; an \
             administrator can make one that the GPU's users share (`sudo vramguard host-setup \
             --dir {shown}`, for one group), or set VRAMGUARD_DIR to a directory of your own \
             (budgets are then not shared with others)",
            directory::user_name(uid)
        );
    }
    if directory::listed_in_group(gid) {
        return write!(
            f,
            "ledger directory {shown} is for the members of group {group} (mode {mode:04o}); you \
             ({me}) were added to {group} after this session started: log in again (or run \
             `newgrp {group}`)"
        );
    }
    write!(
        f,
        "ledger directory {shown} is for the members of group {group} only (mode {mode:04o}), \
         and you ({me}) are not in it, so this program cannot use the machine's ledger; ask an \
         administrator to add you (`sudo usermod -aG {group} {me}`, then log in again)"
    )
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Directory { source, .. } | Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a reservation (or claim) was not granted.
#[derive(Debug)]
pub enum Refusal {
    /// The request is larger than the device's budget: it can never fit on this card at all.
    /// Refused at once, under any policy.
    NeverFits {
        /// bytes asked for
        requested: u64,
        /// the device's budget
        budget: u64,
    },
    /// The request would take the member past its per-process limit (`VRAMGUARD_LIMIT`): only
    /// its own frees could make room. Refused at once, under any policy.
    OverLimit {
        /// bytes asked for (for a claim: the whole claim)
        requested: u64,
        /// what the member holds on the device (held and in flight)
        held: u64,
        /// the per-process limit
        limit: u64,
    },
    /// Deny policy: the request does not fit now (or others are queued ahead of it).
    NoRoom {
        /// bytes asked for
        requested: u64,
        /// bytes that were free under the budget
        available: u64,
    },
    /// Wait policy: the deadline passed before room appeared.
    TimedOut {
        /// bytes asked for
        requested: u64,
        /// how long the request waited
        waited: Duration,
    },
    /// Every process holding memory on the device was waiting, and this was the latest waiter.
    Deadlock {
        /// bytes asked for
        requested: u64,
    },
    /// The ledger could not decide (lock deadline passed, damaged file, lost membership).
    Ledger(LedgerError),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeverFits { requested, budget } => write!(
                f,
                "{requested} bytes can never fit on this device (budget {budget} bytes)"
            ),
            Self::OverLimit {
                requested,
                held: _,
                limit,
            } if requested > limit => write!(
                f,
                "{requested} bytes can never fit within the per-process limit of {limit} bytes"
            ),
            Self::OverLimit {
                requested,
                held,
                limit,
            } => write!(
                f,
                "the process reached its per-process limit: it holds {held} of its {limit} bytes \
                 and asks {requested} more"
            ),
            Self::NoRoom {
                requested,
                available,
            } => {
                write!(
                    f,
                    "{requested} bytes do not fit now ({available} bytes available)"
                )
            }
            Self::TimedOut { requested, waited } => {
                write!(
                    f,
                    "waited {waited:?} for {requested} bytes without room appearing"
                )
            }
            Self::Deadlock { requested } => write!(
                f,
                "{requested} bytes refused: every process holding memory on the device is waiting"
            ),
            Self::Ledger(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Ledger(error) => Some(error),
            _ => None,
        }
    }
}

impl From<LedgerError> for Refusal {
    fn from(error: LedgerError) -> Self {
        Self::Ledger(error)
    }
}
