//! Starting a test's child process: stdin closed, stdout and stderr piped; and copying a program
//! that a test then starts. Shared by `support` (`mod.rs`), the command line's `support/cli.rs` and
//! the ledger tests' `ledger_support`, which are included by different tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `command` with stdin closed and stdout and stderr piped; panics if it cannot start.
pub fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// Copies the program `from` to `to`, ready to be started at once. The copy is written by `cp`,
/// in a process of its own: written by this process, its open descriptor would be inherited by
/// any child another test thread forks meanwhile, and starting the copy would fail with "Text file
/// busy" until that child had started its own program.
pub fn copy_program(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cp: {e}"));
    assert!(
        status.success(),
        "cp {} {} failed: {status}",
        from.display(),
        to.display()
    );
}
