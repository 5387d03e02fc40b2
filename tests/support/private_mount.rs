//! A file system of a test's own: a small tmpfs (or a ramfs) mounted in a private mount
//! namespace (`unshare --mount`), so that a test can make the ledger's file system small or fill
//! it up without a real mount and without touching the machine's. Commands run inside through
//! `nsenter`; the namespace lives as long as the [`PrivateMount`] (a holder process keeps it).
//! Included with `#[path = "support/private_mount.rs"] mod private_mount;` (or `"../support/..."`).
//!
//! As root (this machine, CI) `unshare --mount` works; elsewhere a user namespace is tried
//! (`--user --map-root-user`). When neither can be made the test panics saying why: such a
//! test must never pass without having run.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long mounting may take: only catches a hang. The hang guard's five minutes
/// (`support/hang_guard.rs`, which the tests including this file include already, each through
/// its own support module).
const MOUNT_DEADLINE: Duration = Duration::from_secs(300);

/// A file system mounted on a directory in a mount namespace of its own.
pub struct PrivateMount {
    holder: Child,
    /// The mount point (the same path inside and outside; only inside is it the new mount).
    pub dir: PathBuf,
    /// The namespace is inside a user namespace (not root): enter that too.
    in_user_namespace: bool,
}

impl PrivateMount {
    /// A tmpfs of `size` (`mount -o size=...`: `1m`, `8m`) on `dir` (created if missing).
    pub fn tmpfs(dir: &Path, size: &str) -> PrivateMount {
        PrivateMount::new(dir, "tmpfs", &format!("size={size},mode=1777"))
    }

    /// A ramfs on `dir`: a file system without `fallocate` (and without a size limit).
    pub fn ramfs(dir: &Path) -> PrivateMount {
        PrivateMount::new(dir, "ramfs", "mode=1777")
    }

    fn new(dir: &Path, fstype: &str, options: &str) -> PrivateMount {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let mut reasons = Vec::new();
        for in_user_namespace in [false, true] {
            match PrivateMount::start(dir, fstype, options, in_user_namespace) {
                Ok(mount) => return mount,
                Err(reason) => reasons.push(reason),
            }
        }
        panic!(
            "this test needs a private mount namespace with a {fstype} of its own, and this \
             machine cannot make one (run it as root, or allow unprivileged user namespaces): {}",
            reasons.join("; ")
        );
    }

    fn start(
        dir: &Path,
        fstype: &str,
        options: &str,
        in_user_namespace: bool,
    ) -> Result<PrivateMount, String> {
        let mut command = Command::new("unshare");
        if in_user_namespace {
            command.args(["--user", "--map-root-user"]);
        }
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
            .arg(r#"mount -t "$1" -o "$2" vramguard-test "$3"; echo mounted; exec cat"#)
            .args(["sh", fstype, options])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut holder = command
            .spawn()
            .map_err(|error| format!("cannot run unshare: {error}"))?;
        let stdout = holder.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let mounted = receiver
            .recv_timeout(MOUNT_DEADLINE)
            .is_ok_and(|line| line.trim() == "mounted");
        if mounted {
            return Ok(PrivateMount {
                holder,
                dir: dir.to_owned(),
                in_user_namespace,
            });
        }
        let _ = holder.kill();
        let _ = holder.wait();
        let mut error = String::new();
        if let Some(mut stderr) = holder.stderr.take() {
            let _ = stderr.read_to_string(&mut error);
        }
        let how = if in_user_namespace {
            "unshare --user --map-root-user --mount"
        } else {
            "unshare --mount"
        };
        Err(format!("{how}: {}", error.trim()))
    }

    /// `command` (program, arguments, environment, working directory) run inside the namespace.
    /// Standard streams are the caller's to set on the result.
    pub fn command(&self, command: &Command) -> Command {
        let mut args = vec![format!("--target={}", self.holder.id())];
        if self.in_user_namespace {
            args.extend(["--user".to_string(), "--preserve-credentials".to_string()]);
        }
        args.extend(["--mount".to_string(), "--".to_string()]);
        run_through("nsenter", &args, command)
    }

    /// Runs the shell `script` (`sh -ec`) inside, with the mount point as `$1`.
    pub fn shell(&self, script: &str) -> Output {
        let mut sh = Command::new("sh");
        sh.args(["-ec", script, "sh"]).arg(&self.dir);
        let output = self
            .command(&sh)
            .stdin(Stdio::null())
            .output()
            .expect("run a shell in the private mount namespace");
        assert!(
            output.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Fills the file system up: writes zeros to a file until no byte more fits.
    pub fn fill(&self) {
        self.shell(r#"cat /dev/zero > "$1/fill" 2>/dev/null || test -s "$1/fill""#);
        self.shell(r#"test "$(df -P "$1" | awk 'NR == 2 { print $4 }')" = 0"#);
    }

    /// Removes what [`PrivateMount::fill`] wrote.
    pub fn unfill(&self) {
        self.shell(r#"rm -f "$1/fill""#);
    }
}

impl Drop for PrivateMount {
    fn drop(&mut self) {
        // The holder is the namespace's last process once the commands run inside have exited:
        // with it, the namespace and its mount go.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `command` (program, arguments, environment, working directory) run through `wrapper` with
/// `wrapper_args` (`nsenter ... --`, `setpriv ... --`): what the wrapper execs is the command.
/// Standard streams are the caller's to set on the result.
pub fn run_through(wrapper: &str, wrapper_args: &[String], command: &Command) -> Command {
    let mut wrapped = Command::new(wrapper);
    wrapped
        .args(wrapper_args)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}
