//! `vramguard demo` end to end, as the README's first command runs it: each act's outcome is
//! read from what it tells the user, and the run leaves nothing behind.

#[path = "support/cli.rs"]
mod cli_support;

use std::process::Command;
use std::time::Duration;

use cli_support::*;

/// The demo takes a few seconds; this bounds a hang.
const DEADLINE: Duration = Duration::from_secs(180);

/// The text between `Act N` and the next act (or the end).
fn act(text: &str, number: u32) -> &str {
    let start = text
        .find(&format!("Act {number} "))
        .unwrap_or_else(|| panic!("no act {number}:\n{text}"));
    let rest = &text[start..];
    let end = rest[1..].find("\nAct ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

fn count(text: &str, pattern: &str) -> usize {
    text.lines().filter(|l| l.contains(pattern)).count()
}

#[test]
fn the_demo_tells_the_story_and_every_act_holds() {
    artifact("libcuda.so");
    artifact("simcuda");
    let temp = TempDir::new("demo-tmp");
    let mut command = Command::new(vramguard());
    command
        .arg("demo")
        .env("TMPDIR", temp.path())
        .env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        let text = key.to_string_lossy();
        if text.starts_with("VRAMGUARD_") || text.starts_with("SIMCUDA_") {
            command.env_remove(&key);
        }
    }
    // Like a user's own settings, which the demo must not pick up.
    command
        .env("VRAMGUARD_POLICY", "wait")
        .env("VRAMGUARD_DIR", temp.join("users-ledger"));
    let out = run_with_deadline(&mut command, DEADLINE);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(!text.contains("UNEXPECTED"), "{text}");

    // Act 1: the collision; some scripts die midway, the card is poisoned, a later start fails
    // with the unknown error.
    let one = act(&text, 1);
    let died = count(one, "failed after");
    assert!(died >= 1, "{one}");
    assert!(one.contains("poisoned=true"), "{one}");
    assert!(
        one.contains("a later start: cuInit failed: CUDA_ERROR_UNKNOWN (999)"),
        "{one}"
    );

    // Act 2: one loads; two get a clean out-of-memory before loading anything.
    let two = act(&text, 2);
    assert_eq!(count(two, ": loaded "), 1, "{two}");
    assert_eq!(
        count(two, "cannot create a context: CUDA_ERROR_OUT_OF_MEMORY"),
        2,
        "{two}"
    );
    assert_eq!(
        count(two, "failed after"),
        0,
        "nobody should fail midway under the guard: {two}"
    );
    assert!(
        two.contains("[ledger]"),
        "no live view of the ledger: {two}"
    );

    // Act 3: all three load, one after another: the ledger showed waiting scripts, and each load
    // finished before the next one's "loaded" line.
    let three = act(&text, 3);
    assert_eq!(count(three, ": loaded "), 3, "{three}");
    assert!(
        three
            .lines()
            .any(|l| l.contains("[ledger]") && l.contains("2 waiting")),
        "{three}"
    );
    let events: Vec<&str> = three
        .lines()
        .filter(|l| l.contains(": loaded ") || l.trim_end().ends_with(": done"))
        .collect();
    assert_eq!(events.len(), 6, "{three}");
    for pair in events.chunks(2) {
        let script = pair[0].trim().split(':').next().unwrap();
        assert!(
            pair[0].contains("loaded") && pair[1].trim().starts_with(script),
            "loads overlapped: {events:?}"
        );
    }
    assert!(text.contains("Every act showed what it should"), "{text}");

    // The demo cleaned up after itself and never touched the user's ledger.
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
