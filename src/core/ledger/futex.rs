//! Sleeping and waking across processes on a 32-bit word of the shared mapping.
//!
//! The operations are the shared (not `FUTEX_PRIVATE_FLAG`) kind: the kernel keys them by the
//! file page, so processes that map the ledger at different addresses meet on the same word.
//! Every wait has a timeout; a spurious or missed wake-up costs at most that timeout, because
//! callers re-check the condition in a loop.
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` still holds `expected`, at most `timeout` (woken early by [`wake_all`]
/// or a signal). Returns at once if the value already changed.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned 32-bit atomic that lives for the whole call (it is in
    // the ledger mapping, which outlives the borrow); FUTEX_WAIT only reads it, and `timeout` is
    // a valid relative timespec. The unused arguments are ignored by FUTEX_WAIT.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every process sleeping on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE does not access memory
    // beyond using its address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
