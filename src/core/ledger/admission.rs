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
//! Waiting: a request that does not fit beside the queued ones takes a ticket and sleeps on the
//! device's futex word. Its turn is handed over in the ledger by whoever makes room or next
//! decides (`queue`): the waiter wakes to find its grant made and collects it. When every member
//! with a charge on the device has a request queued and not granted, the latest is refused.
//!
//! An update that cannot take the lock in time is kept in the process and applied at its next
//! decision on the device (`pending`), never dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, DeviceRecord, LedgerLayout, SLOT_FREE, SlotDevice};
use super::pending::{Updates, Withdrawal};
use super::queue::{self, decrement_waiters};
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

pub(super) fn subtract(counter: &AtomicU64, amount: u64) {
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
    let ticket = share.wait_ticket.load(Ordering::Relaxed);
    if ticket != 0 {
        share.wait_ticket.store(0, Ordering::Relaxed);
        if queue::is_queued(ticket) {
            decrement_waiters(device);
        }
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
        if queue::is_queued(share.wait_ticket.load(Ordering::Relaxed)) {
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

/// Tells every sleeper to look again (after a hand-over: the granted may be anywhere in line,
/// and the count of waiters no longer includes them).
pub(super) fn wake_all(device: &DeviceRecord) {
    device.wake_seq.fetch_add(1, Ordering::AcqRel);
    futex::wake_all(&device.wake_seq);
}

/// What a request asks for.
#[derive(Clone, Copy)]
pub(super) enum Ask {
    /// `bytes` more in flight.
    Reserve(u64),
    /// The claim becomes this.
    Claim(u64),
}

impl Ask {
    pub(super) fn requested(self) -> u64 {
        match self {
            Ask::Reserve(bytes) | Ask::Claim(bytes) => bytes,
        }
    }
}

/// A member's counters on a device, read once. Under the device lock only their member changes
/// them, so a decision and the update it leads to work on one consistent reading (and each word
/// is loaded once, not once per helper).
#[derive(Clone, Copy)]
pub(super) struct Counters {
    pub(super) held: u64,
    pub(super) in_flight: u64,
    pub(super) claim: u64,
}

impl Counters {
    pub(super) fn read(share: &SlotDevice) -> Counters {
        Counters {
            held: share.held.load(Ordering::Relaxed),
            in_flight: share.in_flight.load(Ordering::Relaxed),
            claim: share.claim.load(Ordering::Relaxed),
        }
    }

    /// The member's charge: `max(held + in_flight, claim)`.
    pub(super) fn charge(self) -> u64 {
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
    pub(super) fn growth(self, ask: Ask) -> u64 {
        self.granting(ask).charge().saturating_sub(self.charge())
    }
}

/// Under the device lock: whether a growth of the member's charge by `growth` keeps the device
/// within its budget.
pub(super) fn fits(device: &DeviceRecord, growth: u64) -> bool {
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
pub(super) fn apply(device: &DeviceRecord, share: &SlotDevice, now: Counters, ask: Ask) -> u64 {
    let after = now.granting(ask);
    match ask {
        Ask::Reserve(bytes) => {
            share.in_flight.store(after.in_flight, Ordering::Relaxed);
            add(&device.in_flight, bytes);
        }
        Ask::Claim(bytes) => share.claim.store(bytes, Ordering::Relaxed),
    }
    let charged = recharge(device, now, after);
    device
        .budget
        .load(Ordering::Relaxed)
        .saturating_sub(charged)
        .saturating_add(after.unused_claim())
}

/// Under the device lock: moves the device's `charged` by the change of a member's charge from
/// `before` to `after` (one store); returns the new total.
pub(super) fn recharge(device: &DeviceRecord, before: Counters, after: Counters) -> u64 {
    let (before, after) = (before.charge(), after.charge());
    let charged = device
        .charged
        .load(Ordering::Relaxed)
        .saturating_sub(before.saturating_sub(after))
        .saturating_add(after.saturating_sub(before));
    device.charged.store(charged, Ordering::Relaxed);
    charged
}

/// Under the device lock: `bytes` of the member's reservations in flight become held.
fn apply_commit(device: &DeviceRecord, share: &SlotDevice, bytes: u64) {
    let now = Counters::read(share);
    let bytes = bytes.min(now.in_flight);
    share
        .in_flight
        .store(now.in_flight - bytes, Ordering::Relaxed);
    share
        .held
        .store(now.held.saturating_add(bytes), Ordering::Relaxed);
    subtract(&device.in_flight, bytes);
    add(&device.held, bytes);
}

/// Under the device lock: `bytes` of the member's reservations in flight are dropped.
fn apply_rollback(device: &DeviceRecord, share: &SlotDevice, bytes: u64) {
    let now = Counters::read(share);
    let bytes = bytes.min(now.in_flight);
    let after = Counters {
        in_flight: now.in_flight - bytes,
        ..now
    };
    share.in_flight.store(after.in_flight, Ordering::Relaxed);
    subtract(&device.in_flight, bytes);
    recharge(device, now, after);
}

/// Under the device lock: `bytes` the member holds are returned (saturating at what it holds).
fn apply_release(device: &DeviceRecord, share: &SlotDevice, bytes: u64) {
    let now = Counters::read(share);
    let bytes = bytes.min(now.held);
    let after = Counters {
        held: now.held - bytes,
        ..now
    };
    share.held.store(after.held, Ordering::Relaxed);
    subtract(&device.held, bytes);
    recharge(device, now, after);
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
        self.adjust(r.slot, r.device, Updates::commit(r.bytes));
    }

    /// Drops a reservation (the driver refused, or the caller gave up); hands the room over to
    /// the waiters it lets in.
    pub(super) fn rollback_here(&self, r: Reservation) {
        self.adjust(r.slot, r.device, Updates::rollback(r.bytes));
    }

    /// Returns `bytes` held by `slot` on `dev` (saturating at what it holds); hands the room
    /// over to the waiters it lets in.
    pub(super) fn release_here(&self, slot: SlotId, dev: DeviceId, bytes: u64) {
        self.adjust(slot, dev, Updates::release(bytes));
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

    /// Applies `updates` under `dev`'s lock for a valid member, then hands the room it makes
    /// over to the waiters. An update that cannot get the lock before its deadline is kept in the
    /// process and applied by its next decision on the device (`pending`); only when that record
    /// is full does it wait for the lock again. It is never dropped.
    fn adjust(&self, slot: SlotId, dev: DeviceId, updates: Updates) {
        if self.check_slot(slot).is_err() {
            return;
        }
        let Ok((device, share, token)) = self.member_share(slot, dev) else {
            return;
        };
        loop {
            match self.lock_device(dev, token) {
                Ok(guard) => {
                    let granted = self.apply_updates(dev, device, share, updates);
                    drop(guard);
                    self.after_room(device, granted, updates.frees_room());
                    return;
                }
                Err(_) => {
                    if self.pending.record(slot, dev.index, updates)
                        || self.check_slot(slot).is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Under `dev`'s lock: applies `updates` to `share` (commit, rollback, release, then the
    /// withdrawal of a queued request), then hands over. Returns whether a waiter was granted.
    fn apply_updates(
        &self,
        dev: DeviceId,
        device: &DeviceRecord,
        share: &SlotDevice,
        updates: Updates,
    ) -> bool {
        if updates.commit != 0 {
            apply_commit(device, share, updates.commit);
        }
        if updates.rollback != 0 {
            apply_rollback(device, share, updates.rollback);
        }
        if updates.release != 0 {
            apply_release(device, share, updates.release);
        }
        if let Some(Withdrawal { ticket, old_claim }) = updates.withdraw {
            queue::withdraw(device, share, ticket, old_claim);
        }
        updates.frees_room() && self.hand_over(dev)
    }

    /// Under `dev`'s lock: grants the queued requests that fit, in order (`queue::hand_over`).
    #[inline]
    fn hand_over(&self, dev: DeviceId) -> bool {
        self.device(dev).waiters.load(Ordering::Relaxed) != 0
            && queue::hand_over(self.layout(), dev.index as usize, self.slot_count())
    }

    /// After the lock is dropped: wakes the sleepers when a waiter was granted (it collects at
    /// once if it runs), or when room may have appeared.
    fn after_room(&self, device: &DeviceRecord, granted: bool, freed: bool) {
        if granted {
            wake_all(device);
        } else if freed {
            wake_waiters(device);
        }
    }

    /// Under `dev`'s lock, just taken: applies what this process could not apply earlier because
    /// the lock was not to be had (`pending`), each update exactly once. Called by
    /// [`Ledger::lock_device`] whenever something is pending.
    #[cold]
    #[inline(never)]
    pub(super) fn apply_pending(&self, dev: DeviceId) {
        let device = self.device(dev);
        let mut granted = false;
        for (slot, updates) in self.pending.take(dev.index).into_iter().flatten() {
            // A membership that ended meanwhile had its share returned whole: nothing to apply.
            if self.check_slot(slot).is_err() {
                continue;
            }
            if let Some(share) = self.own_share(slot, dev) {
                granted |= self.apply_updates(dev, device, share, updates);
            }
        }
        // Under the lock (rare): the sleepers re-check once it is dropped.
        self.after_room(device, granted, true);
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
            if matches!(ask, Ask::Claim(_)) {
                // A shrunk claim frees room: hand it over.
                let granted = self.hand_over(dev);
                drop(guard);
                self.after_room(device, granted, true);
            }
            return Ok(available_after);
        }
        drop(guard);
        self.admit_after_reclaim(slot, dev, ask, req)
    }

    /// [`Ledger::admit`] when `ask` could not be granted at first sight: before refusing or
    /// waiting, makes sure the file is whole, gives back what dead members hold, hands room over
    /// to the queued requests, then decides again: granted when it fits beside every queued
    /// request's outstanding need.
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
        let granted = self.hand_over(dev);
        let now = Counters::read(share);
        if self.fits_beside_queue(dev, now.growth(ask)) {
            let available_after = apply(device, share, now, ask);
            drop(guard);
            self.after_room(device, granted, matches!(ask, Ask::Claim(_)));
            return Ok(available_after);
        }
        let available = self.room_beside_queue(dev);
        let Some(deadline) = req.wait_until else {
            drop(guard);
            self.after_room(device, granted, false);
            return Err(Refusal::NoRoom {
                requested,
                available,
            });
        };
        drop(guard);
        self.after_room(device, granted, false);
        self.wait_in_line(slot, dev, ask, deadline, req)
    }

    /// Under `dev`'s lock: whether a growth of `growth` fits beside the queued requests.
    fn fits_beside_queue(&self, dev: DeviceId, growth: u64) -> bool {
        queue::fits_beside_queue(
            self.layout(),
            self.device(dev),
            dev.index as usize,
            self.slot_count(),
            growth,
        )
    }

    /// Under `dev`'s lock: the room under the budget beside the queued requests' needs.
    fn room_beside_queue(&self, dev: DeviceId) -> u64 {
        let device = self.device(dev);
        let needs = if device.waiters.load(Ordering::Relaxed) == 0 {
            0
        } else {
            queue::outstanding(self.layout(), dev.index as usize, self.slot_count()).0
        };
        room(device).saturating_sub(needs)
    }

    /// Queues the request and sleeps until its turn is handed over (it then collects the grant),
    /// the deadline passes, or it is the latest waiter of a deadlock. Every pass under the lock
    /// first hands over what fits, so a turn never depends on who happens to run.
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
        let mut old_claim = 0u64;
        let mut reported = false;
        loop {
            let seen = device.wake_seq.load(Ordering::Acquire);
            let guard = match self.lock_device(dev, token) {
                Ok(guard) => guard,
                Err(error) => {
                    self.withdraw_later(slot, dev, ticket, old_claim);
                    return Err(Refusal::Ledger(error));
                }
            };
            let mut granted = self.hand_over(dev);
            if ticket == 0 && share.wait_ticket.load(Ordering::Relaxed) == 0 {
                let now = Counters::read(share);
                if self.fits_beside_queue(dev, now.growth(ask)) {
                    let available_after = apply(device, share, now, ask);
                    drop(guard);
                    self.after_room(device, granted, false);
                    return Ok(available_after);
                }
                // Join the line (if another thread of this process is queued here already, wait
                // for it to be served first).
                ticket = queue::take_ticket(device);
                old_claim = now.claim;
                share
                    .wait_bytes
                    .store(queue::encode(ask), Ordering::Relaxed);
                share
                    .wait_since_unix_ms
                    .store(liveness::unix_ms(), Ordering::Relaxed);
                share.wait_ticket.store(ticket, Ordering::Relaxed);
                device.waiters.store(
                    device.waiters.load(Ordering::Relaxed).saturating_add(1),
                    Ordering::Relaxed,
                );
                // Queued, it may be what unsticks a line in which every holder waits.
                granted |= self.hand_over(dev);
            }
            if ticket != 0 {
                let word = share.wait_ticket.load(Ordering::Relaxed);
                if word == ticket | queue::GRANTED {
                    // Our turn was handed over: collect it.
                    share.wait_ticket.store(0, Ordering::Relaxed);
                    let available_after =
                        room(device).saturating_add(Counters::read(share).unused_claim());
                    drop(guard);
                    self.after_room(device, granted, false);
                    return Ok(available_after);
                }
                if word != ticket {
                    ticket = 0; // our entry is gone (a damaged file): queue again next time
                }
            }
            let view = queue::view(self.layout(), dev.index as usize, self.slot_count());
            let now = Instant::now();
            if ticket != 0 {
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
                    queue::withdraw(device, share, ticket, old_claim);
                    // Our leaving may let the next in line in.
                    self.hand_over(dev);
                    drop(guard);
                    // ... or make someone else the latest of a deadlock.
                    wake_all(device);
                    return Err(refusal);
                }
            } else if now >= deadline {
                drop(guard);
                self.after_room(device, granted, false);
                return Err(Refusal::TimedOut {
                    requested,
                    waited: now.saturating_duration_since(started),
                });
            }
            let available = room(device);
            drop(guard);
            if granted || (view.all_holders_wait && view.latest != ticket) {
                // The granted collect now; the latest waiter of a deadlock notices it now.
                wake_all(device);
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

    /// A waiter that cannot take the lock to leave the line: its withdrawal (which also undoes a
    /// grant made meanwhile) is kept for this process's next decision on the device, or, when
    /// that record is full, made as soon as the lock can be had.
    #[cold]
    fn withdraw_later(&self, slot: SlotId, dev: DeviceId, ticket: u64, old_claim: u64) {
        if ticket == 0 {
            return;
        }
        let updates = Updates::withdraw(Withdrawal { ticket, old_claim });
        if !self.pending.record(slot, dev.index, updates) {
            self.adjust(slot, dev, updates);
        }
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
