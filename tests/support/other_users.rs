//! Playing other users in the tests: whether it can be done here (root, with `setpriv` of
//! util-linux) and a program run as another user through `setpriv`. Shared by tests that
//! include `support` (`mod.rs`), the command line's `support/cli.rs` or `ledger_support`;
//! included with `#[path = "support/other_users.rs"] mod other_users;`.
#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// Whether this test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether other users can be played here: root and `setpriv` installed. If not, records the
/// skip of `test` with `skip` (`root_reason` when not root) and returns false.
pub fn can_play_other_users(test: &str, root_reason: &str, skip: fn(&str, &str)) -> bool {
    if !is_root() {
        skip(test, root_reason);
        return false;
    }
    let found = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(test, "setpriv (util-linux) is not installed");
    }
    found
}

/// `program` run by user `uid` (and group `uid`) with the supplementary `groups` only, from
/// `/`: `setpriv ... -- program`, to which the caller adds the program's arguments.
pub fn as_user(program: impl AsRef<OsStr>, uid: u32, groups: &[u32]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command.arg("--").arg(program).current_dir("/");
    command
}
