//! The ledger is a record that can always be rebuilt from its members: real guarded processes on
//! a simulated 4 GiB card hold memory and make no CUDA call while someone damages the ledger
//! file under them (a forged total, a random body under an intact header, the magic number
//! overwritten, a live member's token forged into a lock word, the file removed). Their watcher
//! threads find it and rebuild (or follow) one ledger, in which each re-registers what it holds,
//! and a newcomer sees them all. Also: a reserve that leaves no budget is an invalid setting,
//! said once, and never stored for those who come later.

#[path = "support/guard.rs"]
mod guard_support;
mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use guard_support::{GIB, MIB, guard_lines, sim_uuid, wait_for_ledger};
use support::{ClientPath, HANG_GUARD, Running, Sandbox};
use vramguard_core::ledger::{Ledger, Snapshot, layout};

/// Two guarded holders (1 GiB and 512 MiB) that make no call once they hold.
fn two_holders(sandbox: &Sandbox) -> (Running, Running) {
    (sandbox.hold(true, "1GiB"), sandbox.hold(true, "512MiB"))
}

fn ledger_file(sandbox: &Sandbox) -> PathBuf {
    sandbox.ledger_dir.join(layout::FILE_NAME)
}

/// Writes `bytes` at `offset` of the ledger file (as any user who may write it can).
fn write_at(sandbox: &Sandbox, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(ledger_file(sandbox))
        .expect("open the ledger file for writing");
    file.write_all_at(bytes, offset).expect("write the ledger");
}

/// What each live process is charged on the card, by pid.
fn charges(snapshot: &Snapshot, uuid: [u8; 16]) -> Vec<(i32, u64)> {
    let mut charges: Vec<(i32, u64)> = snapshot
        .processes
        .iter()
        .filter(|p| p.alive)
        .map(|p| {
            let charged = p
                .devices
                .iter()
                .filter(|d| d.uuid == uuid)
                .map(|d| d.charged)
                .sum();
            (p.pid, charged)
        })
        .collect();
    charges.sort_unstable();
    charges
}

/// Whether the snapshot's device totals are the sums of its processes' figures.
fn totals_agree(snapshot: &Snapshot, uuid: [u8; 16]) -> bool {
    snapshot.devices.iter().filter(|d| d.uuid == uuid).all(|d| {
        let sum: u64 = charges(snapshot, uuid).iter().map(|(_, c)| c).sum();
        d.used == sum
    })
}

/// The card's UUID and what each holder is charged once both hold.
fn before_damage(sandbox: &Sandbox, pids: &[u32]) -> ([u8; 16], Vec<(i32, u64)>) {
    let uuid = sim_uuid(&sandbox.sim_report(), 0);
    let snapshot = wait_for_ledger(sandbox, HANG_GUARD, "both holders", |s| {
        charges(s, uuid).len() == pids.len()
    });
    let before = charges(&snapshot, uuid);
    assert!(before.iter().all(|(_, c)| *c >= 512 * MIB), "{before:?}");
    (uuid, before)
}

/// Waits until the ledger at the path shows exactly `expected` (pid, charge) with totals that
/// agree with them.
fn wait_for_members(sandbox: &Sandbox, uuid: [u8; 16], expected: &[(i32, u64)], what: &str) {
    wait_for_ledger(sandbox, HANG_GUARD, what, |s| {
        charges(s, uuid) == expected && totals_agree(s, uuid)
    });
}

/// A newcomer takes 1 GiB guarded, and sees the holders: the card's budget less what they hold
/// leaves it room, and the ledger shows all three.
fn newcomer_sees_them(sandbox: &Sandbox, uuid: [u8; 16], holders: &[(i32, u64)]) -> Running {
    let newcomer = sandbox.hold(true, "1GiB");
    let pid = newcomer.pid() as i32;
    wait_for_ledger(sandbox, HANG_GUARD, "the newcomer beside them", |s| {
        let all = charges(s, uuid);
        all.iter().any(|(p, c)| *p == pid && *c >= GIB)
            && holders.iter().all(|holder| all.contains(holder))
            && all.len() == holders.len() + 1
            && totals_agree(s, uuid)
    });
    newcomer
}

fn finish(runnings: Vec<Running>) -> Vec<String> {
    runnings.into_iter().map(|r| r.kill().stderr).collect()
}

#[test]
fn a_forged_total_is_recomputed_from_the_slots() {
    let sandbox = Sandbox::new("4GiB");
    let (a, b) = two_holders(&sandbox);
    let (uuid, before) = before_damage(&sandbox, &[a.pid(), b.pid()]);
    // Device record 0's `charged` (offset 40 of the record): 3.9 GiB, "4 GiB can never fit".
    let charged = layout::DEVICES_OFFSET as u64 + 40;
    write_at(&sandbox, charged, &(3_900 * MIB).to_le_bytes());
    wait_for_members(&sandbox, uuid, &before, "the forged total recomputed");
    let stderr = finish(vec![a, b]);
    assert!(
        stderr
            .iter()
            .any(|e| e.contains("disagreed with its slots") && e.contains("recomputed")),
        "no member said what it repaired: {stderr:?}"
    );
}

#[test]
fn a_random_body_under_an_intact_header_is_rebuilt_with_every_members_holdings() {
    let sandbox = Sandbox::new("4GiB");
    let (a, b) = two_holders(&sandbox);
    let (uuid, before) = before_damage(&sandbox, &[a.pid(), b.pid()]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let body: Vec<u8> = (0..layout::FILE_SIZE - layout::HEADER_SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    write_at(&sandbox, layout::HEADER_SIZE as u64, &body);
    wait_for_members(&sandbox, uuid, &before, "both holders in a rebuilt ledger");
    let newcomer = newcomer_sees_them(&sandbox, uuid, &before);
    finish(vec![a, b, newcomer]);
}

#[test]
fn an_overwritten_magic_number_is_rebuilt_not_taken_for_a_truncation() {
    let sandbox = Sandbox::new("4GiB");
    let (a, b) = two_holders(&sandbox);
    let (uuid, before) = before_damage(&sandbox, &[a.pid(), b.pid()]);
    write_at(&sandbox, 0, b"NOTAGRD\0");
    wait_for_members(&sandbox, uuid, &before, "both holders in a rebuilt ledger");
    let newcomer = newcomer_sees_them(&sandbox, uuid, &before);
    let stderr = finish(vec![a, b, newcomer]);
    for text in &stderr {
        for line in guard_lines(text) {
            assert!(
                !line.contains("truncated") && !line.contains("unguarded"),
                "{line}"
            );
        }
    }
}

#[test]
fn a_removed_ledger_ends_in_one_ledger_with_survivors_and_newcomer() {
    let sandbox = Sandbox::new("4GiB");
    let (a, b) = two_holders(&sandbox);
    let (uuid, before) = before_damage(&sandbox, &[a.pid(), b.pid()]);
    std::fs::remove_file(ledger_file(&sandbox)).expect("remove the ledger");
    // The newcomer may come before or after the survivors moved: either way one ledger.
    let newcomer = newcomer_sees_them(&sandbox, uuid, &before);
    let entries: Vec<_> = std::fs::read_dir(&sandbox.ledger_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from(layout::FILE_NAME)]);
    finish(vec![a, b, newcomer]);
}

#[test]
fn a_forged_lock_word_is_rebuilt_past_its_deadline_and_nothing_passes_unguarded() {
    let sandbox = Sandbox::new("4GiB");
    let (a, b) = two_holders(&sandbox);
    let (uuid, before) = before_damage(&sandbox, &[a.pid(), b.pid()]);
    // A live member's token in device record 0's lock word (offset 64 of the record).
    let ledger = Ledger::open_existing(&sandbox.ledger_dir).unwrap();
    let slot = ledger
        .snapshot()
        .processes
        .iter()
        .find(|p| p.pid == a.pid() as i32)
        .expect("holder a")
        .slot;
    drop(ledger);
    let slot_offset =
        layout::SLOTS_OFFSET as u64 + u64::from(slot) * layout::SLOT_RECORD_SIZE as u64;
    let mut generation = [0u8; 8];
    OpenOptions::new()
        .read(true)
        .open(ledger_file(&sandbox))
        .unwrap()
        .read_exact_at(&mut generation, slot_offset + 8)
        .unwrap();
    let token = ((u64::from_le_bytes(generation) & 0xffff_ffff) << 32) | (u64::from(slot) + 1);
    write_at(
        &sandbox,
        layout::DEVICES_OFFSET as u64 + 64,
        &token.to_le_bytes(),
    );
    // Ten allocations of a newcomer: at most one of them waits for the rebuild; every one is
    // guarded (none passes through for a lock that cannot be had).
    let started = Instant::now();
    let (finished, _) = sandbox.run_client(
        ClientPath::Direct,
        true,
        &["--chunk", "100MiB", "--count", "10"],
    );
    let took = started.elapsed();
    assert!(finished.status.success(), "{finished:?}");
    for line in guard_lines(&finished.stderr) {
        assert!(
            !line.contains("unguarded") && !line.contains("could not be taken"),
            "{line}"
        );
    }
    wait_for_members(&sandbox, uuid, &before, "both holders in a rebuilt ledger");
    let ledger = Ledger::open_existing(&sandbox.ledger_dir).unwrap();
    let dev = ledger
        .find_device(uuid)
        .expect("the card in the rebuilt ledger");
    assert_eq!(ledger.device_lock_token(dev), 0, "the lock is free");
    println!("ten allocations behind a forged lock word took {took:?}");
    finish(vec![a, b]);
}

#[test]
fn a_reserve_that_leaves_no_budget_is_said_once_and_never_stored_for_later_processes() {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env("VRAMGUARD_RESERVE", "100%");
    let (first, _) = sandbox.run_client(
        ClientPath::Direct,
        true,
        &["--chunk", "100MiB", "--count", "3"],
    );
    assert!(first.status.success(), "{first:?}");
    let said: Vec<&str> = guard_lines(&first.stderr)
        .into_iter()
        .filter(|l| l.contains("invalid setting VRAMGUARD_RESERVE"))
        .collect();
    assert_eq!(said.len(), 1, "{}", first.stderr);
    assert!(said[0].contains("leaves no budget"), "{}", said[0]);
    let summary = first.summary();
    assert_eq!(summary.ok, 3, "{first:?}");
    // The next process, with the default reserve, gets its 3 GiB.
    sandbox.unset_env("VRAMGUARD_RESERVE");
    let (next, _) = sandbox.run_client(
        ClientPath::Direct,
        true,
        &["--chunk", "3GiB", "--count", "1"],
    );
    assert!(next.status.success(), "{next:?}");
    assert_eq!(next.summary().ok, 1, "{next:?}");
    let ledger = Ledger::open_existing(&sandbox.ledger_dir).unwrap();
    let snapshot = ledger.snapshot();
    assert_eq!(
        snapshot.devices[0].budget,
        4 * GIB - 256 * MIB,
        "{snapshot:?}"
    );
}

#[test]
fn status_and_doctor_say_what_they_found_and_repaired_and_never_call_bad_totals_valid() {
    let sandbox = Sandbox::new("4GiB");
    let (finished, _) = sandbox.run_client(
        ClientPath::Direct,
        true,
        &["--chunk", "100MiB", "--count", "1"],
    );
    assert!(finished.status.success(), "{finished:?}");
    // No member is left; a forged `charged` of device record 0 (offset 40 of the record).
    let forge = || {
        write_at(
            &sandbox,
            layout::DEVICES_OFFSET as u64 + 40,
            &(5874u64 << 50).to_le_bytes(),
        )
    };
    let cli = |args: &[&str]| {
        let mut command = sandbox.program(support::artifacts().cli);
        command.args(args);
        guard_support::run(command)
    };
    forge();
    let doctor = cli(&["doctor"]);
    assert!(
        doctor.stdout.contains("disagreed with its slots")
            && doctor.stdout.contains("recomputed them from the slots"),
        "{doctor:?}"
    );
    let again = cli(&["doctor"]);
    assert!(!again.stdout.contains("disagreed"), "{again:?}");
    assert!(again.stdout.contains("is valid"), "{again:?}");
    forge();
    let status = cli(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    let repairs = report["repairs"].as_array().expect("repairs");
    assert_eq!(repairs.len(), 1, "{report}");
    assert_eq!(repairs[0]["repaired"], serde_json::Value::Bool(true));
    assert!(
        repairs[0]["found"]
            .as_str()
            .is_some_and(|f| f.contains("disagreed with its slots")),
        "{report}"
    );
    let ledger = Ledger::open_existing(&sandbox.ledger_dir).unwrap();
    let snapshot = ledger.snapshot();
    assert!(
        totals_agree(&snapshot, sim_uuid(&sandbox.sim_report(), 0)),
        "{snapshot:?}"
    );
    assert_eq!(snapshot.devices[0].used, 0, "{snapshot:?}");
    forge();
    let human = cli(&["status"]);
    assert!(
        human.stdout.contains("ledger: the totals of")
            && human.stdout.contains("recomputed them from the slots"),
        "{human:?}"
    );
}
