//! `docs/design.md`'s table of guarded functions (section 1.1) against the built library: every
//! `cu*` symbol `libvramguard.so` exports is a guarded function, and the table names exactly
//! those, each variant written out; the library exports `dlsym` too.

#[path = "support/exports.rs"]
mod exports;
#[path = "support/markdown.rs"]
mod markdown;
mod support;

use std::collections::BTreeSet;

/// The heading of the section that holds the table.
const SECTION: &str = "1.1 One list of guarded functions";

/// Whether `name` can be a driver entry point's symbol (no shorthand such as `cuMemAlloc(_v2)`).
fn is_driver_symbol(name: &str) -> bool {
    name.starts_with("cu") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The functions the table names, each row's `functions` cell a comma-separated list of code
/// spans and nothing else; panics on a row that breaks that form or a name listed twice.
fn documented_functions() -> BTreeSet<String> {
    let doc = markdown::read_doc("design.md");
    let table = markdown::table(&doc, SECTION);
    let mut names = BTreeSet::new();
    for row in &table.rows {
        assert!(
            !row.get("family").is_empty(),
            "a row of docs/design.md's table names no family: {}",
            row.line
        );
        let cell = row.get("functions");
        let spans = markdown::code_spans(cell);
        let canonical: Vec<String> = spans.iter().map(|name| format!("`{name}`")).collect();
        assert!(
            !spans.is_empty() && cell == canonical.join(", "),
            "the functions cell of docs/design.md's row must be `name`, `name`, ... and nothing else: {}",
            row.line
        );
        for name in spans {
            assert!(
                is_driver_symbol(name),
                "`{name}` in docs/design.md is not a symbol: write every variant out ({})",
                row.line
            );
            assert!(
                names.insert(name.to_string()),
                "{name} is listed twice in docs/design.md"
            );
        }
    }
    names
}

#[test]
fn design_doc_lists_exactly_the_exported_guarded_functions() {
    let exported = exports::defined_symbols(&support::artifacts().preload);
    assert!(
        exported.contains("dlsym"),
        "libvramguard.so does not export dlsym: {exported:?}"
    );
    let guarded: BTreeSet<String> = exported
        .into_iter()
        .filter(|name| name.starts_with("cu"))
        .collect();
    assert!(!guarded.is_empty(), "libvramguard.so exports no cu* symbol");
    let documented = documented_functions();
    let undocumented: Vec<_> = guarded.difference(&documented).collect();
    let unguarded: Vec<_> = documented.difference(&guarded).collect();
    assert!(
        undocumented.is_empty() && unguarded.is_empty(),
        "docs/design.md section {SECTION:?} disagrees with libvramguard.so's exports: \
         exported but not documented: {undocumented:?}; documented but not exported: {unguarded:?}"
    );
}
