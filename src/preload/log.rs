//! The guard's only voice: short lines on stderr, prefixed `vramguard: `, filtered by
//! `VRAMGUARD_LOG`. Never stdout. Written with one `write(2)` per line so lines from threads do
//! not interleave.

use vramguard_core::settings::LogLevel;

#[inline]
fn enabled(level: LogLevel) -> bool {
    crate::state::config().log >= level
}

/// Writes one line to stderr, unconditionally.
pub fn line(message: &str) {
    let text = format!("vramguard: {message}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: the pointer and length describe the live `rest` slice.
        let written = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if written <= 0 {
            break;
        }
        rest = &rest[written as usize..];
    }
}

/// A failure of the guard itself.
pub fn error(message: &str) {
    if enabled(LogLevel::Error) {
        line(message);
    }
}

/// Refusals, waits, configuration problems.
pub fn warn(message: &str) {
    if enabled(LogLevel::Warn) {
        line(message);
    }
}

/// Attach and device registration.
pub fn info(message: &str) {
    if enabled(LogLevel::Info) {
        line(message);
    }
}

/// Every accounted call.
pub fn debug(message: &str) {
    if enabled(LogLevel::Debug) {
        line(message);
    }
}

/// Every accounted call; the message is only built when debug lines are wanted.
#[inline]
pub fn debug_with(message: impl FnOnce() -> String) {
    if enabled(LogLevel::Debug) {
        line(&message());
    }
}
