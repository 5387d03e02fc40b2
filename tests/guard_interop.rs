//! Living with the rest of the process and the machine: a second LD_PRELOAD interposer,
//! VRAMGUARD_DISABLE, an unusable ledger under each VRAMGUARD_ON_ERROR, a damaged one rebuilt by
//! the next program, and garbage in the environment.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use guard_support::{
    assert_card_safe, check_unusable_ledger, guard_lines, limited_client, run, second_interposer,
};
use support::{ClientPath, Sandbox};

/// The second interposer's report line: (cuMemAlloc_v2 calls, getenv calls).
fn second_report(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("second-interposer: cuMemAlloc_v2="))
        .unwrap_or_else(|| panic!("no report of the second interposer:\n{stderr}"));
    let number = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    (number("cuMemAlloc_v2="), number("getenv="))
}

#[test]
fn a_second_interposer_keeps_working_before_and_after_ours() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let second = second_interposer();
    let ours = support::artifacts().preload;
    for second_first in [true, false] {
        let order = if second_first {
            [&second, &ours]
        } else {
            [&ours, &second]
        };
        let preload = format!("{}:{}", order[0].display(), order[1].display());
        for path in [ClientPath::Direct, ClientPath::Dlsym, ClientPath::Procaddr] {
            let mut command = limited_client(&sandbox, path);
            command.env("LD_PRELOAD", &preload);
            let finished = run(command);
            let context = format!("second first: {second_first}, {path:?}: {finished:?}");
            assert!(!finished.stderr.contains("recursion"), "{context}");
            assert_eq!(finished.status.code(), Some(2), "{context}");
            let summary = finished.summary();
            assert_eq!((summary.ok, summary.failed), (2, 1), "{context}");
            assert_eq!(
                summary.first_error.as_deref(),
                Some("CUDA_ERROR_OUT_OF_MEMORY"),
                "{context}"
            );
            let (allocs, getenvs) = second_report(&finished.stderr);
            // Before us it sees every request (the third is refused behind it); after us only
            // the two the guard let through.
            assert_eq!(allocs, if second_first { 3 } else { 2 }, "{context}");
            assert!(getenvs > 0, "{context}");
        }
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn disable_is_a_pure_pass_through() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    for path in ClientPath::ALL {
        let mut command = limited_client(&sandbox, path);
        command.env("VRAMGUARD_DISABLE", "1");
        let finished = run(command);
        assert_eq!(finished.status.code(), Some(0), "{path:?}: {finished:?}");
        assert_eq!(finished.summary().ok, 5);
        assert!(guard_lines(&finished.stderr).is_empty(), "{finished:?}");
    }
    let entries = std::fs::read_dir(&sandbox.ledger_dir)
        .expect("the ledger dir")
        .count();
    assert_eq!(entries, 0, "a disabled guard touched the ledger directory");
}

#[test]
fn an_unusable_ledger_follows_on_error() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    // A directory that cannot be created: its parent is a regular file.
    let blocker = sandbox.root().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    check_unusable_ledger(&sandbox, &blocker.join("ledger"), "missing directory");

    // A damaged ledger: every file of a real ledger overwritten with garbage.
    let damaged = sandbox.root().join("damaged");
    let mut make = limited_client(&sandbox, ClientPath::Direct);
    make.env("VRAMGUARD_DIR", &damaged);
    assert_eq!(run(make).summary().ok, 2);
    let mut files = 0;
    for entry in std::fs::read_dir(&damaged).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let size = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, vec![0xa5u8; size.max(4096)]).unwrap();
            files += 1;
        }
    }
    assert!(
        files > 0,
        "no ledger file was created in {}",
        damaged.display()
    );
    // A damaged ledger is no reason to go unguarded: the next program replaces it with a fresh
    // ledger (docs/ledger.md, "Rebuilding") and is guarded in it, its limit applied, under
    // either VRAMGUARD_ON_ERROR.
    for path in [ClientPath::Direct, ClientPath::Procaddr, ClientPath::Python] {
        for on_error in ["open", "closed"] {
            let mut command = limited_client(&sandbox, path);
            command
                .env("VRAMGUARD_DIR", &damaged)
                .env("VRAMGUARD_ON_ERROR", on_error);
            let finished = run(command);
            let context = format!("damaged ledger, {on_error}, {path:?}: {finished:?}");
            assert!(finished.status.code().is_some(), "killed: {context}");
            let summary = finished.summary();
            assert_eq!(summary.ok, 2, "guarded in the rebuilt ledger: {context}");
            assert_eq!(
                summary.first_error.as_deref(),
                Some("CUDA_ERROR_OUT_OF_MEMORY"),
                "{context}"
            );
            assert!(
                guard_lines(&finished.stderr)
                    .iter()
                    .all(|line| !line.contains("VRAMGUARD_ON_ERROR")),
                "not a ledger error: {context}"
            );
        }
    }
    vramguard_core::ledger::Ledger::open_existing(&damaged).expect("the ledger was rebuilt");
    let report = sandbox.sim_report();
    assert_card_safe(&report, 0);
}

#[test]
fn garbage_settings_are_named_once_and_the_program_runs() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    for path in [ClientPath::Direct, ClientPath::Python] {
        let mut command = sandbox.command(path, true);
        command
            .args(["--chunk", "100MiB", "--count", "3"])
            .env("VRAMGUARD_POLICY", "maybe")
            .env("VRAMGUARD_LIMIT", "lots")
            .env("VRAMGUARD_WAIT_TIMEOUT", "soon");
        let finished = run(command);
        assert_eq!(finished.status.code(), Some(0), "{path:?}: {finished:?}");
        assert_eq!(finished.summary().ok, 3);
        for var in [
            "VRAMGUARD_POLICY",
            "VRAMGUARD_LIMIT",
            "VRAMGUARD_WAIT_TIMEOUT",
        ] {
            let mentions = guard_lines(&finished.stderr)
                .iter()
                .filter(|l| l.contains(var))
                .count();
            assert_eq!(mentions, 1, "{var} via {path:?}: {}", finished.stderr);
        }
    }
}
