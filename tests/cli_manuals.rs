//! `vramguard completions SHELL` and `vramguard man`: the completion scripts parse in their
//! shells (and bash's registers a completion for `vramguard`), and the man pages, one per
//! visible subcommand, render with groff without a warning.

#[path = "support/cli.rs"]
mod cli_support;

use std::path::Path;
use std::process::{Command, Stdio};

use cli_support::*;

/// `vramguard ARGS`, which must succeed; its stdout.
fn printed(args: &[&str]) -> String {
    let out = run_with_deadline(Command::new(vramguard()).args(args), HANG_GUARD);
    assert!(out.status.success(), "vramguard {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Whether `program` is on PATH.
fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `shell ARGS SCRIPT-FILE` on `script`; asserts it succeeds; its stdout.
fn run_shell(shell: &str, args: &[&str], script: &str, dir: &TempDir) -> String {
    let file = dir.join(format!("completion.{shell}"));
    std::fs::write(&file, script).unwrap();
    let out = run_with_deadline(Command::new(shell).args(args).arg(&file), HANG_GUARD);
    assert!(
        out.status.success(),
        "{shell} {args:?} on the completion script: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn the_completion_scripts_parse_in_their_shells() {
    let dir = TempDir::new("completions");
    let bash = printed(&["completions", "bash"]);
    run_shell("bash", &["-n"], &bash, &dir);
    // Sourced, it registers the completion of `vramguard` and offers the subcommands.
    let probe = format!(
        "{bash}\ncomplete -p vramguard\nCOMP_WORDS=(vramguard ''); COMP_CWORD=1; COMP_LINE='vramguard '; \
         COMP_POINT=10; $(complete -p vramguard | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p') vramguard '' vramguard; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let offered = run_shell("bash", &[], &probe, &dir);
    assert!(offered.contains("-F _vramguard vramguard"), "{offered}");
    for sub in ["run", "status", "env", "completions", "man"] {
        assert!(
            offered.lines().any(|l| l == sub),
            "bash does not offer {sub}: {offered}"
        );
    }
    let fish = printed(&["completions", "fish"]);
    assert!(fish.contains("complete -c vramguard"), "{fish}");
    run_shell("fish", &["--no-execute"], &fish, &dir);
    let zsh = printed(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef vramguard"), "{zsh}");
    if have("zsh") {
        run_shell("zsh", &["-n"], &zsh, &dir);
    } else {
        skip(
            "the_completion_scripts_parse_in_their_shells",
            "zsh is not installed (scripts/setup.sh installs it): the zsh script was not parsed",
        );
    }
}

#[test]
fn the_man_pages_render_without_warnings() {
    let dir = TempDir::new("man");
    let out = run_with_deadline(
        Command::new(vramguard())
            .args(["man", "--output"])
            .arg(dir.path()),
        HANG_GUARD,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The main page is also what `vramguard man` prints.
    let main = std::fs::read_to_string(dir.join("vramguard.1")).unwrap();
    assert_eq!(main, printed(&["man"]));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for sub in [
        "run",
        "status",
        "env",
        "cdi",
        "doctor",
        "demo",
        "completions",
        "man",
    ] {
        assert!(
            pages.contains(&format!("vramguard-{sub}.1")),
            "no page for {sub}: {pages:?}"
        );
        assert!(main.contains(&format!("vramguard\\-{sub}(1)")), "{main}");
    }
    assert!(
        !pages.iter().any(|p| p.contains("__")),
        "a hidden subcommand has a page: {pages:?}"
    );
    if !have("groff") {
        skip(
            "the_man_pages_render_without_warnings",
            "groff is not installed (scripts/setup.sh installs it): the pages were not rendered",
        );
        return;
    }
    for page in &pages {
        let out = run_with_deadline(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
                .arg(Path::new(dir.path()).join(page)),
            HANG_GUARD,
        );
        assert!(
            out.status.success() && stderr(&out).is_empty(),
            "groff on {page}: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
}
