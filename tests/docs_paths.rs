//! The documents name only files and folders that exist: a file moved or removed takes its
//! mentions with it (the README and `docs/*.md` point newcomers at the code by path).

mod support;

use std::path::Path;

/// The tree's top-level folders whose paths the documents quote.
const ROOTS: &[&str] = &[
    "src/", "tests/", "scripts/", "benches/", "deploy/", "docs/", "python/",
];

/// The paths quoted in backticks in `text` (`src/preload/lookup/procaddr.rs`), without patterns
/// (`tests/guard_*.rs`) or placeholders (`<dir>`).
fn quoted_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| ROOTS.iter().any(|root| span.starts_with(root)))
        .filter(|span| {
            span.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        })
        .map(|span| span.trim_end_matches(['.', ':']).to_string())
        .collect()
}

#[test]
fn every_path_a_document_names_exists() {
    let repo = support::repo();
    let mut documents = vec![repo.join("README.md")];
    for entry in std::fs::read_dir(repo.join("docs")).expect("read docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut missing = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).expect("read a document");
        for path in quoted_paths(&text) {
            if !Path::new(&repo).join(&path).exists() {
                missing.push(format!(
                    "{}: `{path}`",
                    document.strip_prefix(&repo).unwrap_or(document).display()
                ));
            }
        }
    }
    assert!(documents.len() > 3, "found {documents:?}");
    assert!(
        missing.is_empty(),
        "documents name paths that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn quoted_paths_are_read_from_backticks_only() {
    let text =
        "see `src/preload/lookup/procaddr.rs`, `tests/guard_*.rs`, src/x.rs and `cargo test`";
    assert_eq!(quoted_paths(text), ["src/preload/lookup/procaddr.rs"]);
}
