//! What the command line makes of input it does not choose: a command line full of terminal
//! escape sequences shown by `status` (escaped, never raw), a `--watch` interval that is no
//! interval (a usage error, not a panic), a ledger directory where no ledger fits (said, exit
//! code 1), and safety settings that do not parse (`vramguard run` refuses to start the program,
//! `doctor` fails, the guard says what applies instead).

#[path = "support/guard.rs"]
mod guard_support;
#[path = "support/private_mount.rs"]
mod private_mount;
mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

use guard_support::{CLIENT_DEADLINE, guard_lines};
use private_mount::PrivateMount;
use support::{ClientPath, Finished, Sandbox};

fn cli(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut command = sandbox.program(support::artifacts().cli);
    command.args(args);
    command
}

fn finish(command: Command) -> Finished {
    support::spawn(command).finish(CLIENT_DEADLINE)
}

/// What a terminal would act on: escape, bell, and the other control characters but newline.
fn has_raw_controls(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[test]
fn escape_sequences_in_a_command_line_are_shown_escaped() {
    let sandbox = Sandbox::new("4GiB");
    // argv[0] is anyone's to choose: retitle the window, clear the screen, reverse the text.
    let evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u{202e}txet";
    let mut holder = sandbox.command(ClientPath::Direct, true);
    holder.arg0(evil).args([
        "--chunk",
        "16MiB",
        "--count",
        "1",
        "--hold-until",
        sandbox.until_killed(),
    ]);
    let mut holder = support::spawn(holder);
    holder.wait_for_line("holding", CLIENT_DEADLINE);

    let shown = finish(cli(&sandbox, &["status"]));
    drop(holder.kill());
    assert_eq!(shown.status.code(), Some(0), "{shown:?}");
    assert!(
        !has_raw_controls(&shown.stdout),
        "raw control characters reached the terminal: {:?}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .contains(r"\x1b]0;owned\x07\x1b[2J\x1b[31mred\u{202e}txet"),
        "the command line is not shown escaped: {}",
        shown.stdout
    );
}

#[test]
fn a_watch_interval_that_is_no_interval_is_a_usage_error() {
    let sandbox = Sandbox::new("4GiB");
    for bad in ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "soon"] {
        let finished = finish(cli(&sandbox, &["status", &format!("--watch={bad}")]));
        assert_eq!(
            finished.status.code(),
            Some(2),
            "--watch {bad}: {finished:?}"
        );
        assert!(
            finished.stderr.contains("--watch") && !finished.stderr.contains("panicked"),
            "--watch {bad}: {finished:?}"
        );
    }
}

#[test]
fn status_says_when_no_ledger_fits_in_the_directory() {
    let sandbox = Sandbox::new("4GiB");
    // A 1 MiB tmpfs: a ledger takes more than 3 MiB.
    let mount = PrivateMount::tmpfs(&sandbox.root().join("shm"), "1m");
    let dir = mount.dir.join("vramguard");
    let mut status = cli(&sandbox, &["status"]);
    status.env("VRAMGUARD_DIR", &dir);
    let finished = finish(mount.command(&status));
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("no ledger fits in") && finished.stderr.contains("--shm-size"),
        "{finished:?}"
    );
    assert!(
        !finished.stdout.contains("no guarded process has run yet"),
        "{finished:?}"
    );
}

#[test]
fn run_refuses_a_safety_setting_that_does_not_parse() {
    let sandbox = Sandbox::new("4GiB");
    let marker = sandbox.root().join("started");
    let cases: [(&str, &str, &str); 3] = [
        ("VRAMGUARD_LIMIT", "banana", "no per-process limit"),
        (
            "VRAMGUARD_ON_ERROR",
            "clsoed",
            "passes calls through unguarded",
        ),
        ("VRAMGUARD_POLICY", "wiat", "fail at once"),
    ];
    for (name, value, instead) in cases {
        let mut run = cli(&sandbox, &["run", "--", "touch"]);
        run.arg(&marker).env(name, value);
        let finished = finish(run);
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{name}={value}: {finished:?}"
        );
        assert!(
            finished.stderr.contains(name)
                && finished.stderr.contains(value)
                && finished.stderr.contains(instead),
            "{name}={value}: {finished:?}"
        );
        assert!(!marker.exists(), "{name}={value}: the program was started");
    }
    // A valid environment starts the program; a misspelt name is told with the right one.
    let mut run = cli(&sandbox, &["run", "--", "touch"]);
    run.arg(&marker).env("VRAMGUARD_POLCY", "wait");
    let finished = finish(run);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert!(marker.exists(), "{finished:?}");
    assert!(
        finished.stderr.contains("VRAMGUARD_POLCY") && finished.stderr.contains("VRAMGUARD_POLICY"),
        "{finished:?}"
    );
}

#[test]
fn doctor_fails_on_a_safety_setting_that_does_not_parse() {
    let sandbox = Sandbox::new("4GiB");
    let mut doctor = cli(&sandbox, &["doctor"]);
    doctor.env("VRAMGUARD_LIMIT", "banana");
    let finished = finish(doctor);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished
            .stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("VRAMGUARD_LIMIT")),
        "{}",
        finished.stdout
    );
}

#[test]
fn the_guard_says_once_what_applies_instead_of_a_setting_that_does_not_parse() {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env("VRAMGUARD_LIMIT", "banana");
    let (finished, _) = sandbox.run_client(
        ClientPath::Direct,
        true,
        &["--chunk", "16MiB", "--count", "2"],
    );
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    let said: Vec<&str> = guard_lines(&finished.stderr)
        .into_iter()
        .filter(|l| l.contains("VRAMGUARD_LIMIT"))
        .collect();
    assert_eq!(said.len(), 1, "{finished:?}");
    assert!(
        said[0].contains("banana")
            && said[0].contains("no per-process limit; the card's budget still applies"),
        "{said:?}"
    );
}
