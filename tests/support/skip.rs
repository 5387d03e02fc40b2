//! Skipping a test that cannot run on this machine (no pid namespaces, a real GPU where the
//! simulated one is assumed...). libtest has no way to mark a test skipped at run time: such a
//! test returns early and passes, so it must say so where the person running the suite looks.
//! [`skip`] prints the reason to stderr and appends it to `<target>/test-skips.txt`, which
//! `scripts/test.sh` empties before the run and prints as a summary after it. Shared by `support`
//! (`mod.rs`), the command line's `support/cli.rs` and the ledger tests' `ledger_support`, which
//! are included by different tests.

use std::io::Write;
use std::path::PathBuf;

/// The file name of the skip record, in the cargo target directory.
pub const SKIPS_FILE: &str = "test-skips.txt";

/// The skip record: `<target>/test-skips.txt`, the target directory being the one this test
/// binary was built in (`<target>/<profile>/deps/<binary>`).
pub fn skips_file() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps");
    target.join(SKIPS_FILE)
}

/// The test binary's name without cargo's hash (`ledger_liveness-0123abcd` -> `ledger_liveness`).
fn binary_name() -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// Records that `test` did not run, and why: one line `<binary>::<test> — <reason>` in the skip
/// record, and the same on stderr. The caller returns right after.
pub fn skip(test: &str, reason: &str) {
    let reason = reason.replace('\n', " ");
    let line = format!("{}::{test} — {reason}", binary_name());
    eprintln!("SKIPPED: {line}");
    let path = skips_file();
    // One write of one line in append mode: lines of tests skipping at once do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(error) = written {
        panic!(
            "{test} is skipped ({reason}) and cannot say so in {}: {error}",
            path.display()
        );
    }
}
