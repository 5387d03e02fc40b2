//! `VRAMGUARD_LIMIT` as a percentage: a share of each card's budget (its capacity less the
//! reserve), as the Slurm TaskProlog sets it from a job's shards. Checked on every path a client
//! reaches the driver by, so it holds without a Slurm (`tests/slurm_shards.rs` runs it under one).

mod support;

use support::{ClientPath, Sandbox};

const MIB: u64 = 1 << 20;

#[test]
fn a_percentage_limit_is_that_share_of_the_cards_budget() {
    // 4 GiB less a 1 GiB reserve: a budget of 3 GiB, of which 37.5% is 1152 MiB; a context
    // takes 128 MiB of it.
    let mut sandbox = Sandbox::new("4GiB");
    sandbox
        .set_env("SIMCUDA_CONTEXT_COST", "128MiB")
        .set_env("VRAMGUARD_CONTEXT_SIZE", "128MiB")
        .set_env("VRAMGUARD_RESERVE", "1GiB")
        .set_env("VRAMGUARD_LIMIT", "37.5%");
    sandbox.init();
    let room = 1152 * MIB - 128 * MIB;
    for path in [ClientPath::Direct, ClientPath::Procaddr] {
        let chunk = |bytes: u64| bytes.to_string();
        let (under, _) =
            sandbox.run_client(path, true, &["--chunk", &chunk(room - MIB), "--count", "1"]);
        assert!(
            under.status.success(),
            "{path:?} just under the share: {under:?}"
        );
        let (over, _) =
            sandbox.run_client(path, true, &["--chunk", &chunk(room + MIB), "--count", "1"]);
        assert_eq!(
            over.summary().first_error.as_deref(),
            Some("CUDA_ERROR_OUT_OF_MEMORY"),
            "{path:?} just over the share: {over:?}"
        );
        assert_eq!(over.status.code(), Some(2), "{over:?}");
    }
}
