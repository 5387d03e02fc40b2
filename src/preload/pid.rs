//! This process's pid without a system call per guarded call, and a fork noticed for certain.
//!
//! Every guarded call must know whether it runs in the process that attached to the ledger or in
//! a forked child (which must attach as itself). Asking `getpid` each time costs a system call
//! (about 200 ns with today's kernel mitigations), so the pid is cached in a page of its own that
//! is mapped with `MADV_WIPEONFORK`: the kernel gives every child created without `CLONE_VM` a
//! zero-filled copy of that page, whatever created it (glibc's `fork`, `_Fork`, a raw `clone` or
//! `syscall(SYS_fork)`). The child's first read finds 0, asks `getpid` and caches its own pid.
//! A `pthread_atfork` child handler would miss the last three; a signal handler is out of the
//! question. Threads (`CLONE_VM`) share the page, as they share the pid.
//!
//! Where the kernel cannot wipe a page (Linux before 4.14, or `madvise` refused by a sandbox),
//! nothing is cached and every call asks `getpid`, as before: never a stale pid.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

/// The page holding the cached pid (null: not made yet).
static PAGE: AtomicPtr<AtomicI32> = AtomicPtr::new(ptr::null_mut());
/// The kernel cannot make a wipe-on-fork page here: never cache.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// The pid of the calling process.
#[inline]
pub fn current() -> i32 {
    let page = PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: PAGE only ever holds a page mapped by `cell` and never unmapped.
        let cached = unsafe { &*page }.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
    }
    not_cached()
}

/// [`current`] on first use, in a fresh child, or where nothing can be cached.
#[cold]
#[inline(never)]
fn not_cached() -> i32 {
    let pid = getpid();
    if let Some(cell) = cell() {
        cell.store(pid, Ordering::Relaxed);
    }
    pid
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The wipe-on-fork cell, made on first use; `None` where the kernel cannot wipe pages.
fn cell() -> Option<&'static AtomicI32> {
    let page = PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: PAGE only ever holds a page mapped below and never unmapped; an AtomicI32 at
        // its start is aligned and in bounds, and fork keeps the mapping (zero-filled).
        return Some(unsafe { &*page });
    }
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let Some(made) = wipe_on_fork_page() else {
        UNAVAILABLE.store(true, Ordering::Relaxed);
        return None;
    };
    match PAGE.compare_exchange(ptr::null_mut(), made, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: as above, for the page just published.
        Ok(_) => Some(unsafe { &*made }),
        Err(winner) => {
            // Another thread published its page first: use that one, return ours.
            // SAFETY: `made` is the page mapped by wipe_on_fork_page, used by nobody else.
            unsafe { libc::munmap(made.cast(), page_size()) };
            // SAFETY: `winner` is the published page (as above).
            Some(unsafe { &*winner })
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// A private anonymous page the kernel zero-fills in every child; `None` if it cannot be made.
fn wipe_on_fork_page() -> Option<*mut AtomicI32> {
    let size = page_size();
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `page` is the mapping of `size` bytes just made.
    if unsafe { libc::madvise(page, size, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: as above; nobody else has seen it.
        unsafe { libc::munmap(page, size) };
        return None;
    }
    Some(page.cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_pid_is_this_process_and_a_child_sees_its_own() {
        assert_eq!(current(), std::process::id() as i32);
        assert!(
            cell().is_some(),
            "this kernel cannot wipe a page on fork (Linux 4.14 or later can)"
        );
        assert_eq!(current(), std::process::id() as i32, "cached");
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // A raw fork system call: no pthread_atfork handler runs, only the kernel's wipe.
        // SAFETY: the child only reads memory, writes to a pipe and exits with _exit.
        let child = unsafe { libc::syscall(libc::SYS_fork) };
        if child == 0 {
            let seen = current();
            // SAFETY: the child's own getpid and pipe descriptor; _exit never returns.
            unsafe {
                let right = i32::from(seen == libc::getpid());
                libc::write(pipe[1], (&raw const right).cast(), 4);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork failed");
        let mut right = 0i32;
        // SAFETY: reads 4 bytes into `right`; waits for the child just forked.
        unsafe {
            assert_eq!(libc::read(pipe[0], (&raw mut right).cast(), 4), 4);
            libc::waitpid(child as i32, ptr::null_mut(), 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        assert_eq!(right, 1, "the child saw its parent's pid");
        assert_eq!(
            current(),
            std::process::id() as i32,
            "the parent keeps its own"
        );
    }
}
