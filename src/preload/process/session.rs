//! Attachment: the ledger joined lazily, what calls do when it cannot be, fork and exit.
//!
//! - The first guarded call of a process attaches: opens the ledger, checks the driver, joins.
//!   A failure is said once on stderr, then `VRAMGUARD_ON_ERROR` decides (pass through / refuse).
//! - The ledger failing an attached process later (a device it cannot register, a decision it
//!   cannot make) is said once per process per cause ([`ledger_failed`]): the user learns why
//!   the guard stepped aside and what to do, without a line for every allocation.
//! - A forked child is recognised by its pid (cached without a system call per call, see
//!   [`crate::pid`]): its first guarded call attaches it as itself, with empty tables (the
//!   parent's state is left untouched: its locks may be held by threads that do not exist in the
//!   child).
//! - At exit (`atexit`) the process leaves the ledger, which never blocks without a deadline.
//! - Attaching starts the process's watcher thread (`watcher`), which finds a damaged, removed
//!   or replaced ledger within a second and has it rebuilt; a forked child starts its own.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vramguard_core::ledger::{Cause, LedgerError};
use vramguard_core::settings::OnError;

use crate::config::config;
use crate::process::Process;

/// How a guarded call proceeds.
pub enum Session {
    /// Accounted against the ledger.
    Guarded(&'static Process),
    /// Passed to the driver untouched (disabled, or attach failed under `ON_ERROR=open`).
    PassThrough,
    /// Allocations refused (attach failed under `ON_ERROR=closed`).
    Refuse,
}

/// The attached process (leaked on purpose: it lives until exit, and a forked child must never
/// touch its parent's copy).
static PROCESS: AtomicPtr<Process> = AtomicPtr::new(std::ptr::null_mut());
/// The pid whose attach failed (0: none).
static FAILED_PID: AtomicI32 = AtomicI32::new(0);
/// The pid currently attaching (0: none); serialises attach without a lock that fork could strand.
static ATTACHING: AtomicI32 = AtomicI32::new(0);
static AT_EXIT_REGISTERED: AtomicBool = AtomicBool::new(false);

/// The attached process of this pid, if any.
fn attached(pid: i32) -> Option<&'static Process> {
    let process = PROCESS.load(Ordering::Acquire);
    // SAFETY: PROCESS is only ever set to a leaked Box (never freed), so the pointer is valid.
    let process = unsafe { process.as_ref() }?;
    (process.pid() == pid).then_some(process)
}

fn failure_session() -> Session {
    match config().on_error {
        OnError::Open => Session::PassThrough,
        OnError::Closed => Session::Refuse,
    }
}

/// What the guard does when attaching failed, as said after the reason.
fn failure_mode() -> &'static str {
    match config().on_error {
        OnError::Open => "VRAMGUARD_ON_ERROR=open: CUDA calls pass through unguarded",
        OnError::Closed => "VRAMGUARD_ON_ERROR=closed: allocations are refused",
    }
}

/// What the guard does with the calls the ledger fails an attached process on.
fn failure_mode_for_calls() -> &'static str {
    match config().on_error {
        OnError::Open => {
            "VRAMGUARD_ON_ERROR=open: such calls pass through unguarded (said once per process)"
        }
        OnError::Closed => {
            "VRAMGUARD_ON_ERROR=closed: such allocations are refused (said once per process)"
        }
    }
}

/// The causes of ledger failures this process has said: its pid in the upper half, one bit per
/// [`Cause`] in the lower half (a forked child, another pid, starts with none said).
static CAUSES_SAID: AtomicU64 = AtomicU64::new(0);

/// Whether this process has not said a ledger failure of `cause` yet; from now on it has.
fn first_time(cause: Cause) -> bool {
    let pid = u64::from(crate::pid::current() as u32);
    let bit = 1u64 << cause.index().min(31);
    let mut current = CAUSES_SAID.load(Ordering::Acquire);
    loop {
        let said = if current >> 32 == pid {
            current & u64::from(u32::MAX)
        } else {
            0
        };
        if said & bit != 0 {
            return false;
        }
        match CAUSES_SAID.compare_exchange_weak(
            current,
            (pid << 32) | said | bit,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// Says that `what` failed because of `error`, and what the guard does instead, unless this
/// process already said a failure of the same cause.
pub fn ledger_failed(what: &str, error: &LedgerError) {
    if first_time(error.cause()) {
        crate::log::error(&format!("{what}: {error}; {}", failure_mode_for_calls()));
    }
}

/// How the current call proceeds; attaches on first use.
#[inline]
pub fn session() -> Session {
    // The common case, a few loads: attached in this very process (not a forked child) and not
    // yet gone. Attaching happens only when enabled, after the settings were reported.
    let process = PROCESS.load(Ordering::Acquire);
    // SAFETY: PROCESS is only ever set to a leaked Box (never freed), so the pointer is valid.
    if let Some(process) = unsafe { process.as_ref() }
        && process.pid() == crate::pid::current()
        && !process.has_left()
    {
        return Session::Guarded(process);
    }
    first_session()
}

/// [`session`] when this process is not attached yet (or is a forked child, or has left).
#[cold]
#[inline(never)]
fn first_session() -> Session {
    crate::config::report_setting_errors();
    if config().disable {
        return Session::PassThrough;
    }
    let pid = crate::pid::current();
    if let Some(process) = attached(pid) {
        return if process.has_left() {
            Session::PassThrough
        } else {
            Session::Guarded(process)
        };
    }
    if FAILED_PID.load(Ordering::Acquire) == pid {
        return failure_session();
    }
    attach(pid)
}

fn attach(pid: i32) -> Session {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = ATTACHING.load(Ordering::Acquire);
        // Free, or left over by our parent before a fork: take it.
        if current != pid
            && ATTACHING
                .compare_exchange(current, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            break;
        }
        // Another thread of this process is attaching: wait for its outcome.
        if let Some(process) = attached(pid) {
            return Session::Guarded(process);
        }
        if FAILED_PID.load(Ordering::Acquire) == pid {
            return failure_session();
        }
        if Instant::now() > deadline {
            crate::log::error("attaching to the ledger takes too long; this call passes through");
            return Session::PassThrough;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let session = match attached(pid) {
        Some(process) => Session::Guarded(process),
        None => match Process::attach(pid, config()) {
            Ok(process) => {
                // A forked child may find its parent's contexts' handles in its caches.
                crate::driver::current::forget_contexts();
                let process: &'static Process = Box::leak(Box::new(process));
                PROCESS.store(std::ptr::from_ref(process).cast_mut(), Ordering::Release);
                register_exit_handler();
                crate::process::watcher::start(process);
                Session::Guarded(process)
            }
            Err(message) => {
                crate::log::line(&format!("{message}; {}", failure_mode()));
                FAILED_PID.store(pid, Ordering::Release);
                failure_session()
            }
        },
    };
    ATTACHING.store(0, Ordering::Release);
    session
}

extern "C" fn leave_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(process) = attached(crate::pid::current()) {
            process.leave();
        }
    });
}

fn register_exit_handler() {
    if !AT_EXIT_REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: leave_at_exit is an extern "C" fn with no arguments that never unwinds.
        unsafe { libc::atexit(leave_at_exit) };
    }
}
