//! `vramguard run` and its POSIX twin `scripts/vramguard-run`: the command's exit status comes
//! through, the library goes first in `LD_PRELOAD` exactly once, the options arrive as variables.

#[path = "support/cli.rs"]
mod cli_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli_support::*;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

/// A shell command that prints the guard's environment, one `NAME=value` a line.
const SHOW_ENV: &str = "echo \"LD_PRELOAD=${LD_PRELOAD-}\"; env | grep '^VRAMGUARD_' | sort";

/// The two ways to run a command under the guard.
#[derive(Clone, Copy, Debug)]
enum Runner {
    Cli,
    Script,
}

impl Runner {
    fn command(self) -> Command {
        let mut command = match self {
            Runner::Cli => {
                let mut c = Command::new(vramguard());
                c.arg("run");
                c
            }
            Runner::Script => Command::new(repo().join("scripts/vramguard-run")),
        };
        command
            .env_remove("LD_PRELOAD")
            .env_remove("VRAMGUARD_LIBRARY");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VRAMGUARD_") {
                command.env_remove(&key);
            }
        }
        if let Runner::Script = self {
            // The script lives in scripts/, not next to the library: name the library.
            command.env("VRAMGUARD_LIBRARY", library());
        }
        command
    }
}

fn env_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn preload_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("LD_PRELOAD="))
        .expect("LD_PRELOAD line")
        .to_string()
}

#[test]
fn the_commands_exit_status_comes_through() {
    for runner in [Runner::Cli, Runner::Script] {
        for code in [0, 1, 7, 42] {
            let out = run_with_deadline(
                runner
                    .command()
                    .args(["--", "sh", "-c", &format!("exit {code}")]),
                DEADLINE,
            );
            assert_eq!(
                out.status.code(),
                Some(code),
                "{runner:?}: {}",
                stderr(&out)
            );
        }
        // The command replaces the runner: a signal that ends it is the caller's to see.
        let out = run_with_deadline(
            runner.command().args(["--", "sh", "-c", "kill -TERM $$"]),
            DEADLINE,
        );
        assert_eq!(
            out.status.signal(),
            Some(15),
            "{runner:?}: {:?}",
            out.status
        );
        let out = run_with_deadline(
            runner.command().args(["--", "/nonexistent/program"]),
            DEADLINE,
        );
        assert_eq!(out.status.code(), Some(127), "{runner:?}: {}", stderr(&out));
    }
    let not_executable = TempDir::new("noexec");
    let file = not_executable.join("script");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let out = run_with_deadline(Runner::Cli.command().arg("--").arg(&file), DEADLINE);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[test]
fn the_command_keeps_the_runners_pid() {
    for runner in [Runner::Cli, Runner::Script] {
        let (pid, out) = run_with_deadline_and_pid(
            runner.command().args(["--", "sh", "-c", "echo $$"]),
            DEADLINE,
        );
        assert_eq!(
            stdout(&out).trim(),
            pid.to_string(),
            "{runner:?}: the command was not exec'd"
        );
    }
}

#[test]
fn the_library_goes_first_and_only_once() {
    let lib = library();
    let lib_text = lib.to_string_lossy().to_string();
    for runner in [Runner::Cli, Runner::Script] {
        let alone = run_with_deadline(
            runner.command().args(["--", "sh", "-c", SHOW_ENV]),
            DEADLINE,
        );
        assert!(alone.status.success(), "{runner:?}: {}", stderr(&alone));
        assert_eq!(preload_of(&stdout(&alone)), lib_text, "{runner:?}");

        // The user's own preloads stay, in order; another copy of the guard is dropped.
        let user = format!("/opt/a/liba.so /opt/b/libb.so:{lib_text}:/old/place/libvramguard.so");
        let composed = run_with_deadline(
            runner
                .command()
                .env("LD_PRELOAD", &user)
                .args(["--", "sh", "-c", SHOW_ENV]),
            DEADLINE,
        );
        assert!(
            composed.status.success(),
            "{runner:?}: {}",
            stderr(&composed)
        );
        assert_eq!(
            preload_of(&stdout(&composed)),
            format!("{lib_text}:/opt/a/liba.so:/opt/b/libb.so"),
            "{runner:?}"
        );

        // A nested run does not add a second copy.
        let mut nested = runner.command();
        nested.arg("--");
        match runner {
            Runner::Cli => nested.arg(vramguard()).arg("run"),
            Runner::Script => nested.arg(repo().join("scripts/vramguard-run")),
        };
        nested.args(["--", "sh", "-c", SHOW_ENV]);
        let out = run_with_deadline(&mut nested, DEADLINE);
        assert_eq!(
            preload_of(&stdout(&out)),
            lib_text,
            "{runner:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn options_arrive_as_variables() {
    for runner in [Runner::Cli, Runner::Script] {
        let out = run_with_deadline(
            runner.command().args([
                "--policy",
                "wait",
                "--timeout",
                "30s",
                "--expect",
                "3GiB",
                "--limit=3.5GiB",
                "--reserve",
                "5%",
                "--",
                "sh",
                "-c",
                SHOW_ENV,
            ]),
            DEADLINE,
        );
        assert!(out.status.success(), "{runner:?}: {}", stderr(&out));
        let lines = env_lines(&stdout(&out));
        for expected in [
            "VRAMGUARD_EXPECT=3GiB",
            "VRAMGUARD_LIMIT=3.5GiB",
            "VRAMGUARD_POLICY=wait",
            "VRAMGUARD_RESERVE=5%",
            "VRAMGUARD_WAIT_TIMEOUT=30s",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{runner:?}: {expected} missing in {lines:?}"
            );
        }
        // Without options, nothing is set: the library's defaults apply.
        let out = run_with_deadline(
            runner.command().args(["--", "sh", "-c", SHOW_ENV]),
            DEADLINE,
        );
        assert!(!stdout(&out).contains("VRAMGUARD_POLICY"), "{runner:?}");
        // Arguments after `--` are the command's, even when they look like options.
        let out = run_with_deadline(
            runner.command().args(["--", "echo", "--policy", "-x"]),
            DEADLINE,
        );
        assert_eq!(stdout(&out).trim(), "--policy -x", "{runner:?}");
    }
}

#[test]
fn bad_options_and_a_missing_library_are_refused_before_running_anything() {
    let marker = TempDir::new("marker");
    let touched = marker.join("ran");
    let touch = format!("touch {}", touched.display());
    let out = run_with_deadline(
        Runner::Cli
            .command()
            .args(["--expect", "lots", "--", "sh", "-c", &touch]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("lots"));
    let out = run_with_deadline(
        Runner::Script
            .command()
            .args(["--policy", "maybe", "--", "sh", "-c", &touch]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for runner in [Runner::Cli, Runner::Script] {
        let out = run_with_deadline(
            runner
                .command()
                .env("VRAMGUARD_LIBRARY", "/nonexistent/libvramguard.so")
                .args(["--", "sh", "-c", &touch]),
            DEADLINE,
        );
        assert_eq!(out.status.code(), Some(125), "{runner:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("/nonexistent/libvramguard.so"),
            "{runner:?}: {}",
            stderr(&out)
        );
    }
    assert!(!touched.exists(), "a refused run still ran the command");
}

/// Copies `program` into `dir/bin` and the library into `dir/lib/vramguard`: the install layout.
fn install_layout(dir: &Path, program: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("lib/vramguard")).unwrap();
    let installed = dir.join("bin").join(program.file_name().unwrap());
    spawn::copy_program(program, &installed);
    std::fs::copy(library(), dir.join("lib/vramguard/libvramguard.so")).unwrap();
    installed
}

#[test]
fn both_find_the_library_in_the_install_layout_without_configuration() {
    let prefix = TempDir::new("layout");
    for program in [vramguard(), repo().join("scripts/vramguard-run")] {
        let installed = install_layout(prefix.path(), &program);
        let mut command = Command::new(&installed);
        if program == vramguard() {
            command.arg("run");
        }
        command
            .env_remove("VRAMGUARD_LIBRARY")
            .env_remove("LD_PRELOAD")
            .args(["--", "sh", "-c", SHOW_ENV]);
        let out = run_with_deadline(&mut command, DEADLINE);
        assert!(
            out.status.success(),
            "{}: {}",
            installed.display(),
            stderr(&out)
        );
        let expected = prefix
            .path()
            .canonicalize()
            .unwrap()
            .join("lib/vramguard/libvramguard.so");
        assert_eq!(
            preload_of(&stdout(&out)),
            expected.to_string_lossy(),
            "{}",
            installed.display()
        );
    }
}
