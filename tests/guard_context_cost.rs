//! Contexts are charged what they take on the card, measured across their creation, whatever a
//! context costs on the simulated card (0, 64 MiB, 700 MiB) and however the management library
//! answers (per process, or only for the whole card, as inside a container): sixteen small
//! programs that start at the same instant on a 1 GiB card, and `vramguard status --json` shows
//! each one's memory as the card holds it for it.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::collections::BTreeMap;

use serde_json::Value;

use guard_support::{CLIENT_DEADLINE, MIB, assert_card_safe, run};
use support::{ClientPath, Finished, Running, Sandbox};

/// How the simulated management library lists processes.
#[derive(Clone, Copy, Debug)]
enum Nvml {
    /// Every process with its memory (a host's pid namespace).
    PerProcess,
    /// No process at all, only the card's used memory (a container's pid namespace).
    CardOnly,
}

/// A 1 GiB card whose contexts cost `cost`, with the guard's estimate left at its default.
fn card(cost: &str, nvml: Nvml) -> Sandbox {
    let mut sandbox = Sandbox::new("1GiB");
    sandbox.set_env("SIMCUDA_CONTEXT_COST", cost);
    if let Nvml::CardOnly = nvml {
        sandbox.set_env("SIMCUDA_NVML_PROCESSES", "0");
    }
    sandbox.init();
    sandbox
}

/// A client that reaches the driver the runtime's way, takes `chunks` x 16 MiB and holds them
/// until it is killed.
fn small_program(sandbox: &Sandbox, chunks: &str) -> Running {
    sandbox.start_client(
        ClientPath::Procaddr,
        true,
        &[
            "--chunk",
            "16MiB",
            "--count",
            chunks,
            "--hold-until",
            sandbox.until_killed(),
        ],
    )
}

/// One of the sixteen, once it holds its memory or has been refused.
enum Outcome {
    /// It holds what it got (pid; whether every allocation succeeded).
    Holding(u32, bool),
    /// It was refused and exited.
    Refused(Finished),
}

/// Starts sixteen programs at once and waits until each holds or has finished.
fn sixteen_programs(sandbox: &Sandbox, chunks: &str) -> (Vec<Outcome>, Vec<Running>) {
    let mut started: Vec<Running> = (0..16).map(|_| small_program(sandbox, chunks)).collect();
    let mut outcomes = Vec::new();
    let mut holding = Vec::new();
    for mut program in started.drain(..) {
        if program
            .wait_for_line_or_end("holding", CLIENT_DEADLINE)
            .is_some()
        {
            let complete = !program.seen().iter().any(|l| l.starts_with("alloc fail"));
            outcomes.push(Outcome::Holding(program.pid(), complete));
            holding.push(program);
        } else {
            outcomes.push(Outcome::Refused(program.finish(CLIENT_DEADLINE)));
        }
    }
    (outcomes, holding)
}

/// Bytes per pid of a list of processes that each list their `devices` with `used_bytes` (the
/// shape of `simcuda report --json` and of `vramguard status --json`).
fn used_per_pid<'a>(processes: impl Iterator<Item = &'a Value>) -> BTreeMap<u64, u64> {
    processes
        .map(|p| {
            let used = p["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["used_bytes"].as_u64())
                .sum();
            (p["pid"].as_u64().unwrap_or(0), used)
        })
        .collect()
}

/// Bytes the simulated card holds for each live process.
fn card_holds(report: &Value) -> BTreeMap<u64, u64> {
    used_per_pid(
        report["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["alive"].as_bool() == Some(true)),
    )
}

/// Bytes `vramguard status --json` shows for each process.
fn status_shows(sandbox: &Sandbox) -> BTreeMap<u64, u64> {
    let cli = support::artifacts().cli;
    let mut command = sandbox.program(cli);
    command.args(["status", "--json"]);
    let finished = run(command);
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    let status: Value = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", finished.stdout));
    used_per_pid(status["processes"].as_array().into_iter().flatten())
}

/// Every holding process is shown with what the card holds for it, within 1%.
fn assert_status_matches_the_card(sandbox: &Sandbox, outcomes: &[Outcome], context: &str) {
    let card = card_holds(&sandbox.sim_report());
    let status = status_shows(sandbox);
    for outcome in outcomes {
        let Outcome::Holding(pid, _) = outcome else {
            continue;
        };
        let pid = u64::from(*pid);
        let on_card = card.get(&pid).copied().unwrap_or(0);
        let shown = status.get(&pid).copied().unwrap_or(0);
        let tolerance = on_card / 100;
        assert!(
            shown.abs_diff(on_card) <= tolerance,
            "{context}: pid {pid} is shown with {shown} bytes, the card holds {on_card}\nstatus: {status:?}\ncard: {card:?}"
        );
    }
}

fn refused_cleanly(finished: &Finished) -> bool {
    finished.summary().first_error.as_deref() == Some("CUDA_ERROR_OUT_OF_MEMORY")
}

/// What every run of the sixteen must show: each refusal a clean out-of-memory, each holder
/// shown as the card holds it, the card never over-committed. Then the holders are let go.
fn assert_a_clean_start(
    sandbox: &Sandbox,
    outcomes: &[Outcome],
    holding: Vec<Running>,
    context: &str,
) {
    for outcome in outcomes {
        if let Outcome::Refused(f) = outcome {
            assert!(refused_cleanly(f), "{context}: {f:?}");
        }
    }
    assert_status_matches_the_card(sandbox, outcomes, context);
    assert_card_safe(&sandbox.sim_report(), 0);
    holding.into_iter().for_each(|p| drop(p.kill()));
}

#[test]
fn contexts_that_cost_nothing_let_all_sixteen_start() {
    for nvml in [Nvml::PerProcess, Nvml::CardOnly] {
        let context = format!("cost 0, {nvml:?}");
        let sandbox = card("0", nvml);
        let (outcomes, holding) = sixteen_programs(&sandbox, "2");
        let refused: Vec<&Finished> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Refused(f) => Some(f),
                Outcome::Holding(..) => None,
            })
            .collect();
        assert!(refused.is_empty(), "{context}: refused {refused:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Holding(_, true))),
            "{context}: an allocation was refused"
        );
        assert_a_clean_start(&sandbox, &outcomes, holding, &context);
    }
}

#[test]
fn contexts_of_64_mib_are_charged_64_mib() {
    for nvml in [Nvml::PerProcess, Nvml::CardOnly] {
        let context = format!("cost 64 MiB, {nvml:?}");
        let sandbox = card("64MiB", nvml);
        // 16 x (64 + 16) MiB do not fit the 768 MiB budget: some are refused, cleanly.
        let (outcomes, holding) = sixteen_programs(&sandbox, "1");
        assert!(
            holding.len() >= 8,
            "{context}: only {} of 16 started",
            holding.len()
        );
        assert_a_clean_start(&sandbox, &outcomes, holding, &context);
    }
}

#[test]
fn contexts_of_700_mib_refuse_the_programs_that_do_not_fit_at_context_creation() {
    for nvml in [Nvml::PerProcess, Nvml::CardOnly] {
        let context = format!("cost 700 MiB, {nvml:?}");
        let sandbox = card("700MiB", nvml);
        let (outcomes, holding) = sixteen_programs(&sandbox, "2");
        // One context (700 MiB) and its 32 MiB fit the 768 MiB budget; every other program is
        // refused when it creates its context, before it allocates anything.
        assert_eq!(holding.len(), 1, "{context}");
        for outcome in &outcomes {
            if let Outcome::Refused(f) = outcome {
                assert!(f.stdout.contains("setup fail"), "{context}: {f:?}");
                assert_eq!(f.summary().ok, 0, "{context}: {f:?}");
            }
        }
        assert_a_clean_start(&sandbox, &outcomes, holding, &context);
    }
}

#[test]
fn a_context_larger_than_the_process_limit_is_refused_and_destroyed() {
    // Nothing is known of this card's contexts yet, so the 300 MiB estimate fits the 512 MiB
    // limit; the context then turns out to take 700 MiB: the guard releases it again and the
    // program gets a clean out-of-memory from its context creation.
    for path in [ClientPath::Direct, ClientPath::Procaddr] {
        let mut sandbox = Sandbox::new("4GiB");
        sandbox.set_env("SIMCUDA_CONTEXT_COST", "700MiB");
        sandbox.init();
        let mut command = sandbox.command(path, true);
        command
            .args(["--chunk", "16MiB", "--count", "1"])
            .env("VRAMGUARD_LIMIT", "512MiB");
        let finished = run(command);
        assert!(refused_cleanly(&finished), "{path:?}: {finished:?}");
        assert!(finished.stdout.contains("setup fail"), "{finished:?}");
        assert!(
            finished.stderr.contains("700 MiB"),
            "the message says what the context took: {finished:?}"
        );
        let report = sandbox.sim_report();
        assert_card_safe(&report, 0);
        // The context was released before the program went on: the card never held it past
        // the limit for longer than the measurement.
        assert_eq!(
            report["devices"][0]["used_bytes"].as_u64(),
            Some(0),
            "{report}"
        );
    }
}

#[test]
fn a_created_context_is_charged_what_it_took() {
    // cuCtxCreate while another context on the device is current: measured whatever the
    // management library says (here: nothing, it is not loaded), through the driver's figure.
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "40MiB");
    sandbox.without_nvml();
    sandbox.init();
    let holder = sandbox.start_holding(
        ClientPath::Direct,
        true,
        &[
            "--api",
            "ctx",
            "--count",
            "3",
            "--hold-until",
            sandbox.until_killed(),
        ],
        CLIENT_DEADLINE,
    );
    let pid = u64::from(holder.pid());
    let card = card_holds(&sandbox.sim_report());
    let shown = status_shows(&sandbox);
    // The primary context cannot be measured without the management library (no context is
    // current before it exists): it keeps the 300 MiB estimate. The three created ones are
    // charged their 40 MiB each.
    assert_eq!(card.get(&pid), Some(&(4 * 40 * MIB)), "{card:?}");
    assert_eq!(
        shown.get(&pid),
        Some(&(300 * MIB + 3 * 40 * MIB)),
        "{shown:?}"
    );
    drop(holder.kill());
}

/// The pids `vramguard status --json` shows waiting.
fn waiting(sandbox: &Sandbox) -> Vec<u64> {
    let mut command = sandbox.program(support::artifacts().cli);
    command.args(["status", "--json"]);
    let finished = run(command);
    let status: Value = serde_json::from_str(&finished.stdout).unwrap_or(Value::Null);
    status["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"].as_str() == Some("waiting"))
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

#[test]
fn programs_waiting_for_room_for_their_context_wait_in_line_together() {
    // The card is nearly full; two programs under `wait` both need room for a context. The
    // first must not hold the context-creation lock while it waits: both are seen waiting in
    // the ledger, and both start once the memory is freed.
    let sandbox = card("300MiB", Nvml::PerProcess);
    // 1 GiB card, 768 MiB budget: 300 MiB context + 400 MiB leaves 68 MiB.
    let holder = sandbox.hold(true, "400MiB");
    let waiters: Vec<Running> = (0..2)
        .map(|_| {
            let mut command = sandbox.command(ClientPath::Procaddr, true);
            // Only a context: what is tested is the wait for its room. (An allocation after it
            // could meet the killed holder's memory still on the simulated card for a moment.)
            command
                .args(["--chunk", "16MiB", "--count", "0"])
                .env("VRAMGUARD_POLICY", "wait")
                .env("VRAMGUARD_WAIT_TIMEOUT", guard_support::hang_wait_timeout());
            support::spawn(command)
        })
        .collect();
    let pids: Vec<u64> = waiters.iter().map(|w| u64::from(w.pid())).collect();
    let deadline = std::time::Instant::now() + CLIENT_DEADLINE;
    loop {
        let shown = waiting(&sandbox);
        if pids.iter().all(|p| shown.contains(p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both programs should be waiting in the ledger; waiting: {shown:?}, programs: {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(holder.kill());
    for waiter in waiters {
        let finished = waiter.finish(CLIENT_DEADLINE);
        assert_eq!(finished.status.code(), Some(0), "{finished:?}");
        // Neither found the creation lock kept by the other's wait.
        assert!(!finished.stderr.contains("unserialised"), "{finished:?}");
    }
    assert_card_safe(&sandbox.sim_report(), 0);
}

#[test]
fn a_management_library_that_hangs_does_not_stop_a_context_creation() {
    // NVML can hang on a wedged GPU: the guard gives up on it after its patience, says so once,
    // and measures through the driver where it can (the created contexts, with one current).
    let mut sandbox = Sandbox::new("4GiB");
    sandbox
        .set_env("SIMCUDA_CONTEXT_COST", "40MiB")
        .set_env("VRAMGUARD_NVML", support::broken_nvml().to_str().unwrap())
        .set_env("BROKEN_NVML", "hang");
    sandbox.init();
    let mut holder = sandbox.start_client(
        ClientPath::Direct,
        true,
        &[
            "--api",
            "ctx",
            "--count",
            "2",
            "--hold-until",
            sandbox.until_killed(),
        ],
    );
    holder.wait_for_line("holding", CLIENT_DEADLINE);
    let pid = u64::from(holder.pid());
    // The primary context keeps the 300 MiB estimate; the two created ones are measured.
    let shown = status_shows(&sandbox);
    assert_eq!(
        shown.get(&pid),
        Some(&(300 * MIB + 2 * 40 * MIB)),
        "{shown:?}"
    );
    let finished = holder.kill();
    let warnings = finished
        .stderr
        .matches("the management library did not answer")
        .count();
    assert_eq!(warnings, 1, "{finished:?}");
}
