//! Liveness through locks the kernel holds for us: open-file-description (OFD) byte locks.
//!
//! A member holds a write lock on one byte of the ledger file (past its end) for as long as it
//! lives. The kernel drops the lock when the last descriptor of that open file description is
//! closed, which happens when the process dies however it dies. Unlike `/proc/<pid>` checks this
//! works across PID namespaces (containers sharing the directory) and cannot be fooled by PID
//! reuse. The lock belongs to the open file description, so a forked child that inherits the
//! descriptor keeps it alive too, exactly as the driver keeps a forked child's parent memory.
//!
//! Also here: who this process is (pid namespace, clock), for display.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{SystemTime, UNIX_EPOCH};

fn byte_lock(kind: libc::c_short, offset: u64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = offset.min(i64::MAX as u64) as libc::off_t;
    lock.l_len = 1;
    lock.l_pid = 0;
    lock
}

fn fcntl_lock(fd: BorrowedFd<'_>, command: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the duration of the call and `lock` points to a
    // valid, writable `flock`, which is what the OFD lock commands read and (GETLK) write.
    let result = unsafe { libc::fcntl(fd.as_raw_fd(), command, lock as *mut libc::flock) };
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Tries to take the write lock on byte `offset` without blocking. `Ok(false)`: another open
/// file description holds it.
pub fn try_lock(fd: BorrowedFd<'_>, offset: u64) -> io::Result<bool> {
    let mut lock = byte_lock(libc::F_WRLCK as libc::c_short, offset);
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut lock) {
        Ok(()) => Ok(true),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EACCES)
            ) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Drops this open file description's lock on byte `offset`.
pub fn unlock(fd: BorrowedFd<'_>, offset: u64) {
    let mut lock = byte_lock(libc::F_UNLCK as libc::c_short, offset);
    // Failure leaves the lock to be dropped when the descriptor closes, which follows soon.
    let _ = fcntl_lock(fd, libc::F_OFD_SETLK, &mut lock);
}

/// Whether an open file description other than `fd`'s holds a lock on byte `offset`.
///
/// Asked through a descriptor that itself holds no locks, the answer covers every holder,
/// including other descriptors of this very process. An error counts as "held": liveness
/// errs on the side of never taking a live process's bytes.
pub fn is_locked(fd: BorrowedFd<'_>, offset: u64) -> bool {
    let mut lock = byte_lock(libc::F_WRLCK as libc::c_short, offset);
    match fcntl_lock(fd, libc::F_OFD_GETLK, &mut lock) {
        Ok(()) => lock.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => true,
    }
}

/// This process's id.
pub fn current_pid() -> u32 {
    std::process::id()
}

/// Inode of this process's pid namespace, or 0 when `/proc` is not there.
pub fn pid_namespace_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Wall-clock time in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
