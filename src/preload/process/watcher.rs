//! The watcher: a thread per attached process that checks the ledger a few times a second
//! ([`vramguard_core::ledger::Ledger::check`]), so that damage, a stuck lock, a forged total, a
//! replaced or removed file are found and put right within a second even while the program
//! makes no CUDA call (a program holding its model while it computes).
//!
//! It takes none of the application's locks and none of the guard's tables (the ledger handle
//! keeps what the process holds itself), writes only to stderr (each repair said once, in
//! words), catches every panic, and ends when the process leaves the ledger. A forked child
//! does not inherit the thread: its own attach starts one for it.

use std::time::Duration;

use crate::process::Process;

/// Time between two checks.
const INTERVAL: Duration = Duration::from_millis(200);

/// Starts the watcher of `process` (if the thread cannot be made, the checks that operations
/// make on their own slow paths remain).
pub fn start(process: &'static Process) {
    let spawned = std::thread::Builder::new()
        .name("vramguard-watch".into())
        .spawn(move || watch(process));
    if spawned.is_err() {
        crate::log::warn(
            "cannot start the ledger watcher thread; damage is found on slow paths only",
        );
    }
}

fn watch(process: &'static Process) {
    loop {
        std::thread::sleep(INTERVAL);
        if process.has_left() || process.pid() != crate::pid::current() {
            return;
        }
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process.ledger.check()));
        let Ok(checkup) = checked else { return };
        for finding in checkup.findings {
            crate::log::error(&format!(
                "ledger {}: {}; {}",
                process.ledger.path().display(),
                finding.found,
                finding.done
            ));
        }
    }
}
