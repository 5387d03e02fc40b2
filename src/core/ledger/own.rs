//! What the members joined through one handle hold, kept in the process's own memory.
//!
//! The shared file is a record that can always be rebuilt from its members (`rebuild`): next to
//! the file, every membership keeps its own copy of its counters on every device (held, in
//! flight, claim), updated by the public operations as they succeed. The copy is what the member
//! re-registers in a rebuilt ledger, and what its slot in the file is checked against.
//!
//! The ids a handle hands out are its own: a [`SlotId`] names a membership of the handle and a
//! [`DeviceId`] a device it registered, and each is translated to the slot and device record of
//! the file the handle maps *now* (one load), so that ids stay valid when the handle moves to a
//! rebuilt file where its slot and the device's record may have other indices.
//!
//! The gate: every operation that writes a member's counters passes it, and a thread that moves
//! the handle to another file closes it and waits until no such operation is under way, so no
//! write meant for the old file ever lands in the new one.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{DeviceId, MAX_DEVICES, MAX_PROCESSES, SlotId};

/// Operations started are counted above this bit; operations under way below it.
const STARTED: u64 = 1 << 20;
const UNDER_WAY: u64 = STARTED - 1;
/// How long an operation waits for a move to finish before it goes on regardless.
const MOVE_PATIENCE: Duration = Duration::from_secs(30);
/// How long a move waits for the operations under way to finish.
const DRAIN_PATIENCE: Duration = Duration::from_secs(3);

/// A membership's own counters on one device.
#[derive(Default, Debug)]
pub(super) struct Counters {
    pub held: AtomicU64,
    pub in_flight: AtomicU64,
    pub claim: AtomicU64,
}

impl Counters {
    /// (held, in flight, claim).
    pub fn read(&self) -> (u64, u64, u64) {
        (
            self.held.load(Ordering::Acquire),
            self.in_flight.load(Ordering::Acquire),
            self.claim.load(Ordering::Acquire),
        )
    }

    fn clear(&self) {
        for counter in [&self.held, &self.in_flight, &self.claim] {
            counter.store(0, Ordering::Release);
        }
    }
}

/// Takes up to `bytes` from `counter`; returns what was taken.
fn take(counter: &AtomicU64, bytes: u64) -> u64 {
    let before = counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            Some(now.saturating_sub(bytes))
        })
        .unwrap_or(0);
    before.min(bytes)
}

fn give(counter: &AtomicU64, bytes: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
        Some(now.saturating_add(bytes))
    });
}

/// One membership of the handle.
#[derive(Default)]
struct Member {
    /// Whether the membership exists (joined and not left).
    in_use: AtomicBool,
    /// The generation its [`SlotId`] was handed out with.
    id_generation: AtomicU32,
    /// Its slot in the current file: `(generation << 32) | (index + 1)`.
    current: AtomicU64,
    /// Its counters, per device id.
    counters: OnceLock<Box<[Counters]>>,
    /// Its command line, to join a rebuilt ledger with.
    command: Mutex<String>,
}

/// What a device id stands for, to register the device again in a rebuilt ledger.
#[derive(Clone, Debug)]
pub(super) struct DeviceInfo {
    pub uuid: [u8; 16],
    pub name: String,
    pub capacity: u64,
    pub budget: u64,
}

/// One device id of the handle.
#[derive(Default)]
struct LocalDevice {
    /// The device's record in the current file, plus one (0: the id is not in use).
    record: AtomicU32,
    info: Mutex<Option<DeviceInfo>>,
}

/// The handle's own tables (see the module documentation).
pub(super) struct Own {
    members: Box<[Member]>,
    devices: Box<[LocalDevice]>,
    gate: AtomicU64,
    moving: AtomicBool,
    moves: AtomicU32,
}

/// An operation under way (see [`Own::enter`]); leaving the scope ends it.
pub(super) struct Op<'a> {
    gate: &'a AtomicU64,
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.gate.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The gate is closed: a move is under way and waits for nothing more to start.
pub(super) struct Move<'a> {
    own: &'a Own,
}

thread_local! {
    /// Whether this thread is moving its handle (its own operations pass the closed gate).
    static MOVING_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is the one moving a handle now.
pub(super) fn moving_here() -> bool {
    MOVING_HERE.try_with(std::cell::Cell::get).unwrap_or(false)
}

impl Drop for Move<'_> {
    fn drop(&mut self) {
        let _ = MOVING_HERE.try_with(|here| here.set(false));
        self.own.moves.fetch_add(1, Ordering::SeqCst);
        self.own.moving.store(false, Ordering::SeqCst);
    }
}

fn pack(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (index as u64 + 1)
}

fn unpack(current: u64) -> Option<(u32, u32)> {
    let index = (current & 0xffff_ffff) as u32;
    index.checked_sub(1).map(|i| (i, (current >> 32) as u32))
}

impl Own {
    pub fn new() -> Own {
        Own {
            members: (0..MAX_PROCESSES).map(|_| Member::default()).collect(),
            devices: (0..MAX_DEVICES).map(|_| LocalDevice::default()).collect(),
            gate: AtomicU64::new(0),
            moving: AtomicBool::new(false),
            moves: AtomicU32::new(0),
        }
    }

    // ----- the gate ------------------------------------------------------------------------------

    /// Starts an operation that writes a member's counters; waits while a move is under way.
    #[inline]
    pub fn enter(&self) -> Op<'_> {
        self.gate.fetch_add(STARTED | 1, Ordering::SeqCst);
        if self.moving.load(Ordering::SeqCst) && !moving_here() {
            self.wait_for_move();
        }
        Op { gate: &self.gate }
    }

    #[cold]
    fn wait_for_move(&self) {
        let deadline = Instant::now() + MOVE_PATIENCE;
        while self.moving.load(Ordering::SeqCst) && Instant::now() < deadline {
            self.gate.fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(500));
            self.gate.fetch_add(STARTED | 1, Ordering::SeqCst);
        }
    }

    /// Whether a move is under way (operations under way should give up and start again).
    #[inline]
    pub fn moving(&self) -> bool {
        self.moving.load(Ordering::SeqCst)
    }

    /// Waits (boundedly) until no move is under way.
    pub fn wait_until_moved(&self) {
        let deadline = Instant::now() + MOVE_PATIENCE;
        while self.moving() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many moves this handle made.
    pub fn moves(&self) -> u32 {
        self.moves.load(Ordering::SeqCst)
    }

    /// Closes the gate and waits until no operation is under way; `None` if another thread is
    /// moving already (it then waits for that move to end) or the operations under way did not
    /// end in time.
    pub fn begin_move(&self) -> Option<Move<'_>> {
        if self
            .moving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let deadline = Instant::now() + MOVE_PATIENCE;
            while self.moving() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            return None;
        }
        let deadline = Instant::now() + DRAIN_PATIENCE;
        while self.gate.load(Ordering::SeqCst) & UNDER_WAY != 0 {
            if Instant::now() >= deadline {
                self.moving.store(false, Ordering::SeqCst);
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = MOVING_HERE.try_with(|here| here.set(true));
        Some(Move { own: self })
    }

    /// The gate's word when no operation is under way, for checks that must see the counters
    /// standing still: read it, look, read it again and compare.
    pub fn quiet(&self) -> Option<u64> {
        let word = self.gate.load(Ordering::SeqCst);
        (word & UNDER_WAY == 0).then_some(word)
    }

    // ----- memberships ---------------------------------------------------------------------------

    /// Records a membership that joined at slot `index` with `generation`; returns its id
    /// (the slot's own index when that id is free, as it is unless the handle moved).
    pub fn add_member(&self, index: usize, generation: u32, command: &str) -> SlotId {
        let preferred = index.min(MAX_PROCESSES - 1);
        let id = std::iter::once(preferred)
            .chain(0..MAX_PROCESSES)
            .find(|&id| {
                self.members[id]
                    .in_use
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .unwrap_or(preferred);
        let member = &self.members[id];
        let counters = member
            .counters
            .get_or_init(|| (0..MAX_DEVICES).map(|_| Counters::default()).collect());
        counters.iter().for_each(Counters::clear);
        if let Ok(mut stored) = member.command.lock() {
            command.clone_into(&mut stored);
        }
        member.id_generation.store(generation, Ordering::Release);
        member
            .current
            .store(pack(index, generation), Ordering::Release);
        SlotId {
            index: id as u32,
            generation,
        }
    }

    /// The membership left: its counters are gone.
    pub fn remove_member(&self, slot: SlotId) {
        if let Some(member) = self.member(slot) {
            if let Some(counters) = member.counters.get() {
                counters.iter().for_each(Counters::clear);
            }
            member.in_use.store(false, Ordering::Release);
        }
    }

    fn member(&self, slot: SlotId) -> Option<&Member> {
        let member = self.members.get(slot.index as usize)?;
        (member.in_use.load(Ordering::Acquire)
            && member.id_generation.load(Ordering::Acquire) == slot.generation)
            .then_some(member)
    }

    /// The slot `slot` has in the current file (an id this handle did not hand out is returned
    /// as it is, and fails the file's checks as before).
    #[inline]
    pub fn slot(&self, slot: SlotId) -> SlotId {
        match self.member(slot).map(|m| m.current.load(Ordering::Acquire)) {
            Some(current) => match unpack(current) {
                Some((index, generation)) => SlotId { index, generation },
                None => slot,
            },
            None => slot,
        }
    }

    /// The counters of `slot` on device id `dev`.
    #[inline]
    pub fn counters(&self, slot: SlotId, dev: DeviceId) -> Option<&Counters> {
        self.member(slot)?.counters.get()?.get(dev.index as usize)
    }

    /// Every membership: (its id, its slot in the current file, its command).
    pub fn members(&self) -> Vec<(SlotId, SlotId, String)> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.in_use.load(Ordering::Acquire))
            .filter_map(|(id, m)| {
                let generation = m.id_generation.load(Ordering::Acquire);
                let (index, current) = unpack(m.current.load(Ordering::Acquire))?;
                let command = m.command.lock().map(|c| c.clone()).unwrap_or_default();
                Some((
                    SlotId {
                        index: id as u32,
                        generation,
                    },
                    SlotId {
                        index,
                        generation: current,
                    },
                    command,
                ))
            })
            .collect()
    }

    /// Points membership `slot` at slot `index` of the current file.
    pub fn move_member(&self, slot: SlotId, index: usize, generation: u32) {
        if let Some(member) = self.member(slot) {
            member
                .current
                .store(pack(index, generation), Ordering::Release);
        }
    }

    // ----- counters ------------------------------------------------------------------------------

    pub fn reserved(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        if let Some(c) = self.counters(slot, dev) {
            give(&c.in_flight, bytes);
        }
    }

    pub fn committed(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        if let Some(c) = self.counters(slot, dev) {
            let moved = take(&c.in_flight, bytes);
            give(&c.held, moved);
        }
    }

    pub fn rolled_back(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        if let Some(c) = self.counters(slot, dev) {
            take(&c.in_flight, bytes);
        }
    }

    pub fn released(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        if let Some(c) = self.counters(slot, dev) {
            take(&c.held, bytes);
        }
    }

    pub fn claimed(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        if let Some(c) = self.counters(slot, dev) {
            c.claim.store(bytes, Ordering::Release);
        }
    }

    // ----- devices -------------------------------------------------------------------------------

    /// The device id for record `record` of the current file, made if the handle has none yet
    /// (the record's own index when that id is free, as it is unless the handle moved).
    pub fn device_id(&self, record: usize, info: impl FnOnce() -> DeviceInfo) -> DeviceId {
        let wanted = record as u32 + 1;
        if let Some(id) = self
            .devices
            .iter()
            .position(|d| d.record.load(Ordering::Acquire) == wanted)
        {
            return DeviceId { index: id as u32 };
        }
        let preferred = record.min(MAX_DEVICES - 1);
        let id = std::iter::once(preferred)
            .chain(0..MAX_DEVICES)
            .find(|&id| {
                self.devices[id]
                    .record
                    .compare_exchange(0, wanted, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                    || self.devices[id].record.load(Ordering::Acquire) == wanted
            })
            .unwrap_or(preferred);
        if let Ok(mut stored) = self.devices[id].info.lock()
            && stored.is_none()
        {
            *stored = Some(info());
        }
        DeviceId { index: id as u32 }
    }

    /// The record device id `dev` names in the current file.
    #[inline]
    pub fn device(&self, dev: DeviceId) -> DeviceId {
        match self
            .devices
            .get(dev.index as usize)
            .map(|d| d.record.load(Ordering::Acquire))
        {
            Some(record) if record != 0 => DeviceId { index: record - 1 },
            _ => dev,
        }
    }

    /// Every device id in use with what it stands for.
    pub fn devices(&self) -> Vec<(DeviceId, DeviceInfo)> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.record.load(Ordering::Acquire) != 0)
            .filter_map(|(id, d)| {
                let info = d.info.lock().ok()?.clone()?;
                Some((DeviceId { index: id as u32 }, info))
            })
            .collect()
    }

    /// Points device id `dev` at record `record` of the current file.
    pub fn move_device(&self, dev: DeviceId, record: usize) {
        if let Some(d) = self.devices.get(dev.index as usize) {
            d.record.store(record as u32 + 1, Ordering::Release);
        }
    }
}
