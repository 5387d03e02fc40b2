//! Admission: reserve, commit, rollback, release and claims, FIFO waiting and deadlock breaking.
//!
//! Every change of a device's totals and of a member's counters on it happens under the device's
//! lock, so the check "charged + delta <= budget" and the update are one atomic step across all
//! processes. A member's charge on a device is `max(held + in_flight, claim)`; the device's
//! `charged` is the sum of the charges and is written in a single store, never above the budget.
//!
//! Members' counters are single atomic words, always written before the totals. A lock taken
//! over from a dead owner triggers [`recompute_totals`], which rebuilds the totals from the
//! counters, so a half-done update is never trusted.
//!
//! Waiting: a request that does not fit (or finds others queued) takes a ticket and sleeps on the
//! device's futex word. Only the live waiter with the smallest ticket may be admitted; every
//! change that frees room bumps the word and wakes all sleepers, who re-check. When every member
//! with a charge on the device waits on it, the waiter with the largest ticket is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, DeviceRecord, LedgerLayout, SLOT_FREE, SlotDevice};
use super::{
    DeviceId, Ledger, LedgerError, Refusal, Request, Reservation, SlotId, WaitReport, futex,
    liveness, lock,
};

/// Longest single sleep of a waiter: it then re-checks for dead members even if nobody woke it.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A member's charge from its counters: `max(held + in_flight, claim)`.
fn charge_of(held: u64, in_flight: u64, claim: u64) -> u64 {
    held.saturating_add(in_flight).max(claim)
}

fn share_charge(share: &SlotDevice) -> u64 {
    Counters::read(share).charge()
}

/// Whether a member has anything on a device (bytes, a claim, or a place in its queue).
pub(super) fn has_stake(share: &SlotDevice) -> bool {
    share.held.load(Ordering::Relaxed) != 0
        || share.in_flight.load(Ordering::Relaxed) != 0
        || share.claim.load(Ordering::Relaxed) != 0
        || share.wait_ticket.load(Ordering::Relaxed) != 0
}

fn subtract(counter: &AtomicU64, amount: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_sub(amount),
        Ordering::Relaxed,
    );
}

fn add(counter: &AtomicU64, amount: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(amount),
        Ordering::Relaxed,
    );
}

/// Under the device lock: removes a member's share from the device totals and zeroes it.
/// Returns the charge removed.
pub(super) fn remove_share(device: &DeviceRecord, share: &SlotDevice) -> u64 {
    let held = share.held.load(Ordering::Relaxed);
    let in_flight = share.in_flight.load(Ordering::Relaxed);
    let charge = share_charge(share);
    if share.wait_ticket.load(Ordering::Relaxed) != 0 {
        share.wait_ticket.store(0, Ordering::Relaxed);
        decrement_waiters(device);
    }
    for counter in [
        &share.held,
        &share.in_flight,
        &share.claim,
        &share.wait_bytes,
    ] {
        counter.store(0, Ordering::Relaxed);
    }
    subtract(&device.held, held);
    subtract(&device.in_flight, in_flight);
    subtract(&device.charged, charge);
    charge
}

fn decrement_waiters(device: &DeviceRecord) {
    let waiters = device.waiters.load(Ordering::Relaxed);
    device
        .waiters
        .store(waiters.saturating_sub(1), Ordering::Relaxed);
}

/// Under the device lock: rebuilds the device's totals (and waiter count) from the members'
/// counters. Used after taking the lock over from a dead owner.
pub(super) fn recompute_totals(layout: &LedgerLayout, device: usize) {
    let Some(record) = layout.devices.get(device) else {
        return;
    };
    let (mut held, mut in_flight, mut charged, mut waiters) = (0u64, 0u64, 0u64, 0u32);
    for slot in &layout.slots {
        let share = &slot.devices[device];
        held = held.saturating_add(share.held.load(Ordering::Relaxed));
        in_flight = in_flight.saturating_add(share.in_flight.load(Ordering::Relaxed));
        charged = charged.saturating_add(share_charge(share));
        if share.wait_ticket.load(Ordering::Relaxed) != 0 {
            waiters = waiters.saturating_add(1);
        }
    }
    record.held.store(held, Ordering::Relaxed);
    record.in_flight.store(in_flight, Ordering::Relaxed);
    record.charged.store(charged, Ordering::Relaxed);
    record.waiters.store(waiters, Ordering::Relaxed);
}

/// Tells sleepers that room may have appeared (only costs a system call when someone waits).
pub(super) fn wake_waiters(device: &DeviceRecord) {
    if device.waiters.load(Ordering::Acquire) != 0 {
        device.wake_seq.fetch_add(1, Ordering::AcqRel);
        futex::wake_all(&device.wake_seq);
    }
}

/// What a request asks for.
#[derive(Clone, Copy)]
enum Ask {
    /// `bytes` more in flight.
    Reserve(u64),
    /// The claim becomes this.
    Claim(u64),
}

impl Ask {
    fn requested(self) -> u64 {
        match self {
            Ask::Reserve(bytes) | Ask::Claim(bytes) => bytes,
        }
    }
}

/// A member's counters on a device, read once. Under the device lock only their member changes
/// them, so a decision and the update it leads to work on one consistent reading (and each word
/// is loaded once, not once per helper).
#[derive(Clone, Copy)]
struct Counters {
    held: u64,
    in_flight: u64,
    claim: u64,
}

impl Counters {
    fn read(share: &SlotDevice) -> Counters {
        Counters {
            held: share.held.load(Ordering::Relaxed),
            in_flight: share.in_flight.load(Ordering::Relaxed),
            claim: share.claim.load(Ordering::Relaxed),
        }
    }

    /// The member's charge: `max(held + in_flight, claim)`.
    fn charge(self) -> u64 {
        charge_of(self.held, self.in_flight, self.claim)
    }

    /// Held plus in-flight bytes.
    fn used(self) -> u64 {
        self.held.saturating_add(self.in_flight)
    }

    /// The part of the claim that held and in-flight bytes do not use.
    fn unused_claim(self) -> u64 {
        self.claim.saturating_sub(self.used())
    }

    /// The counters once `ask` is granted.
    fn granting(self, ask: Ask) -> Counters {
        match ask {
            Ask::Reserve(bytes) => Counters {
                in_flight: self.in_flight.saturating_add(bytes),
                ..self
            },
            Ask::Claim(bytes) => Counters {
                claim: bytes,
                ..self
            },
        }
    }

    /// How much granting `ask` raises the member's charge (0: it needs no new room, for
    /// example inside the member's claim; such a request never queues).
    fn growth(self, ask: Ask) -> u64 {
        self.granting(ask).charge().saturating_sub(self.charge())
    }
}

/// Under the device lock: whether a growth of the member's charge by `growth` keeps the device
/// within its budget.
fn fits(device: &DeviceRecord, growth: u64) -> bool {
    growth == 0
        || device
            .charged
            .load(Ordering::Relaxed)
            .checked_add(growth)
            .is_some_and(|total| total <= device.budget.load(Ordering::Relaxed))
}

/// Under the device lock: records a granted `ask` for the member whose counters are `now`
/// (member counters first, then totals), and returns what [`Ledger::available`] (without a
/// limit) answers right after it.
fn apply(device: &DeviceRecord, share: &SlotDevice, now: Counters, ask: Ask) -> u64 {
    let after = now.granting(ask);
    match ask {
        Ask::Reserve(bytes) => {
            share.in_flight.store(after.in_flight, Ordering::Relaxed);
            add(&device.in_flight, bytes);
        }
        Ask::Claim(bytes) => share.claim.store(bytes, Ordering::Relaxed),
    }
    let (before, after_charge) = (now.charge(), after.charge());
    let charged = device
        .charged
        .load(Ordering::Relaxed)
        .saturating_sub(before.saturating_sub(after_charge))
        .saturating_add(after_charge.saturating_sub(before));
    device.charged.store(charged, Ordering::Relaxed);
    device
        .budget
        .load(Ordering::Relaxed)
        .saturating_sub(charged)
        .saturating_add(after.unused_claim())
}

/// Under the device lock: whether `ask` may be granted right now without queueing.
fn admissible_now(device: &DeviceRecord, now: Counters, ask: Ask) -> bool {
    let growth = now.growth(ask);
    growth == 0 || (device.waiters.load(Ordering::Relaxed) == 0 && fits(device, growth))
}

/// Bytes free under the budget.
fn room(device: &DeviceRecord) -> u64 {
    device
        .budget
        .load(Ordering::Relaxed)
        .saturating_sub(device.charged.load(Ordering::Relaxed))
}

/// What a waiter found when it looked at the queue.
struct QueueView {
    /// The smallest ticket of a live waiter.
    head: u64,
    /// The largest ticket of a live waiter.
    latest: u64,
    /// Some member has a charge on the device, and every such member waits on it.
    all_holders_wait: bool,
}

impl Ledger {
    /// Admits `bytes` more for `slot` on `dev` if they fit under the budget (and `req.limit`),
    /// recording them as in flight; otherwise refuses or, with `req.wait_until`, waits in line.
    #[inline]
    pub(super) fn reserve_here(
        &self,
        slot: SlotId,
        dev: DeviceId,
        bytes: u64,
        req: &Request,
    ) -> Result<Reservation, Refusal> {
        let available_after = self.admit_reservation(slot, dev, bytes, req)?;
        Ok(Reservation {
            slot,
            device: dev,
            bytes,
            available_after,
        })
    }

    /// Moves a reservation from in flight to held (the driver granted the memory).
    pub(super) fn commit_here(&self, r: Reservation) {
        self.adjust(r.slot, r.device, false, |device, share| {
            let now = Counters::read(share);
            let bytes = r.bytes.min(now.in_flight);
            share
                .in_flight
                .store(now.in_flight - bytes, Ordering::Relaxed);
            share
                .held
                .store(now.held.saturating_add(bytes), Ordering::Relaxed);
            subtract(&device.in_flight, bytes);
            add(&device.held, bytes);
        });
    }

    /// Drops a reservation (the driver refused, or the caller gave up); wakes waiters.
    pub(super) fn rollback_here(&self, r: Reservation) {
        self.adjust(r.slot, r.device, true, |device, share| {
            let now = Counters::read(share);
            let bytes = r.bytes.min(now.in_flight);
            let after = Counters {
                in_flight: now.in_flight - bytes,
                ..now
            };
            share.in_flight.store(after.in_flight, Ordering::Relaxed);
            subtract(&device.in_flight, bytes);
            subtract(&device.charged, now.charge().saturating_sub(after.charge()));
        });
    }

    /// Returns `bytes` held by `slot` on `dev` (saturating at what it holds); wakes waiters.
    pub(super) fn release_here(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        self.adjust(slot, dev, true, |device, share| {
            let now = Counters::read(share);
            let bytes = bytes.min(now.held);
            let after = Counters {
                held: now.held - bytes,
                ..now
            };
            share.held.store(after.held, Ordering::Relaxed);
            subtract(&device.held, bytes);
            subtract(&device.charged, now.charge().saturating_sub(after.charge()));
        });
    }

    /// Sets the member's up-front claim on `dev` (`VRAMGUARD_EXPECT`): its charge becomes
    /// `max(held + in flight, claim)`. Growing the claim is admitted like a reservation (and may
    /// wait); shrinking it (`0` drops it) always succeeds and wakes waiters.
    pub(super) fn set_claim_here(
        &self,
        slot: SlotId,
        dev: DeviceId,
        bytes: u64,
        req: &Request,
    ) -> Result<(), Refusal> {
        self.admit(slot, dev, Ask::Claim(bytes), req).map(|_| ())
    }

    /// Bytes admitted to other members but not yet taken from the driver: their reservations in
    /// flight plus the unused parts of their claims.
    pub fn unbacked_by_others(&self, slot: SlotId, dev: DeviceId) -> u64 {
        let (slot, dev) = (self.own.slot(slot), self.own.device(dev));
        if self.intact().is_err() {
            return 0;
        }
        let device = self.device(dev);
        let all = device
            .charged
            .load(Ordering::Relaxed)
            .saturating_sub(device.held.load(Ordering::Relaxed));
        let Some(share) = self.own_share(slot, dev) else {
            return all;
        };
        let mine = share_charge(share).saturating_sub(share.held.load(Ordering::Relaxed));
        all.saturating_sub(mine)
    }

    /// What this member could still reserve on `dev` now (ignoring the queue), within `limit`.
    pub fn available(&self, slot: SlotId, dev: DeviceId, limit: Option<u64>) -> u64 {
        let (slot, dev) = (self.own.slot(slot), self.own.device(dev));
        if self.intact().is_err() {
            return 0;
        }
        let device = self.device(dev);
        let room = room(device);
        let Some(share) = self.own_share(slot, dev) else {
            return room;
        };
        let counters = Counters::read(share);
        let available = room.saturating_add(counters.unused_claim());
        match limit {
            Some(limit) => available.min(limit.saturating_sub(counters.used())),
            None => available,
        }
    }

    /// This member's reservations in flight on `dev`: admitted, and not yet committed or rolled
    /// back (0 when the ledger cannot tell).
    pub fn in_flight(&self, slot: SlotId, dev: DeviceId) -> u64 {
        let (slot, dev) = (self.own.slot(slot), self.own.device(dev));
        if self.intact().is_err() {
            return 0;
        }
        self.own_share(slot, dev)
            .map_or(0, |share| share.in_flight.load(Ordering::Relaxed))
    }

    /// This member's charge on `dev`.
    pub fn charge(&self, slot: SlotId, dev: DeviceId) -> u64 {
        let (slot, dev) = (self.own.slot(slot), self.own.device(dev));
        if self.intact().is_err() {
            return 0;
        }
        self.own_share(slot, dev).map(share_charge).unwrap_or(0)
    }

    /// `dev`'s record, `slot`'s share of it, and the token `slot` takes the device's lock with.
    #[inline]
    fn member_share(
        &self,
        slot: SlotId,
        dev: DeviceId,
    ) -> Result<(&DeviceRecord, &SlotDevice, u64), LedgerError> {
        let share = self
            .own_share(slot, dev)
            .ok_or_else(|| self.unknown_handle())?;
        let token = lock::token(slot.index, slot.generation.into());
        Ok((self.device(dev), share, token))
    }

    fn own_share(&self, slot: SlotId, dev: DeviceId) -> Option<&SlotDevice> {
        let index = slot.index as usize;
        (index < layout::MAX_PROCESSES)
            .then(|| &self.slot(index).devices[(dev.index as usize).min(layout::MAX_DEVICES - 1)])
    }

    /// Runs `change` under `dev`'s lock for a valid member, then (if it frees room) wakes
    /// waiters. A change that cannot get the lock before its deadline is dropped (the holder is
    /// stuck; see docs/ledger.md).
    fn adjust(
        &self,
        slot: SlotId,
        dev: DeviceId,
        frees_room: bool,
        change: impl FnOnce(&DeviceRecord, &SlotDevice),
    ) {
        if self.check_slot(slot).is_err() {
            return;
        }
        let Ok((device, share, token)) = self.member_share(slot, dev) else {
            return;
        };
        let Ok(guard) = self.lock_device(dev, token) else {
            return;
        };
        change(device, share);
        drop(guard);
        if frees_room {
            wake_waiters(device);
        }
    }

    /// [`Ledger::admit`] of a reservation of `bytes`: its own copy of the admission, in which
    /// the checks that only concern claims fold away (every allocation comes through here).
    #[inline(never)]
    fn admit_reservation(
        &self,
        slot: SlotId,
        dev: DeviceId,
        bytes: u64,
        req: &Request,
    ) -> Result<u64, Refusal> {
        self.admit(slot, dev, Ask::Reserve(bytes), req)
    }

    /// Grants `ask` or refuses it; on success returns what [`Ledger::available`] (without a
    /// limit) answered at the moment of the grant. Everything past the first look under the lock
    /// is out of line.
    #[inline(always)]
    fn admit(&self, slot: SlotId, dev: DeviceId, ask: Ask, req: &Request) -> Result<u64, Refusal> {
        self.check_slot(slot)?;
        let (device, share, token) = self.member_share(slot, dev)?;
        if device.state.load(Ordering::Acquire) != layout::DEVICE_READY {
            return Err(self.unknown_handle().into());
        }
        let requested = ask.requested();
        let budget = device.budget.load(Ordering::Relaxed);
        let over_limit = |now: Counters| {
            req.limit.is_some_and(|limit| match ask {
                Ask::Reserve(bytes) => now.used().saturating_add(bytes) > limit,
                Ask::Claim(bytes) => bytes > limit,
            })
        };
        let past_limit = |now: Counters| Refusal::OverLimit {
            requested,
            held: now.used(),
            limit: req.limit.unwrap_or(u64::MAX),
        };
        if requested > budget {
            return Err(Refusal::NeverFits { requested, budget });
        }
        let before = Counters::read(share);
        if over_limit(before) {
            return Err(past_limit(before));
        }

        // Fast path: nobody waits and it fits. (The limit is checked again under the lock, as
        // other threads of this process may have reserved meanwhile.)
        let guard = self.lock_device(dev, token)?;
        let now = Counters::read(share);
        if over_limit(now) {
            return Err(past_limit(now));
        }
        if admissible_now(device, now, ask) {
            let available_after = apply(device, share, now, ask);
            drop(guard);
            if matches!(ask, Ask::Claim(_)) {
                wake_waiters(device); // a shrunk claim frees room
            }
            return Ok(available_after);
        }
        drop(guard);
        self.admit_after_reclaim(slot, dev, ask, req)
    }

    /// [`Ledger::admit`] when `ask` could not be granted at first sight: before refusing or
    /// waiting, makes sure the file is whole, gives back what dead members hold, then decides
    /// again.
    #[cold]
    #[inline(never)]
    fn admit_after_reclaim(
        &self,
        slot: SlotId,
        dev: DeviceId,
        ask: Ask,
        req: &Request,
    ) -> Result<u64, Refusal> {
        let (device, share, token) = self.member_share(slot, dev)?;
        let requested = ask.requested();
        self.check_file()?;
        self.reclaim_dead_on(dev);
        let guard = self.lock_device(dev, token)?;
        let now = Counters::read(share);
        if admissible_now(device, now, ask) {
            return Ok(apply(device, share, now, ask));
        }
        let Some(deadline) = req.wait_until else {
            return Err(Refusal::NoRoom {
                requested,
                available: room(device),
            });
        };
        drop(guard);
        self.wait_in_line(slot, dev, ask, deadline, req)
    }

    /// Queues the request and sleeps until it is first in line and fits, the deadline passes, or
    /// it is the latest waiter of a deadlock.
    fn wait_in_line(
        &self,
        slot: SlotId,
        dev: DeviceId,
        ask: Ask,
        deadline: Instant,
        req: &Request,
    ) -> Result<u64, Refusal> {
        let (device, share, token) = self.member_share(slot, dev)?;
        let requested = ask.requested();
        let started = Instant::now();
        let mut ticket = 0u64;
        let mut reported = false;
        loop {
            let seen = device.wake_seq.load(Ordering::Acquire);
            let guard = self.lock_device(dev, token).map_err(|error| {
                self.leave_queue(dev, share, ticket, token);
                Refusal::Ledger(error)
            })?;
            if ticket == 0 && share.wait_ticket.load(Ordering::Relaxed) == 0 {
                // Join the queue (if another thread of this process is queued here already, wait
                // for it to be served first).
                ticket = device.next_ticket.load(Ordering::Relaxed).max(1);
                device
                    .next_ticket
                    .store(ticket.saturating_add(1), Ordering::Relaxed);
                share.wait_bytes.store(requested, Ordering::Relaxed);
                share
                    .wait_since_unix_ms
                    .store(liveness::unix_ms(), Ordering::Relaxed);
                share.wait_ticket.store(ticket, Ordering::Relaxed);
                device.waiters.store(
                    device.waiters.load(Ordering::Relaxed).saturating_add(1),
                    Ordering::Relaxed,
                );
            }
            let view = self.queue_view(dev);
            let now = Instant::now();
            if ticket != 0 {
                let counters = Counters::read(share);
                if view.head == ticket && fits(device, counters.growth(ask)) {
                    let available_after = apply(device, share, counters, ask);
                    share.wait_ticket.store(0, Ordering::Relaxed);
                    decrement_waiters(device);
                    drop(guard);
                    wake_waiters(device); // the next in line may fit too
                    return Ok(available_after);
                }
                let outcome = if view.all_holders_wait && view.latest == ticket {
                    Some(Refusal::Deadlock { requested })
                } else if now >= deadline {
                    Some(Refusal::TimedOut {
                        requested,
                        waited: now.saturating_duration_since(started),
                    })
                } else {
                    None
                };
                if let Some(refusal) = outcome {
                    share.wait_ticket.store(0, Ordering::Relaxed);
                    decrement_waiters(device);
                    drop(guard);
                    // Our leaving may make someone else head, or the latest of a deadlock.
                    device.wake_seq.fetch_add(1, Ordering::AcqRel);
                    futex::wake_all(&device.wake_seq);
                    return Err(refusal);
                }
            } else if now >= deadline {
                return Err(Refusal::TimedOut {
                    requested,
                    waited: now.saturating_duration_since(started),
                });
            }
            let available = room(device);
            drop(guard);
            if view.all_holders_wait && view.latest != ticket {
                // Make sure the latest waiter notices the deadlock now.
                device.wake_seq.fetch_add(1, Ordering::AcqRel);
                futex::wake_all(&device.wake_seq);
            }
            if !reported && ticket != 0 {
                reported = true;
                if let Some(on_wait) = req.on_wait {
                    on_wait(&self.wait_report(dev, requested, available));
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            futex::wait(&device.wake_seq, seen, remaining.min(WAIT_SLICE));
            // A truncated file may be what ended the sleep (the futex word's page is gone).
            self.check_file()?;
            self.reclaim_dead_on(dev);
        }
    }

    fn leave_queue(&self, dev: DeviceId, share: &SlotDevice, ticket: u64, token: u64) {
        if ticket == 0 {
            return;
        }
        if let Ok(_guard) = self.lock_device(dev, token)
            && share.wait_ticket.load(Ordering::Relaxed) == ticket
        {
            share.wait_ticket.store(0, Ordering::Relaxed);
            decrement_waiters(self.device(dev));
        }
    }

    /// Under the device lock: the queue's head and tail and whether all holders wait.
    fn queue_view(&self, dev: DeviceId) -> QueueView {
        let device = dev.index as usize;
        let mut view = QueueView {
            head: u64::MAX,
            latest: 0,
            all_holders_wait: true,
        };
        let mut holders = 0usize;
        for index in 0..self.slot_count() {
            let slot = self.slot(index);
            let share = &slot.devices[device];
            let ticket = share.wait_ticket.load(Ordering::Relaxed);
            if ticket != 0 {
                view.head = view.head.min(ticket);
                view.latest = view.latest.max(ticket);
            }
            if share_charge(share) != 0 {
                holders += 1;
                if ticket == 0 {
                    view.all_holders_wait = false;
                }
            }
        }
        view.all_holders_wait &= holders > 0;
        view
    }

    fn wait_report(&self, dev: DeviceId, requested: u64, available: u64) -> WaitReport {
        let device = dev.index as usize;
        let holders = (0..self.slot_count())
            .filter_map(|index| {
                let slot = self.slot(index);
                let charge = share_charge(&slot.devices[device]);
                (charge != 0 && slot.state.load(Ordering::Relaxed) != SLOT_FREE).then(|| {
                    (
                        slot.pid.load(Ordering::Relaxed) as i32,
                        layout::load_text(&slot.command),
                        charge,
                    )
                })
            })
            .collect();
        WaitReport {
            device_uuid: layout::load_uuid(&self.device(dev).uuid),
            requested,
            available,
            holders,
        }
    }
}
