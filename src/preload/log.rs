//! The guard's only voice: short lines on stderr, prefixed `vramguard: `, filtered by
//! `VRAMGUARD_LOG`. Never stdout. Written with one `write(2)` per line so lines from threads do
//! not interleave.
//!
//! The level is this module's own, set once the configuration is read ([`set_level`]); until
//! then it is `VRAMGUARD_LOG`'s default, `warn`. So every layer may log without reaching up to the
//! configuration.

use std::sync::atomic::{AtomicU8, Ordering};

use vramguard_core::settings::LogLevel;

/// The level, as a `LogLevel` discriminant.
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);

/// Sets the level (from `VRAMGUARD_LOG`).
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

#[inline]
fn enabled(level: LogLevel) -> bool {
    LEVEL.load(Ordering::Relaxed) >= level as u8
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
