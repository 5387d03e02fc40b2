//! The ledger directory, found, created and checked through descriptors, never by path.
//!
//! `/dev/shm` is writable by every user and `fs.protected_symlinks` may be off, so a name in it
//! can be a symbolic link, another user's directory or file, or be swapped between two calls that
//! take a path. Here the directory is opened once with `O_DIRECTORY | O_NOFOLLOW` relative to a
//! descriptor of its parent, and what that descriptor refers to is checked with `fstat`:
//!
//! - it must belong to root or to the caller (anyone else could replace what is in it);
//! - it must not be writable by group or others without the sticky bit (anyone who may write it
//!   could remove or rename the ledger, or put another file in its place);
//! - its mode is set through the descriptor (`fchmod`), never through the path.
//!
//! Nothing but the ledger directory itself is ever created, and only in a parent that belongs to
//! root or the caller and that others cannot write without the sticky bit (so nobody can swap the
//! new directory before it is opened). Files inside are opened, created, linked and removed
//! relative to the directory's descriptor (`openat`, `linkat`, `unlinkat`) with `O_NOFOLLOW`.
//!
//! New files are as open as the directory lets them be reached: read and write for the owner,
//! for the group when the group may enter the directory, for others when others may. A directory
//! of `vramguard host-setup` (root, one group, mode 3770) thus gets files 0660 of that group, the
//! open directory (mode 1777) files 0666.
//!
//! Unsafe code here: `openat`, `mkdirat`, `fstat`, `fstatat`, `fchmod`, `fchown`, `linkat`,
//! `unlinkat`, `getgroups`, each on descriptors this module owns and NUL-terminated names.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{DirectoryProblem, LedgerError};

/// Mode of a ledger directory that root creates: every user may join (open mode).
pub const OPEN_DIR_MODE: u32 = 0o1777;
/// Mode of a ledger directory that another user creates: nobody else would trust a directory
/// that user owns, so nobody else may put anything in it either.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the directory `vramguard host-setup` makes: root's, for one group, sticky (members
/// cannot remove each other's files), set-group-ID (new files get the directory's group).
pub const GROUP_DIR_MODE: u32 = 0o3770;

/// An open, checked ledger directory.
#[derive(Debug)]
pub struct Directory {
    fd: OwnedFd,
    path: PathBuf,
    /// Mode for new files.
    file_mode: u32,
    /// Group for new files, when the directory is shared with its group.
    group: Option<u32>,
}

/// What `fstat` says about a directory or file.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    /// owner
    pub uid: u32,
    /// group
    pub gid: u32,
    /// permission bits, sticky and set-ID bits included
    pub mode: u32,
    /// the `S_IFMT` bits
    pub kind: u32,
}

impl Owner {
    fn of(stat: &libc::stat) -> Owner {
        Owner {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
            kind: stat.st_mode & libc::S_IFMT,
        }
    }
    /// Whether root or the caller owns it.
    pub fn trusted(&self) -> bool {
        self.uid == 0 || self.uid == effective_uid()
    }
}

/// The caller's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the calling process has `gid` as its effective or a supplementary group.
pub fn in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions and cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    let mut groups = [0 as libc::gid_t; 256];
    // SAFETY: `groups` has room for the 256 entries the call is told it may write.
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    usize::try_from(count).is_ok_and(|count| groups[..count.min(groups.len())].contains(&gid))
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor of the caller; `stat` is a live struct the call fills.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, a link not followed.
fn lstat_at(dirfd: RawFd, name: &OsStr) -> io::Result<libc::stat> {
    let name = c_name(name)?;
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dirfd` is an open directory descriptor (or AT_FDCWD), `name` NUL-terminated,
    // `stat` a live struct the call fills.
    let rc = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

fn open_at(dirfd: RawFd, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    // SAFETY: `dirfd` is an open directory descriptor (or AT_FDCWD), `name` NUL-terminated; the
    // call creates a new descriptor or fails.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOCTTY,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor of the caller.
    if unsafe { libc::fchmod(fd, mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchown(fd, uid, gid)`; `None` leaves that id as it is.
pub(crate) fn fchown(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let keep = u32::MAX; // (uid_t)-1: leave unchanged
    // SAFETY: `fd` is an open descriptor of the caller.
    if unsafe { libc::fchown(fd, uid.unwrap_or(keep), gid.unwrap_or(keep)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The ledger directory `dir` split into its parent and its own name. Refuses a relative path
/// (it would name another directory for every working directory) and one without a last name.
fn split(dir: &Path) -> Result<(&Path, &OsStr), LedgerError> {
    if !dir.is_absolute() {
        return Err(LedgerError::RelativeDirectory {
            dir: dir.to_owned(),
        });
    }
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if !name.as_bytes().contains(&b'/') => Ok((parent, name)),
        _ => Err(LedgerError::UnsafeDirectory {
            dir: dir.to_owned(),
            problem: DirectoryProblem::NoName,
        }),
    }
}

/// Whether a descriptor error is the system running out of something (its own remedy).
fn exhausted(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

impl Directory {
    /// Opens the ledger directory `dir` (with `create`, first creating it, and nothing else,
    /// when it is missing) and checks it.
    pub fn open(dir: &Path, create: bool) -> Result<Directory, LedgerError> {
        let mode = if effective_uid() == 0 {
            OPEN_DIR_MODE
        } else {
            PRIVATE_DIR_MODE
        };
        Self::open_with(dir, create.then_some(mode), true)
    }

    /// Creates the ledger directory `dir` of `vramguard host-setup` (mode 3770, the caller's; the
    /// caller then gives it root and the group), or opens it if it exists meanwhile, unchecked.
    pub fn create_for_group(dir: &Path) -> Result<Directory, LedgerError> {
        Self::open_with(dir, Some(GROUP_DIR_MODE), false)
    }

    /// Opens `dir` without checking who owns it or who may write it (never through a link),
    /// for `vramguard host-setup` to take it over.
    pub fn open_to_take_over(dir: &Path) -> Result<Directory, LedgerError> {
        Self::open_with(dir, None, false)
    }

    /// Opens `dir`; with `create`, a missing one is first made with that mode; with `check`,
    /// refuses a directory others could change (see the module's documentation).
    fn open_with(dir: &Path, create: Option<u32>, check: bool) -> Result<Directory, LedgerError> {
        let (parent_path, name) = split(dir)?;
        let ledger_file = dir.join(super::layout::FILE_NAME);
        let system = |op: &'static str| {
            let ledger_file = ledger_file.clone();
            move |source: io::Error| LedgerError::from_io(&ledger_file, op, 0, source)
        };
        // The parent is found by path: the system's own links (`/dev/shm` -> `/run/shm`) are
        // followed there, and only there.
        let parent = match open_at(
            libc::AT_FDCWD,
            parent_path.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) {
            Ok(parent) => parent,
            Err(error) if exhausted(&error) => return Err(system("open the directory")(error)),
            // Nothing to open and nothing to be made: no ledger yet.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) && create.is_none() => {
                return Err(LedgerError::Missing { path: ledger_file });
            }
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                return Err(LedgerError::NoParent {
                    dir: dir.to_owned(),
                    parent: parent_path.to_owned(),
                });
            }
            Err(source) => {
                return Err(LedgerError::Directory {
                    dir: dir.to_owned(),
                    source,
                });
            }
        };
        let mut created = false;
        let fd = loop {
            match open_at(
                parent.as_raw_fd(),
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            ) {
                Ok(fd) => break fd,
                Err(error) if exhausted(&error) => {
                    return Err(system("open the directory")(error));
                }
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) && !created => {
                    let Some(mode) = create else {
                        return Err(Self::classify(&parent, dir, name, error));
                    };
                    Self::make(&parent, parent_path, dir, name, mode)?;
                    created = true;
                }
                Err(error) => return Err(Self::classify(&parent, dir, name, error)),
            }
        };
        let stat = fstat(fd.as_raw_fd()).map_err(system("stat the directory"))?;
        let mut owner = Owner::of(&stat);
        // Only a directory this call made gets its mode set (the umask trimmed it), and only
        // through the descriptor: whatever the path names by now is not touched.
        if let Some(mode) = create.filter(|_| created && owner.uid == effective_uid())
            && owner.mode != mode
        {
            fchmod(fd.as_raw_fd(), mode).map_err(|source| LedgerError::Directory {
                dir: dir.to_owned(),
                source,
            })?;
            owner.mode = mode;
        }
        if check {
            check_directory(dir, owner)?;
        }
        let group_enters = owner.mode & 0o010 != 0;
        let others_enter = owner.mode & 0o001 != 0;
        let file_mode =
            0o600 | if group_enters { 0o060 } else { 0 } | if others_enter { 0o006 } else { 0 };
        Ok(Directory {
            fd,
            path: dir.to_owned(),
            file_mode,
            group: (group_enters && !others_enter).then_some(owner.gid),
        })
    }

    /// Creates the ledger directory `name` in `parent`, which must be safe to create in.
    fn make(
        parent: &OwnedFd,
        parent_path: &Path,
        dir: &Path,
        name: &OsStr,
        mode: u32,
    ) -> Result<(), LedgerError> {
        let stat = fstat(parent.as_raw_fd()).map_err(|source| LedgerError::Directory {
            dir: dir.to_owned(),
            source,
        })?;
        let parent_owner = Owner::of(&stat);
        let writable_by_others = parent_owner.mode & 0o022 != 0;
        let sticky = parent_owner.mode & libc::S_ISVTX != 0;
        if !parent_owner.trusted() || (writable_by_others && !sticky) {
            return Err(LedgerError::UnsafeDirectory {
                dir: dir.to_owned(),
                problem: DirectoryProblem::UnsafeParent {
                    parent: parent_path.to_owned(),
                    uid: parent_owner.uid,
                    mode: parent_owner.mode,
                },
            });
        }
        let c = c_name(name).map_err(|source| LedgerError::Directory {
            dir: dir.to_owned(),
            source,
        })?;
        // SAFETY: `parent` is an open directory descriptor and `c` NUL-terminated.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) } != 0 {
            let error = io::Error::last_os_error();
            // Made meanwhile by someone else: it is opened and checked like any other.
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(if exhausted(&error) {
                    LedgerError::from_io(
                        &dir.join(super::layout::FILE_NAME),
                        "create the directory",
                        0,
                        error,
                    )
                } else {
                    LedgerError::Directory {
                        dir: dir.to_owned(),
                        source: error,
                    }
                });
            }
        }
        Ok(())
    }

    /// The error for a directory that could not be opened.
    fn classify(parent: &OwnedFd, dir: &Path, name: &OsStr, error: io::Error) -> LedgerError {
        let entry = lstat_at(parent.as_raw_fd(), name).map(|stat| Owner::of(&stat));
        match (error.raw_os_error(), entry) {
            (Some(libc::ENOENT), _) => LedgerError::Missing {
                path: dir.join(super::layout::FILE_NAME),
            },
            (_, Ok(entry)) if entry.kind == libc::S_IFLNK => LedgerError::UnsafeDirectory {
                dir: dir.to_owned(),
                problem: DirectoryProblem::Symlink {
                    uid: entry.uid,
                    target: std::fs::read_link(dir).ok(),
                },
            },
            (Some(libc::ENOTDIR), _) => LedgerError::Directory {
                dir: dir.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            },
            (Some(libc::EACCES), Ok(entry)) => LedgerError::Outsider {
                dir: dir.to_owned(),
                uid: entry.uid,
                gid: entry.gid,
                mode: entry.mode,
            },
            _ => LedgerError::Directory {
                dir: dir.to_owned(),
                source: error,
            },
        }
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the entry `name` (never following a link, never blocking on a FIFO, never creating).
    pub fn open_file(&self, name: &str, writable: bool) -> io::Result<File> {
        let access = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let fd = open_at(
            self.fd.as_raw_fd(),
            OsStr::new(name),
            access | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )?;
        Ok(File::from(fd))
    }

    /// Creates the new file `name` (`O_EXCL`, never following a link) with the directory's mode
    /// and group for files, both set through the descriptor.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let fd = open_at(
            self.fd.as_raw_fd(),
            OsStr::new(name),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            self.file_mode,
        )?;
        let result = fchown(fd.as_raw_fd(), None, self.group)
            .or_else(|error| {
                // Not a member of the directory's group: the set-group-ID directory gave the
                // file its group anyway, or the file stays the caller's own group.
                if error.raw_os_error() == Some(libc::EPERM) {
                    Ok(())
                } else {
                    Err(error)
                }
            })
            .and_then(|()| fchmod(fd.as_raw_fd(), self.file_mode));
        if let Err(error) = result {
            let _ = self.remove(name);
            return Err(error);
        }
        Ok(File::from(fd))
    }

    /// Links the entry `from` under the name `to` (fails if `to` exists).
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(OsStr::new(from))?, c_name(OsStr::new(to))?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names NUL-terminated, relative to this directory's open descriptor; flags
        // 0: a link is never followed.
        if unsafe { libc::linkat(fd, from.as_ptr(), fd, to.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Renames the entry `from` to `to`, replacing what is at `to` (atomically: a reader sees
    /// the old file or the new one, never none).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(OsStr::new(from))?, c_name(OsStr::new(to))?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names NUL-terminated, relative to this directory's open descriptor;
        // renameat never follows a link at either name.
        if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Device and inode of the entry `name` itself (a link is not followed).
    pub fn identity(&self, name: &str) -> io::Result<(u64, u64)> {
        lstat_at(self.fd.as_raw_fd(), OsStr::new(name)).map(|stat| (stat.st_dev, stat.st_ino))
    }

    /// Removes the entry `name` (a file or a link, never what a link points to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let name = c_name(OsStr::new(name))?;
        // SAFETY: `name` NUL-terminated, relative to this directory's open descriptor.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Owner, group and mode of the entry `name` itself (a link is not followed).
    pub fn entry(&self, name: &str) -> io::Result<Owner> {
        lstat_at(self.fd.as_raw_fd(), OsStr::new(name)).map(|stat| Owner::of(&stat))
    }

    /// Owner, group and mode of the directory itself.
    pub fn owner(&self) -> io::Result<Owner> {
        fstat(self.fd.as_raw_fd()).map(|stat| Owner::of(&stat))
    }

    /// Sets owner, group and mode of the directory itself (through its descriptor).
    pub fn set_owner_and_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        fchown(self.fd.as_raw_fd(), Some(uid), Some(gid))?;
        fchmod(self.fd.as_raw_fd(), mode)
    }
}

/// Refuses a directory that someone other than root and the caller could change under them.
fn check_directory(dir: &Path, owner: Owner) -> Result<(), LedgerError> {
    if !owner.trusted() {
        return Err(LedgerError::UnsafeDirectory {
            dir: dir.to_owned(),
            problem: DirectoryProblem::ForeignOwner {
                uid: owner.uid,
                mode: owner.mode,
            },
        });
    }
    if owner.mode & 0o022 != 0 && owner.mode & libc::S_ISVTX == 0 {
        return Err(LedgerError::UnsafeDirectory {
            dir: dir.to_owned(),
            problem: DirectoryProblem::WritableWithoutSticky {
                uid: owner.uid,
                mode: owner.mode,
            },
        });
    }
    Ok(())
}

/// Sets the mode of an open file through its descriptor.
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    fchmod(file.as_raw_fd(), mode)
}

/// The name of user `uid` from `/etc/passwd` (no name service modules are loaded: this runs
/// inside other people's programs), else the number.
pub fn user_name(uid: u32) -> String {
    name_from("/etc/passwd", uid).unwrap_or_else(|| uid.to_string())
}

/// The group named `name` in `/etc/group`, or the number `name` is.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The name of group `gid` from `/etc/group`, else the number.
pub fn group_name(gid: u32) -> String {
    name_from("/etc/group", gid).unwrap_or_else(|| gid.to_string())
}

/// The first field of the line of a colon-separated database whose third field is `id`.
fn name_from(database: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(database).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.parse().ok()?;
        (found == id && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Whether `/etc/group` lists the caller's user as a member of `gid` (a session started before
/// the user was added does not have the group yet).
pub fn listed_in_group(gid: u32) -> bool {
    let user = user_name(effective_uid());
    let Ok(text) = std::fs::read_to_string("/etc/group") else {
        return false;
    };
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        fields.len() >= 4
            && fields[2].parse() == Ok(gid)
            && fields[3].split(',').any(|member| member == user)
    })
}
