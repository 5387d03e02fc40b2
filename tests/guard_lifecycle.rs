//! Memory that outlives the call that seems to free it: stream-ordered pools that keep freed
//! blocks (release threshold) and are trimmed, and a physical allocation released right after it
//! was mapped, memory that goes with its context; and memory charged to the device of its context
//! when the driver reuses a destroyed context's handle on another device, or when threads work on
//! different devices at once. At every stage the guard's ledger charges the process exactly what
//! the card says it holds.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use guard_support::{
    CLIENT_DEADLINE, MIB, assert_card_safe, charged, lifecycles_program, reused_context_program,
    sim_uuid, snapshot, threads_devices_program,
};
use std::path::PathBuf;

use support::Sandbox;

const CONTEXT: u64 = 300 * MIB;

/// What the simulated card says process `pid` holds on the device with `uuid` (all devices when
/// `None`).
fn card_holds_on(sandbox: &Sandbox, pid: u32, uuid: Option<[u8; 16]>) -> u64 {
    let report = sandbox.sim_report();
    let process = support::report::process(&report, pid)
        .unwrap_or_else(|| panic!("pid {pid} not on the card: {report}"));
    process["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| {
            uuid.is_none_or(|uuid| {
                d["uuid"]
                    .as_str()
                    .and_then(vramguard_core::cuda::CuUuid::parse)
                    .is_some_and(|u| u.0 == uuid)
            })
        })
        .filter_map(|d| d["used_bytes"].as_u64())
        .sum()
}

/// A step-by-step program of `tests/interposers/` (`steps.h`) running under the guard: it stops
/// at each stage until the test has looked at the ledger and the card.
struct Stepped {
    running: support::Running,
    stages: PathBuf,
}

impl Stepped {
    /// Starts `command` (made by [`Sandbox::program`]) with the guard preloaded.
    fn start(sandbox: &Sandbox, mut command: std::process::Command) -> Stepped {
        let stages = sandbox.root().join("stages");
        std::fs::create_dir_all(&stages).expect("create the stages directory");
        command
            .env("LD_PRELOAD", support::artifacts().preload)
            .env("VG_STAGE_DIR", &stages);
        Stepped {
            running: support::spawn(command),
            stages,
        }
    }

    fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// Waits until the program stops at `stage`.
    fn reach(&mut self, stage: &str) {
        self.running
            .wait_for_line(&format!("stage {stage}"), CLIENT_DEADLINE);
    }

    /// Lets the program go on from `stage`.
    fn pass(&self, stage: &str) {
        std::fs::write(self.stages.join(stage), b"").expect("create the stage file");
    }

    fn finish(self) -> support::Finished {
        self.running.finish(CLIENT_DEADLINE)
    }
}

/// A simulated machine with two 4 GiB cards and the simulator settings `env`, and the cards'
/// UUIDs.
fn two_cards(env: &[(&str, &str)]) -> (Sandbox, [[u8; 16]; 2]) {
    let mut sandbox = Sandbox::new("4GiB;4GiB");
    for (key, value) in env {
        sandbox.set_env(key, value);
    }
    sandbox.init();
    let report = sandbox.sim_report();
    let uuids = [sim_uuid(&report, 0), sim_uuid(&report, 1)];
    (sandbox, uuids)
}

/// Both the card and the ledger say process `pid` holds `expected` bytes on the device `uuid`.
fn assert_device_holds(
    sandbox: &Sandbox,
    ledger: &vramguard_core::ledger::Snapshot,
    pid: u32,
    uuid: [u8; 16],
    expected: u64,
    what: &str,
) {
    let card = card_holds_on(sandbox, pid, Some(uuid));
    assert_eq!(card, expected, "the card's {what}");
    assert_eq!(
        charged(ledger, pid, uuid),
        expected,
        "the ledger's {what} (card holds {card})"
    );
}

/// What the simulated card says process `pid` holds (it uses one device).
fn card_holds(sandbox: &Sandbox, pid: u32) -> u64 {
    card_holds_on(sandbox, pid, None)
}

#[test]
fn the_ledger_follows_the_card_through_pools_and_mappings() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    let mut running = Stepped::start(&sandbox, sandbox.program(lifecycles_program()));
    let pid = running.pid();
    let stages = [
        ("start", CONTEXT),
        // Freed, synchronised, but the pool keeps it (threshold = max): still charged.
        ("pool-cached", CONTEXT + 100 * MIB),
        // A smaller allocation reuses the pool's block: nothing new.
        ("pool-reused", CONTEXT + 100 * MIB),
        ("pool-trimmed", CONTEXT),
        // The handle is released but the mapping keeps the memory.
        ("mapped-released", CONTEXT + 20 * MIB),
        ("unmapped", CONTEXT),
        // A created context with 50 MiB left in it, then destroyed: both go.
        ("created-context-holding", 2 * CONTEXT + 50 * MIB),
        ("created-context-destroyed", CONTEXT),
        // 30 MiB left in the primary context, whose last release frees it.
        ("primary-holding", CONTEXT + 30 * MIB),
        ("done", 0),
    ];
    for (stage, expected) in stages {
        running.reach(stage);
        let ledger = charged(&snapshot(&sandbox), pid, uuid);
        let card = card_holds(&sandbox, pid);
        assert_eq!(card, expected, "the card at {stage}");
        assert_eq!(
            ledger, expected,
            "the ledger at {stage} (card holds {card})"
        );
        running.pass(stage);
    }
    let finished = running.finish();
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
}

/// A context destroyed, and a new one on another device that the driver gives the same handle:
/// the guard's cache of each context's device must not outlive the first context, so the second
/// context's memory is charged to the second device. (The simulator reuses handles only with
/// `SIMCUDA_REUSE_HANDLES=1`; the test checks the handle really was reused.)
#[test]
fn a_reused_context_handle_is_charged_to_its_new_device() {
    reused_handle_on_another_device(None);
}

/// The same while the destroying call has not returned yet: another thread creates the new
/// context (same handle) and allocates in it meanwhile. Its memory must be charged to the second
/// device, and must not be released with the first context when the destroying call returns.
#[test]
fn a_context_reused_before_its_destruction_returns_keeps_its_memory() {
    reused_handle_on_another_device(Some("cuCtxDestroy_v2:400ms"));
}

/// Runs `tests/interposers/reused_context.c` (a context on device 0 holding 40 MiB, destroyed; one
/// on device 1 with the same handle holding 60 MiB, then freed and destroyed), racing the
/// destruction when the destroying call is slowed by `return_delay`, and checks both devices at
/// each stage.
fn reused_handle_on_another_device(return_delay: Option<&str>) {
    let mut env = vec![("SIMCUDA_REUSE_HANDLES", "1")];
    env.extend(return_delay.map(|delay| ("SIMCUDA_RETURN_DELAY", delay)));
    let (sandbox, [first, second]) = two_cards(&env);
    let mut command = sandbox.program(reused_context_program());
    if return_delay.is_some() {
        command.arg("--race");
    }
    let mut running = Stepped::start(&sandbox, command);
    let pid = running.pid();
    let stages = [
        // (stage, on the first device, on the second device)
        ("first-holding", CONTEXT + 40 * MIB, 0),
        ("second-holding", 0, CONTEXT + 60 * MIB),
        ("second-freed", 0, CONTEXT),
        ("done", 0, 0),
    ];
    for (stage, on_first, on_second) in stages {
        if stage == "second-holding" {
            let handles = running.running.wait_for_line("handles ", CLIENT_DEADLINE);
            let (a, b) = handles
                .trim_start_matches("handles first=")
                .split_once(" second=")
                .expect("handles line");
            assert_eq!(a, b, "the driver did not reuse the handle: {handles}");
        }
        running.reach(stage);
        let ledger = snapshot(&sandbox);
        for (uuid, expected, which) in [(first, on_first, "first"), (second, on_second, "second")] {
            assert_device_holds(
                &sandbox,
                &ledger,
                pid,
                uuid,
                expected,
                &format!("{which} device at {stage}"),
            );
        }
        running.pass(stage);
    }
    let finished = running.finish();
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
    assert_card_safe(&sandbox.sim_report(), 0);
    assert_card_safe(&sandbox.sim_report(), 1);
}

/// Two threads allocating at the same time, each in the primary context of its own device (the
/// guard's cache of contexts' devices is shared by the threads): every byte is charged to the
/// device of the thread's context.
#[test]
fn threads_on_two_devices_are_charged_to_their_own_devices() {
    let (sandbox, uuids) = two_cards(&[]);
    let mut running = Stepped::start(&sandbox, sandbox.program(threads_devices_program()));
    let pid = running.pid();
    running.reach("held");
    let ledger = snapshot(&sandbox);
    for (ordinal, uuid) in uuids.into_iter().enumerate() {
        let expected = CONTEXT + (ordinal as u64 + 1) * 10 * MIB;
        assert_device_holds(
            &sandbox,
            &ledger,
            pid,
            uuid,
            expected,
            &format!("device {ordinal}"),
        );
    }
    running.pass("held");
    let finished = running.finish();
    assert_eq!(finished.status.code(), Some(0), "{finished:?}");
}
