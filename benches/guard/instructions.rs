//! Instructions per allocation + free pair, counted by valgrind (`--tool=callgrind`): the one
//! figure of the guard's cost that does not depend on what else the machine is doing. A busy
//! machine moves the clock-time figures of a 2-core box by more than the guard's whole cost; the
//! instruction count stays the same to the instruction from run to run, and each instruction
//! removed from the hot path is seen.
//!
//! Method: the client runs a warm-up batch and then `N` batches of 1000 pairs; two runs, with 1
//! and with 3 batches, differ by exactly 2000 pairs, so the difference of their totals divided by
//! 2000 is the cost of one pair, with start-up and exit cancelled out. Latency 0 (the simulator's
//! busy-wait would add instructions of its own).

use std::process::Command;

use crate::Bench;

/// Pairs in one batch of the client (its `--batch`).
const BATCH: u64 = 1000;
/// The two runs: a warm-up batch plus 1, and plus 3.
const SHORT_RUN: u64 = 1;
const LONG_RUN: u64 = 3;

/// Prints the instructions per pair through each client path, unguarded and guarded.
pub fn instructions(bench: &Bench) {
    println!(
        "\n## instructions per cuMemAlloc_v2 + cuMemFree_v2 pair (valgrind --tool=callgrind, latency 0)"
    );
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: skipped (apt-get install valgrind)");
        return;
    }
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>7}",
        "path", "unguarded", "guarded", "added", "ratio"
    );
    let lab = bench.lab("16GiB", "0");
    for &(path, answers) in crate::PAIR_ROUTES {
        let label = crate::route_label(path, answers);
        let per_pair = |guarded: bool| -> Option<f64> {
            let short = collected(bench, &lab, path, answers, guarded, SHORT_RUN)?;
            let long = collected(bench, &lab, path, answers, guarded, LONG_RUN)?;
            let pairs = (LONG_RUN - SHORT_RUN) * BATCH;
            Some(long.checked_sub(short)? as f64 / pairs as f64)
        };
        match (per_pair(false), per_pair(true)) {
            (Some(u), Some(g)) => println!(
                "{label:<28} {u:>10.0} {g:>10.0} {:>10.0} {:>6.2}x",
                g - u,
                g / u
            ),
            _ => println!("{label:<28} (valgrind gave no count)"),
        }
    }
}

/// The instructions valgrind counted in one run of the client doing `batches` batches of pairs.
fn collected(
    bench: &Bench,
    lab: &crate::lab::Lab,
    path: &str,
    answers: &str,
    guarded: bool,
    batches: u64,
) -> Option<u64> {
    let client = bench.client_command(lab, path, answers, guarded);
    let mut command = Command::new("valgrind");
    command
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(client.get_program())
        .args(client.get_args())
        .args(["pairs", "--chunk", "1048576", "--batch"])
        .arg(BATCH.to_string())
        .arg("--batches")
        .arg(batches.to_string());
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let output = crate::run_checked(command);
    // callgrind's last words: "==<pid>== Collected : <instructions>".
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find_map(|line| line.split("Collected :").nth(1))
        .and_then(|count| count.trim().parse().ok())
}
