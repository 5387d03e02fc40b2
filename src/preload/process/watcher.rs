//! The watcher: a thread per attached process that checks the ledger a few times a second
//! ([`vramguard_core::ledger::Ledger::check`]), so that damage, a stuck lock, a forged total, a
//! replaced or removed file are found and put right within a second even while the program
//! makes no CUDA call (a program holding its model while it computes).
//!
//! It takes none of the application's locks and none of the guard's tables (the ledger handle
//! keeps what the process holds itself), writes only to stderr (each finding said once, in
//! words), catches every panic, and ends when the process leaves the ledger. A forked child
//! does not inherit the thread: its own attach starts one for it.

use std::collections::HashSet;
use std::time::Duration;

use crate::process::Process;

/// Time between two checks.
const INTERVAL: Duration = Duration::from_millis(200);
/// Time before the next check after a repair that could not be made (a full file system, say):
/// every try closes the process's ledger operations for a moment.
const AFTER_FAILURE: Duration = Duration::from_secs(2);
/// At most this many distinct findings are remembered as said.
const SAID_AT_MOST: usize = 256;

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
    let mut said: HashSet<String> = HashSet::new();
    let mut pause = INTERVAL;
    loop {
        std::thread::sleep(pause);
        if process.has_left() || process.pid() != crate::pid::current() {
            return;
        }
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process.ledger.check()));
        let Ok(checkup) = checked else { return };
        pause = if checkup.findings.iter().all(|f| f.repaired) {
            INTERVAL
        } else {
            AFTER_FAILURE
        };
        for finding in checkup.findings {
            let line = format!(
                "ledger {}: {}; {}",
                process.ledger.path().display(),
                finding.found,
                finding.done
            );
            // A repair is said each time it is made; a failure once.
            if finding.repaired || (said.len() < SAID_AT_MOST && said.insert(line.clone())) {
                crate::log::error(&line);
            }
        }
    }
}
