//! The dynamic symbols a built library or program defines itself (`nm -D --defined-only`), for
//! the tests that check what the preload library exports and what the command line does not.
//! Included with `#[path = "support/exports.rs"] mod exports;`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The names of the dynamic symbols `binary` defines, without version suffixes.
pub fn defined_symbols(binary: &Path) -> BTreeSet<String> {
    let output = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(binary)
        .output()
        .expect("run nm");
    assert!(
        output.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            // Symbols of the binary itself: text (T), data, weak; not absolute version nodes.
            (kind != "A").then(|| name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}
