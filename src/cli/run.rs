//! `vramguard run`: starts a command with the guard preloaded and the options as variables.
//! A library that cannot be loaded here (`preload_check`) is left out with one warning: the
//! command starts unguarded rather than not at all.
//!
//! The command replaces vramguard (`exec`): it keeps vramguard's pid (the one `status` shows),
//! receives the terminal's signals directly, and its exit status, including death by a signal
//! (which a shell reports as 128+N), is exactly what the caller sees.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::GuardOptions;
use super::library;
use super::preload_check;

/// vramguard could not set the guard up.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// The command exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Runs `command` under the guard; returns only when it could not be started.
pub fn run(guard: &GuardOptions, command: &[OsString]) -> i32 {
    let library = match library::locate() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("vramguard run: {e}");
            return EXIT_SETUP_FAILED;
        }
    };
    let Some((program, args)) = command.split_first() else {
        eprintln!("vramguard run: no command given (vramguard run [OPTIONS] -- CMD [ARGS...])");
        return EXIT_SETUP_FAILED;
    };
    let mut child = Command::new(program);
    child.args(args);
    match preload_check::check(&library) {
        Ok(()) => {
            let existing = std::env::var("LD_PRELOAD").ok();
            child.env(
                "LD_PRELOAD",
                library::compose_preload(&library, existing.as_deref()),
            );
        }
        Err(reason) => eprintln!(
            "{}",
            preload_check::warning(
                "vramguard run",
                &library,
                &reason,
                &program.to_string_lossy()
            )
        ),
    }
    for (name, value) in guard.variables() {
        child.env(name, value);
    }
    let error = child.exec();
    eprintln!(
        "vramguard run: cannot run {}: {error}",
        program.to_string_lossy()
    );
    match error.kind() {
        std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXECUTE,
    }
}
