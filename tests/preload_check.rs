//! A library that cannot be loaded never stops a program from starting: every tool that puts
//! `libvramguard.so` into `LD_PRELOAD` (`vramguard run`, `scripts/vramguard-run`, the container
//! entrypoint, the systemd drop-in's start check, the virtualenv hook) first checks that it can
//! be loaded here; given one the loader refuses (it needs `GLIBC_2.99`, built by
//! `support/unloadable.rs`), the program starts unguarded and one warning says why. Given the
//! real library, the same tools still preload it.

#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/unloadable.rs"]
mod unloadable;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cli_support::*;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

/// Prints the program's `LD_PRELOAD` and says it started.
const SHOW: &str = "echo \"started LD_PRELOAD=${LD_PRELOAD-}\"";

fn bad_library() -> PathBuf {
    unloadable::unloadable_library(release_dir().parent().unwrap(), &repo())
}

/// A command with none of the caller's guard settings, the library named by VRAMGUARD_LIBRARY.
fn command(program: impl AsRef<std::ffi::OsStr>, library: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VRAMGUARD_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("LD_PRELOAD")
        .env("VRAMGUARD_LIBRARY", library);
    command
}

/// The lines of `stderr` that say the library cannot be loaded.
fn warnings(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains("cannot be loaded here"))
        .map(str::to_owned)
        .collect()
}

/// Checks that the program started with `LD_PRELOAD` as `expected`, after one warning naming
/// the loader's reason (for the bad library) or none (for the real one).
fn assert_started(what: &str, out: &Output, expected_preload: &str, bad: bool) {
    assert!(out.status.success(), "{what}: {out:?}");
    assert_eq!(
        stdout(out).trim(),
        format!("started LD_PRELOAD={expected_preload}"),
        "{what}: {out:?}"
    );
    let warnings = warnings(out);
    if bad {
        assert_eq!(warnings.len(), 1, "{what}: {}", stderr(out));
        assert!(
            warnings[0].contains("GLIBC_2.99") && warnings[0].contains("unguarded"),
            "{what}: {}",
            warnings[0]
        );
    } else {
        assert!(warnings.is_empty(), "{what}: {}", stderr(out));
    }
}

#[test]
fn run_and_the_scripts_start_the_program_unguarded_when_the_library_cannot_load() {
    let bad = bad_library();
    let good = library();
    let the_image_s = "/nonexistent/libimage-own.so";
    for (library, is_bad) in [(&bad, true), (&good, false)] {
        let runners: Vec<(&str, Command)> = vec![
            ("vramguard run", {
                let mut c = command(vramguard(), library);
                c.args(["run", "--", "sh", "-c", SHOW]);
                c
            }),
            ("vramguard-run", {
                let mut c = command(repo().join("scripts/vramguard-run"), library);
                c.args(["sh", "-c", SHOW]);
                c
            }),
            ("docker-entrypoint.sh", {
                let mut c = command("sh", library);
                c.arg(repo().join("scripts/docker-entrypoint.sh"))
                    .args(["sh", "-c", SHOW]);
                c
            }),
        ];
        for (what, mut runner) in runners {
            let out = run_with_deadline(&mut runner, DEADLINE);
            let expected = if is_bad {
                String::new()
            } else {
                good.to_string_lossy().into_owned()
            };
            assert_started(what, &out, &expected, is_bad);
            // The image's own LD_PRELOAD is kept either way (after the guard when it loads).
            runner.env("LD_PRELOAD", the_image_s);
            let out = run_with_deadline(&mut runner, DEADLINE);
            let expected = if is_bad {
                the_image_s.to_string()
            } else {
                format!("{}:{the_image_s}", good.display())
            };
            assert_started(what, &out, &expected, is_bad);
        }
    }
}

#[test]
fn preload_check_says_whether_a_library_loads() {
    let out = run_with_deadline(
        command(vramguard(), &library()).arg("preload-check"),
        DEADLINE,
    );
    assert!(out.status.success(), "{out:?}");
    let bad = bad_library();
    let out = run_with_deadline(
        command(vramguard(), &library())
            .arg("preload-check")
            .arg(&bad),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(warnings(&out).len(), 1, "{out:?}");
}

/// Splits a systemd command line the way systemd does for the drop-in's `ExecStartPre=`: words,
/// double-quoted words with `\` escapes, `%%` and `$$` for `%` and `$`, `%n` for the unit.
fn systemd_words(line: &str, unit: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
        }
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted => break,
                ' ' if !quoted => break,
                '\\' if quoted => word.extend(chars.next()),
                '%' => match chars.next() {
                    Some('n') => word.push_str(unit),
                    Some(other) => word.push(other),
                    None => {}
                },
                '$' => word.extend(chars.next()),
                c => word.push(c),
            }
        }
        words.push(word);
    }
}

#[test]
fn the_systemd_start_check_preloads_only_a_library_that_loads() {
    let unit = "vgserve.service";
    let dir = TempDir::new("start-check");
    for (library, is_bad) in [(bad_library(), true), (library(), false)] {
        let printed = run_with_deadline(
            command(vramguard(), &library).args(["env", "--systemd", "vgserve"]),
            DEADLINE,
        );
        assert!(printed.status.success(), "{printed:?}");
        let text = stdout(&printed);
        // Nothing in the drop-in preloads the library unchecked.
        assert!(!text.contains("Environment=\"LD_PRELOAD"), "{text}");
        let line = |key: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {text}"))
                .to_string()
        };
        let start_check = line("ExecStartPre=");
        let start_check = start_check
            .strip_prefix("-+")
            .expect("the check runs as root and its failure is ignored");
        let env_file = line("EnvironmentFile=");
        let env_file = env_file.strip_prefix('-').unwrap().replace("%n", unit);
        let runtime_dir = line("RuntimeDirectory=").replace("%n", unit);
        assert!(
            env_file.starts_with(&format!("/run/{runtime_dir}/")),
            "the file lies in a directory systemd empties at every start: {text}"
        );

        // Run the check as systemd would, with the file under a directory of the test's own and
        // the unit's own LD_PRELOAD in its environment.
        let words = systemd_words(start_check, unit);
        let private_env_file = dir.join(format!("{is_bad}/env"));
        let words: Vec<String> = words
            .into_iter()
            .map(|w| {
                if w == env_file {
                    private_env_file.to_string_lossy().into_owned()
                } else {
                    w
                }
            })
            .collect();
        let mut check = command(&words[0], &library);
        check
            .args(&words[1..])
            .env("LD_PRELOAD", "/opt/unit-own/libfast.so");
        let out = run_with_deadline(&mut check, DEADLINE);
        assert!(out.status.success(), "the check never fails: {out:?}");
        let written = fs::read_to_string(&private_env_file).unwrap();
        if is_bad {
            assert_eq!(written, "", "{out:?}");
            assert_eq!(warnings(&out).len(), 1, "{out:?}");
            assert!(warnings(&out)[0].contains("GLIBC_2.99"), "{out:?}");
        } else {
            assert_eq!(
                written,
                format!(
                    "LD_PRELOAD=\"{}:/opt/unit-own/libfast.so\"\n",
                    library.display()
                )
            );
            assert!(warnings(&out).is_empty(), "{out:?}");
        }
    }
}

#[test]
fn a_virtualenv_whose_hook_names_a_library_that_cannot_load_still_runs_python() {
    let dir = TempDir::new("venv-hook");
    let venv = dir.join("venv");
    let made = run_with_deadline(
        Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .env_remove("VIRTUAL_ENV"),
        DEADLINE,
    );
    assert!(made.status.success(), "{made:?}");
    let bad = bad_library();
    let installed = run_with_deadline(
        command(vramguard(), &bad)
            .args(["env", "--venv"])
            .arg(&venv),
        DEADLINE,
    );
    assert!(installed.status.success(), "{installed:?}");
    let mut python = command(venv.join("bin/python"), &bad);
    python.env_remove("VRAMGUARD_LIBRARY").args([
        "-c",
        "import os; print('started LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''))",
    ]);
    let out = run_with_deadline(&mut python, DEADLINE);
    assert_started("the venv hook", &out, "", true);
    let out = run_with_deadline(python.args(["-c", "1"]), DEADLINE);
    assert_eq!(out.status.code(), Some(0), "python -c 1: {out:?}");
}

#[test]
fn the_shell_lines_and_the_activate_blocks_leave_out_a_library_that_cannot_load() {
    let dir = TempDir::new("activate");
    for (library, is_bad) in [(bad_library(), true), (library(), false)] {
        let expected = if is_bad {
            String::new()
        } else {
            library.to_string_lossy().into_owned()
        };
        // `eval "$(vramguard env)"`.
        let mut eval = command("sh", &library);
        eval.args(["-c", &format!("eval \"$(\"$0\" env)\" && sh -c '{SHOW}'")])
            .arg(vramguard());
        let out = run_with_deadline(&mut eval, DEADLINE);
        assert_started("eval \"$(vramguard env)\"", &out, &expected, is_bad);

        // The activate blocks `vramguard env --venv` writes, sourced by sh and fish.
        for (shell, template, source) in [
            ("sh", "activate.sh", "."),
            ("fish", "activate.fish", "source"),
        ] {
            if shell == "fish" && Command::new("fish").arg("--version").output().is_err() {
                skip(
                    "the_shell_lines_and_the_activate_blocks_leave_out_a_library_that_cannot_load",
                    "fish is not installed (scripts/setup.sh installs it); its block is not checked",
                );
                continue;
            }
            let text = fs::read_to_string(repo().join("scripts").join(template))
                .unwrap()
                .replace("@VRAMGUARD_LIBRARY@", &library.to_string_lossy());
            let block = dir.join(format!("{is_bad}-{template}"));
            fs::write(&block, text).unwrap();
            let mut activated = command(shell, &library);
            activated.env_remove("VRAMGUARD_LIBRARY").args([
                "-c",
                &format!("{source} {}; sh -c '{SHOW}'", block.display()),
            ]);
            let out = run_with_deadline(&mut activated, DEADLINE);
            assert_started(template, &out, &expected, is_bad);
        }
    }
}
