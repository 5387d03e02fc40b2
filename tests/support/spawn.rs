//! Starting a test's child process: stdin closed, stdout and stderr piped. Shared by `support`
//! (`mod.rs`) and the command line's `support/cli.rs`, which are included by different tests.

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
