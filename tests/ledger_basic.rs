//! Single-process behaviour of the ledger: accounting of reserve/commit/rollback/release and
//! claims, refusals, membership, snapshots, and the on-disk header format.

mod ledger_support;

use std::time::{Duration, Instant};

use ledger_support::{TempDir, device, device_totals, fresh_member, hold, uuid};
use vramguard_core::ledger::{Ledger, ProcessState, Refusal, Request, layout};

const MIB: u64 = 1 << 20;

#[test]
fn reserve_commit_release_account_every_byte() {
    let (_dir, _, ledger, dev, me) = fresh_member("basic", 1000 * MIB, "basic-test");
    let deny = Request::default();

    let r = ledger.reserve(me, dev, 300 * MIB, &deny).unwrap();
    assert_eq!(r.bytes(), 300 * MIB);
    // The reservation hands back what `available` answers with it counted.
    assert_eq!(r.available_after(), 700 * MIB);
    assert_eq!(r.available_after(), ledger.available(me, dev, None));
    assert_eq!(ledger.charge(me, dev), 300 * MIB);
    assert_eq!(device_totals(&ledger), (300 * MIB, 300 * MIB, 0));
    ledger.commit(r);
    assert_eq!(device_totals(&ledger), (300 * MIB, 0, 300 * MIB));

    let r2 = ledger.reserve(me, dev, 700 * MIB, &deny).unwrap();
    match ledger.reserve(me, dev, 1, &deny) {
        Err(Refusal::NoRoom {
            requested: 1,
            available: 0,
        }) => {}
        other => panic!("expected NoRoom, got {other:?}"),
    }
    ledger.rollback(r2);
    assert_eq!(ledger.available(me, dev, None), 700 * MIB);
    assert_eq!(ledger.available(me, dev, Some(400 * MIB)), 100 * MIB);

    ledger.release(me, dev, 100 * MIB);
    assert_eq!(ledger.charge(me, dev), 200 * MIB);
    // Releasing more than held saturates at zero.
    ledger.release(me, dev, 10_000 * MIB);
    assert_eq!(ledger.charge(me, dev), 0);
    assert_eq!(ledger.snapshot().devices[0].used, 0);
    ledger.leave(me);
    assert!(ledger.snapshot().processes.is_empty());
}

#[test]
fn never_fits_and_over_limit_are_refused_at_once_even_when_waiting() {
    let (_dir, _, ledger, dev, me) = fresh_member("never", 1000 * MIB, "never");
    // At once: it never queues, so the wait's report is never made.
    let waits = std::cell::Cell::new(0u32);
    let on_wait = |_: &vramguard_core::ledger::WaitReport| waits.set(waits.get() + 1);
    let wait = Request {
        wait_until: Some(Instant::now() + Duration::from_secs(30)),
        on_wait: Some(&on_wait),
        ..Request::default()
    };
    assert!(
        matches!(ledger.reserve(me, dev, 1001 * MIB, &wait), Err(Refusal::NeverFits { budget, .. }) if budget == 1000 * MIB)
    );
    let limited = Request {
        limit: Some(100 * MIB),
        ..wait
    };
    let r = ledger.reserve(me, dev, 60 * MIB, &limited).unwrap();
    ledger.commit(r);
    // Past the limit: what the member holds and asks, and no "can never fit" (it would fit).
    let refusal = ledger.reserve(me, dev, 50 * MIB, &limited).unwrap_err();
    assert!(
        matches!(refusal, Refusal::OverLimit { requested, held, limit }
            if (requested, held, limit) == (50 * MIB, 60 * MIB, 100 * MIB)),
        "{refusal:?}"
    );
    assert_eq!(
        refusal.to_string(),
        format!(
            "the process reached its per-process limit: it holds {} of its {} bytes and asks {} more",
            60 * MIB,
            100 * MIB,
            50 * MIB
        )
    );
    // Larger than the limit itself.
    let refusal = ledger.reserve(me, dev, 101 * MIB, &limited).unwrap_err();
    assert!(
        matches!(refusal, Refusal::OverLimit { requested, .. } if requested == 101 * MIB),
        "{refusal:?}"
    );
    assert!(
        refusal
            .to_string()
            .contains("can never fit within the per-process limit")
    );
    assert_eq!(waits.get(), 0, "a request that can never fit waited");
    assert_eq!(ledger.snapshot().devices[0].waiting, 0);
    ledger.leave(me);
}

#[test]
fn claims_charge_up_front_and_cover_allocations_inside_them() {
    let (_dir, _, ledger, dev, a) = fresh_member("claim", 1000 * MIB, "a");
    let deny = Request::default();
    ledger.set_claim(a, dev, 600 * MIB, &deny).unwrap();
    assert_eq!(ledger.snapshot().devices[0].used, 600 * MIB);
    // Inside the claim: no new room needed.
    let r = ledger.reserve(a, dev, 500 * MIB, &deny).unwrap();
    assert_eq!(ledger.snapshot().devices[0].used, 600 * MIB);
    // 400 MiB of room plus the 100 MiB of the claim this reservation leaves unused.
    assert_eq!(r.available_after(), 500 * MIB);
    assert_eq!(r.available_after(), ledger.available(a, dev, None));
    assert_eq!(ledger.unbacked_by_others(a, dev), 0);
    ledger.commit(r);
    // Past the claim: only the excess counts.
    let r = ledger.reserve(a, dev, 300 * MIB, &deny).unwrap();
    assert_eq!(ledger.snapshot().devices[0].used, 800 * MIB);
    ledger.commit(r);
    // A second member sees the first one's unused claim as unbacked.
    let b = ledger.join("b").unwrap();
    ledger.release(a, dev, 700 * MIB);
    assert_eq!(ledger.charge(a, dev), 600 * MIB);
    assert_eq!(ledger.unbacked_by_others(b, dev), 500 * MIB);
    assert!(
        matches!(ledger.reserve(b, dev, 500 * MIB, &deny), Err(Refusal::NoRoom { available, .. }) if available == 400 * MIB)
    );
    ledger.set_claim(a, dev, 0, &deny).unwrap();
    assert_eq!(ledger.charge(a, dev), 100 * MIB);
    let r = ledger.reserve(b, dev, 500 * MIB, &deny).unwrap();
    ledger.rollback(r);
    ledger.leave(a);
    ledger.leave(b);
    assert_eq!(ledger.snapshot().devices[0].used, 0);
}

#[test]
fn devices_are_found_by_uuid_and_keep_their_first_budget() {
    let dir = TempDir::new("devices");
    let ledger = dir.open_ledger();
    let d0 = ledger
        .register_device(uuid(1), "First", 4 << 30, 3 << 30)
        .unwrap();
    let d1 = ledger
        .register_device(uuid(2), "Second", 8 << 30, 7 << 30)
        .unwrap();
    assert_ne!(d0, d1);
    let other = dir.open_ledger();
    assert_eq!(
        other
            .register_device(uuid(2), "Second", 8 << 30, 1 << 30)
            .unwrap(),
        d1
    );
    assert_eq!(other.budget(d1), 7 << 30);
    let names: Vec<String> = other
        .snapshot()
        .devices
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["First", "Second"]);
    // All 64 records can be used, the 65th is refused with a clear error.
    for n in 3..=64u8 {
        ledger
            .register_device(uuid(n), "More", 1 << 30, 1 << 30)
            .unwrap();
    }
    let error = ledger
        .register_device(uuid(65), "Too many", 1 << 30, 1 << 30)
        .unwrap_err();
    assert!(
        error.to_string().contains("all 64 device records"),
        "{error}"
    );
}

#[test]
fn dropped_handle_counts_as_dead_and_is_reclaimed() {
    let dir = TempDir::new("dropped");
    let survivor = dir.open_ledger();
    let dev = device(&survivor, 1000 * MIB);
    {
        let doomed = dir.open_ledger();
        let slot = doomed.join("doomed").unwrap();
        hold(&doomed, slot, dev, 400 * MIB);
        let r = doomed
            .reserve(slot, dev, 100 * MIB, &Request::default())
            .unwrap();
        let _in_flight_when_dropped = r;
        let snap = survivor.snapshot();
        assert!(snap.processes.iter().all(|p| p.alive));
    }
    let snap = survivor.snapshot();
    assert_eq!(snap.processes.len(), 1);
    assert!(!snap.processes[0].alive, "dead member must be flagged");
    assert_eq!(snap.devices[0].used, 500 * MIB);
    // The next decision that would otherwise refuse reclaims it.
    let me = survivor.join("survivor").unwrap();
    let r = survivor
        .reserve(me, dev, 900 * MIB, &Request::default())
        .unwrap();
    assert_eq!(survivor.snapshot().devices[0].used, 900 * MIB);
    survivor.rollback(r);
    assert_eq!(survivor.reclaim_dead(), 0);
    survivor.leave(me);
}

#[test]
fn reclaim_dead_returns_bytes_of_dead_members_only() {
    let (dir, _, ledger, dev, alive) = fresh_member("reclaim", 1000 * MIB, "alive");
    hold(&ledger, alive, dev, 100 * MIB);
    {
        let doomed = dir.open_ledger();
        let slot = doomed.join("doomed").unwrap();
        doomed
            .set_claim(slot, dev, 250 * MIB, &Request::default())
            .unwrap();
    }
    assert_eq!(ledger.reclaim_dead(), 250 * MIB);
    assert_eq!(ledger.charge(alive, dev), 100 * MIB);
    assert_eq!(ledger.snapshot().devices[0].used, 100 * MIB);
    ledger.leave(alive);
}

#[test]
fn snapshot_shows_members_and_waiting_state() {
    let (_dir, _, ledger, dev, me) = fresh_member("snapshot", 100 * MIB, "holder --with args");
    hold(&ledger, me, dev, 100 * MIB);
    let snap = ledger.snapshot();
    let p = &snap.processes[0];
    assert_eq!(
        (p.pid, p.command.as_str(), p.alive),
        (std::process::id() as i32, "holder --with args", true)
    );
    assert_eq!(p.state, ProcessState::Running);
    assert_eq!(p.devices[0].held, 100 * MIB);
    assert_eq!(p.devices[0].uuid, uuid(0));
    ledger.leave(me);
}

#[test]
fn open_existing_never_creates() {
    let dir = TempDir::new("existing");
    let error = Ledger::open_existing(&dir.ledger_dir())
        .err()
        .expect("must not create");
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(!dir.ledger_dir().exists());
    dir.open_ledger();
    let ledger = Ledger::open_existing(&dir.ledger_dir()).unwrap();
    assert!(!ledger.is_read_only());
}

#[test]
fn directory_and_file_are_shared_with_every_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let ledger = dir.open_ledger();
    let dir_mode = std::fs::metadata(dir.ledger_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let file_mode = std::fs::metadata(ledger.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(dir_mode, 0o1777);
    assert_eq!(file_mode, 0o666);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.ledger_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [layout::FILE_NAME]);
}

/// The header on disk is the one docs/ledger.md specifies, byte for byte.
#[test]
fn layout_offsets_are_pinned() {
    let dir = TempDir::new("layout");
    let ledger = dir.open_ledger();
    let dev = ledger
        .register_device(uuid(7), "Pinned", 4096, 2048)
        .unwrap();
    let me = ledger.join("pinned").unwrap();
    hold(&ledger, me, dev, 1000);
    // The driver says 3000 of 4096 are free: 1096 used, 96 of them not held by the ledger.
    ledger.note_driver_memory(dev, 3000, 4096);
    let bytes = std::fs::read(ledger.path()).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(bytes.len(), 3_289_216);
    assert_eq!(layout::FILE_SIZE, 3_289_216);
    assert_eq!(&bytes[0..8], b"VRAMGRD\0");
    assert_eq!(u32_at(8), 1, "layout version");
    assert_eq!(u32_at(12), 128, "header size");
    assert_eq!(u64_at(16), 3_289_216, "file size");
    assert_eq!(
        (u32_at(24), u32_at(28)),
        (1024, 64),
        "max processes, max devices"
    );
    assert_eq!((u32_at(32), u32_at(36)), (192, 3200), "record sizes");
    assert_eq!(
        (u64_at(40), u64_at(48), u64_at(56)),
        (128, 12_416, 3_289_216),
        "offsets"
    );
    // Device record 0 at 128.
    let device = 128;
    assert_eq!(&bytes[device..device + 16], &uuid(7));
    assert_eq!(u32_at(device + 16), 2, "ready");
    assert_eq!(
        (u64_at(device + 24), u64_at(device + 32)),
        (4096, 2048),
        "capacity, budget"
    );
    assert_eq!(
        (
            u64_at(device + 40),
            u64_at(device + 48),
            u64_at(device + 56)
        ),
        (1000, 1000, 0)
    );
    assert_eq!(&bytes[device + 88..device + 94], b"Pinned");
    assert_eq!(
        (u64_at(device + 152), u64_at(device + 160)),
        (0, 0),
        "no context measured yet"
    );
    assert_eq!(ledger.context_cost(dev), None);
    ledger.note_context_cost(dev, 3000, 1_700_000_000_000);
    let bytes = std::fs::read(ledger.path()).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(
        (u64_at(device + 152), u64_at(device + 160)),
        (3000, 1_700_000_000_000),
        "context_bytes, context_measured_unix_ms"
    );
    assert_eq!(ledger.context_cost(dev), Some(3000));
    // A figure past the capacity (a damaged file) is clamped.
    ledger.note_context_cost(dev, 1 << 40, 1);
    assert_eq!(ledger.context_cost(dev), Some(4096));
    assert_eq!(
        (u64_at(device + 168), u64_at(device + 176)),
        (1096, 96),
        "driver_used, driver_unaccounted"
    );
    let seen = u64_at(device + 184);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(seen > 0 && seen <= now, "driver_seen_unix_ms {seen}");
    // Slot record of our slot at 12416 + index * 3200; its device 0 share at +128.
    let slot = 12_416 + me.index() as usize * 3200;
    assert_eq!(u32_at(slot), 1, "active");
    assert_eq!(u32_at(slot + 4), std::process::id());
    assert_eq!(&bytes[slot + 64..slot + 70], b"pinned");
    assert_eq!(
        (u64_at(slot + 128), u64_at(slot + 136), u64_at(slot + 144)),
        (1000, 0, 0)
    );
    ledger.leave(me);
}

/// What a guarded process last learned from the driver: none until one asks, then the card's
/// used bytes and, of them, what the ledger did not hold at that moment (never below zero).
#[test]
fn the_driver_figure_is_remembered_with_what_the_ledger_held_then() {
    let dir = TempDir::new("driver-figure");
    let ledger = dir.open_ledger();
    let dev = ledger
        .register_device(uuid(8), "Figure", 4000, 3000)
        .unwrap();
    assert_eq!(ledger.driver_figure(dev), None);
    assert_eq!(ledger.snapshot().devices[0].driver, None);
    let me = ledger.join("figure").unwrap();
    hold(&ledger, me, dev, 1000);
    ledger.note_driver_memory(dev, 2500, 4000);
    let figure = ledger.driver_figure(dev).expect("a figure");
    assert_eq!((figure.used, figure.unaccounted), (1500, 500));
    assert_eq!(ledger.snapshot().devices[0].driver, Some(figure));
    // Later the process frees its memory: the figure stays what it was when it was taken.
    ledger.release(me, dev, 1000);
    assert_eq!(ledger.driver_figure(dev).map(|f| f.unaccounted), Some(500));
    // A driver that counts less than the ledger holds (a context cheaper than charged).
    hold(&ledger, me, dev, 2000);
    ledger.note_driver_memory(dev, 2500, 4000);
    let figure = ledger.driver_figure(dev).unwrap();
    assert_eq!((figure.used, figure.unaccounted), (1500, 0));
    // A free figure above the total (a driver being odd) never wraps.
    ledger.note_driver_memory(dev, 5000, 4000);
    assert_eq!(ledger.driver_figure(dev).map(|f| f.used), Some(0));
    ledger.leave(me);
}

#[test]
fn ledger_is_send_and_sync() {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Ledger>();
}

/// A naive model of one device's admission: what the ledger must decide and count.
#[derive(Default, Clone, Copy)]
struct ModelMember {
    held: u64,
    in_flight: u64,
    claim: u64,
}

impl ModelMember {
    fn charge(&self) -> u64 {
        (self.held + self.in_flight).max(self.claim)
    }
}

#[test]
fn random_operations_match_a_naive_model() {
    let seed = ledger_support::seed();
    println!("model seed {seed}");
    let mut rng = ledger_support::Rng::new(seed);
    for round in 0..20 {
        let dir = TempDir::new("model");
        let ledger = dir.open_ledger();
        let budget = (100 + rng.below(1000)) * MIB;
        let dev = device(&ledger, budget);
        let members: Vec<_> = (0..3)
            .map(|i| ledger.join(&format!("m{i}")).unwrap())
            .collect();
        let mut model = [ModelMember::default(); 3];
        let mut pending: Vec<Vec<vramguard_core::ledger::Reservation>> =
            vec![Vec::new(), Vec::new(), Vec::new()];
        for step in 0..2000 {
            let who = rng.below(3) as usize;
            let me = members[who];
            let limit = (rng.below(4) == 0).then(|| rng.below(budget));
            let request = Request {
                limit,
                ..Request::default()
            };
            let charged: u64 = model.iter().map(ModelMember::charge).sum();
            match rng.below(6) {
                0 | 1 => {
                    let bytes = rng.below(budget / 3 + 1);
                    let m = model[who];
                    let after = ModelMember {
                        in_flight: m.in_flight + bytes,
                        ..m
                    };
                    let over_limit = limit.is_some_and(|l| m.held + m.in_flight + bytes > l);
                    let fits = charged - m.charge() + after.charge() <= budget;
                    match ledger.reserve(me, dev, bytes, &request) {
                        Ok(r) => {
                            assert!(
                                !over_limit && fits,
                                "round {round} step {step}: admitted what does not fit"
                            );
                            model[who] = after;
                            pending[who].push(r);
                        }
                        Err(Refusal::NeverFits { .. }) => {
                            assert!(bytes > budget, "round {round} step {step}")
                        }
                        Err(Refusal::OverLimit { held, .. }) => {
                            assert!(over_limit && bytes <= budget, "round {round} step {step}");
                            assert_eq!(held, m.held + m.in_flight, "round {round} step {step}");
                        }
                        Err(Refusal::NoRoom { available, .. }) => {
                            assert!(
                                !fits && !over_limit,
                                "round {round} step {step}: refused what fits"
                            );
                            assert_eq!(available, budget - charged);
                        }
                        Err(other) => panic!("round {round} step {step}: {other:?}"),
                    }
                }
                2 => {
                    if let Some(r) = pending[who].pop() {
                        model[who].in_flight -= r.bytes();
                        model[who].held += r.bytes();
                        ledger.commit(r);
                    }
                }
                3 => {
                    if let Some(r) = pending[who].pop() {
                        model[who].in_flight -= r.bytes();
                        ledger.rollback(r);
                    }
                }
                4 => {
                    let bytes = rng.below(model[who].held + 2);
                    model[who].held -= bytes.min(model[who].held);
                    ledger.release(me, dev, bytes);
                }
                _ => {
                    let claim = if rng.below(3) == 0 {
                        0
                    } else {
                        rng.below(budget / 2)
                    };
                    let m = model[who];
                    let after = ModelMember { claim, ..m };
                    let fits = charged - m.charge() + after.charge() <= budget
                        || after.charge() <= m.charge();
                    let over_limit = limit.is_some_and(|l| claim > l);
                    match ledger.set_claim(me, dev, claim, &request) {
                        Ok(()) => {
                            assert!(
                                fits && !over_limit,
                                "round {round} step {step}: claim admitted"
                            );
                            model[who] = after;
                        }
                        Err(Refusal::OverLimit { .. }) => {
                            assert!(over_limit, "round {round} step {step}")
                        }
                        Err(Refusal::NoRoom { .. }) => {
                            assert!(!fits, "round {round} step {step}: claim refused")
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }
            for (i, member) in members.iter().enumerate() {
                assert_eq!(
                    ledger.charge(*member, dev),
                    model[i].charge(),
                    "round {round} step {step} member {i}"
                );
            }
            let snapshot = ledger.snapshot();
            let device = &snapshot.devices[0];
            assert_eq!(
                device.used,
                model.iter().map(ModelMember::charge).sum::<u64>()
            );
            assert_eq!(device.held, model.iter().map(|m| m.held).sum::<u64>());
            assert_eq!(
                device.reserved,
                model.iter().map(|m| m.in_flight).sum::<u64>()
            );
            assert!(device.used <= budget);
        }
        for (member, reservations) in members.iter().zip(pending) {
            reservations.into_iter().for_each(|r| ledger.rollback(r));
            ledger.leave(*member);
        }
        assert_eq!(ledger.snapshot().devices[0].used, 0);
    }
}

#[test]
fn context_creation_is_one_at_a_time_per_device() {
    let dir = TempDir::new("context-lock");
    let ledger = dir.open_ledger();
    let first = ledger.register_device(uuid(1), "A", 4096, 4096).unwrap();
    let second = ledger.register_device(uuid(2), "B", 4096, 4096).unwrap();
    let long = || Instant::now() + ledger_support::HANG_GUARD;
    let creating = ledger.lock_context_creation(first, long()).unwrap();
    // Another device's creation is independent.
    drop(ledger.lock_context_creation(second, long()).unwrap());
    // The same device, even from this process: busy until the holder is done.
    let busy = ledger.lock_context_creation(first, Instant::now() + Duration::from_millis(50));
    match busy {
        Err(vramguard_core::ledger::LedgerError::LockTimeout { what, .. }) => {
            assert_eq!(what, "context creation")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("two creations on one device at once"),
    }
    // A waiter gets the lock as soon as the holder lets go.
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| ledger.lock_context_creation(first, long()).is_ok());
        // Most likely waiting by then. Nothing depends on it: a waiter that comes after the
        // holder let go gets the free lock at once.
        std::thread::sleep(Duration::from_millis(20));
        drop(creating);
        assert!(waiter.join().unwrap(), "the waiter never got the lock");
    });
}
