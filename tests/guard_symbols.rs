//! The preload library exports exactly the guarded functions of its one list, plus `dlsym`.

#[path = "support/exports.rs"]
mod exports;
mod support;

use std::collections::BTreeSet;

use exports::defined_symbols;

/// The names in `guarded_functions!` of `src/preload/functions.rs`.
fn listed_functions() -> BTreeSet<String> {
    let source = std::fs::read_to_string(support::repo().join("src/preload/functions.rs"))
        .expect("read the function list");
    let start = source
        .find("$callback! {")
        .expect("the list starts with `$callback! {`");
    let body = &source[start..];
    let end = body.find("\n        }\n").expect("the list ends");
    body[..end]
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let name = line.split('(').next()?;
            (line.ends_with(';') && line.contains(") = ") && name.starts_with("cu"))
                .then(|| name.to_string())
        })
        .collect()
}

#[test]
fn exports_are_exactly_the_list_and_dlsym() {
    let listed = listed_functions();
    assert!(listed.len() >= 40, "the list looks truncated: {listed:?}");
    for name in [
        "cuMemAlloc_v2",
        "cuGetProcAddress_v2",
        "cuMemCreate",
        "cuCtxCreate_v4",
        "cuMemAllocAsync_ptsz",
    ] {
        assert!(listed.contains(name), "{name} missing from the list");
    }
    let mut expected = listed.clone();
    expected.insert("dlsym".to_string());
    let actual = defined_symbols(&support::artifacts().preload);
    let extra: Vec<_> = actual.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&actual).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "exported but not listed: {extra:?}; listed but not exported: {missing:?}"
    );
}

#[test]
fn the_command_line_carries_no_hooks() {
    let actual = defined_symbols(&support::artifacts().cli);
    let hooks: Vec<_> = actual
        .iter()
        .filter(|n| *n == "dlsym" || n.starts_with("cu"))
        .collect();
    assert!(
        hooks.is_empty(),
        "the vramguard binary exports hook symbols: {hooks:?}"
    );
}
