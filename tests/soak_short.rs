//! A short run of the soak and fault suite (the full one is `cargo run --release --example soak`,
//! see docs/benchmarks.md): 8 guarded processes allocate, free, wait, fork and exit at random on
//! two simulated devices for 15 seconds while workers are killed and stopped (lock holders among
//! them, when one is caught inside a device lock) and the ledger is removed, damaged and
//! truncated. The observer's checks must all come out clean: never over budget or over capacity,
//! ledger and card agree on every quiescent process, nothing leaked, nothing hung, nothing
//! crashed (a worker killed by SIGBUS after the truncation of a ledger it had mapped is the
//! documented limitation, counted apart as `truncation_sigbus`).
//!
//! Every fault kind is asserted to have been injected except `stop_holder`: every `stop` first
//! watches the device locks for a holder to catch, but a lock is held for about 100 ns at a time,
//! so a holder is caught only now and then (`tests/ledger_stopped_holder.rs` stops one
//! deterministically).
//!
//! The seed changes from run to run and is printed; rerun a failure with
//! `cargo run --release --example soak -- --processes 8 --seconds 15 --seed <seed> --verbose`.

#[path = "../benches/soak/suite/mod.rs"]
mod suite;

use std::time::Duration;

#[test]
fn short_soak_with_faults_keeps_every_promise() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let config = suite::Config {
        processes: 8,
        duration: Duration::from_secs(15),
        // Small cards, so that the eight workers crowd them and refusals and waits happen.
        devices: "1GiB;1536MiB".to_owned(),
        max_chunk: 128 << 20,
        fault_interval: Duration::from_millis(250),
        seed,
        ..suite::Config::default()
    };
    println!("soak seed {seed}");
    let summary = suite::run(&config);
    println!("{}", summary.details());
    println!("{summary}");

    assert!(
        summary.passed(),
        "the soak found a broken promise (seed {seed}): {summary}"
    );
    // The run must have exercised what it claims to check.
    assert!(
        summary.operations > 1_000,
        "too little work was done: {summary}"
    );
    assert!(
        summary.faults >= 10,
        "too few faults were injected: {summary}"
    );
    // The ledger faults take turns, one every 3 to 4.5 s: all three come within about 10 s.
    for kind in ["kill", "stop", "remove_dir", "damage", "truncate"] {
        assert!(
            summary
                .faults_by_kind
                .iter()
                .any(|(k, n)| *k == kind && *n > 0),
            "no `{kind}` fault was injected: {}",
            summary.details()
        );
    }
    assert!(
        summary.samples >= 50,
        "too few samples were taken: {}",
        summary.details()
    );
    assert!(
        summary.comparisons > 0,
        "the agreement check never compared a process: {}",
        summary.details()
    );
}
