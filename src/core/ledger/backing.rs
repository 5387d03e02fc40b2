//! Every page of the ledger file backed by its file system before the file is mapped.
//!
//! The file system gives a page of a shared file mapping its storage when the page is first
//! touched. If it has no room left at that moment (a full `/dev/shm`: Docker gives a container
//! 64 MiB, data loaders pass tensors through it, leaked segments pile up in it), the kernel kills
//! the process that touched the page with `SIGBUS`; on tmpfs a read does that as well as a
//! write. The guard lives inside other people's programs and may take no signal handler, so it
//! makes sure that cannot happen:
//!
//! - A new ledger is reserved whole with `fallocate(2)` before it is mapped and published; where
//!   the file system cannot reserve (`EOPNOTSUPP`), zeros are written over the whole file. Either
//!   way it fails with `ENOSPC` when there is no room, and the file is never published.
//! - An existing ledger is made whole before it is mapped: `fallocate(2)` over the whole file
//!   allocates whatever is missing (a file made by an older build, sparse) and changes nothing
//!   that exists, so it is safe while other members write to the file. On tmpfs, a file whose
//!   allocated pages are exactly its pages is known to be whole without it (one `fstatfs`).
//!   Where reserving is impossible (a read-only descriptor, a file system without `fallocate`),
//!   the file is accepted only if its allocated blocks cover it. Zeros are never written over a
//!   shared file: another member's update of the same word could be lost (glibc's emulation of
//!   `posix_fallocate` writes a zero byte over every block that reads as zero, racing with
//!   writers, which is why it is not used here).
//!
//! Unsafe code here: the `fallocate`, `fstatfs`, `statvfs` and `sysconf` calls, on descriptors
//! and buffers that live across each call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// `f_type` of tmpfs (and of `/dev/shm`) in `fstatfs`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Zeros written at a time where the file system cannot reserve.
const ZERO_CHUNK: usize = 64 * 1024;

/// Why a file could not be made whole.
#[derive(Debug)]
pub enum Unbacked {
    /// Reserving failed (`ENOSPC` when the file system is full).
    Failed(io::Error),
    /// Part of the file has no storage, and it cannot be reserved from here.
    Holes {
        /// bytes of the file without storage, at least
        missing: u64,
    },
}

/// Reserves storage for all `len` bytes of `file`, a new file nobody else has open (it grows to
/// `len` bytes if it is shorter).
pub fn reserve_new(file: &File, len: u64) -> io::Result<()> {
    match fallocate(file, len) {
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => write_zeros(file, len),
        other => other,
    }
}

/// Makes sure all `len` bytes of `file`, an existing file that other processes may have mapped,
/// have storage. `writable`: whether `file` was opened for writing (reserving needs it).
pub fn ensure_whole(file: &File, len: u64, writable: bool) -> Result<(), Unbacked> {
    let allocated = allocated_bytes(file).map_err(Unbacked::Failed)?;
    if is_tmpfs(file) && allocated == round_to_pages(len) {
        // tmpfs counts exactly the pages it holds for the file: all of them are there.
        return Ok(());
    }
    if writable {
        match fallocate(file, len) {
            Ok(()) => return Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(error) => return Err(Unbacked::Failed(error)),
        }
    }
    match len.saturating_sub(allocated) {
        0 => Ok(()),
        missing => Err(Unbacked::Holes { missing }),
    }
}

/// Bytes of storage the file system holds for `file`.
fn allocated_bytes(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.blocks().saturating_mul(512))
}

/// Bytes an unprivileged process may still use on the file system holding `path` (`statvfs`),
/// or `None` if it cannot be asked.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stats` a live `statvfs` the call fills.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    // The field types differ between targets (u32 or u64).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Some(blocks.saturating_mul(block_size))
}

/// `len` rounded up to whole pages.
fn round_to_pages(len: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as u64,
        _ => 4096,
    };
    len.div_ceil(page).saturating_mul(page)
}

fn is_tmpfs(file: &File) -> bool {
    // SAFETY: all-zero bytes are a valid `statfs` (plain integers).
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a live `statfs` the call fills.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) };
    // The field type differs between targets (i32 or i64).
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(stats.f_type);
    rc == 0 && f_type == TMPFS_MAGIC
}

/// `fallocate(2)` of bytes `0..len` (mode 0: allocate, keep what is there, grow to `len`).
/// Interrupted calls are retried; the call itself never emulates.
fn fallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: an open descriptor; the kernel checks the range.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes zeros over bytes `0..len` of a file nobody else has open.
fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let chunk = (len - offset).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..chunk], offset)?;
        offset += chunk as u64;
    }
    Ok(())
}
