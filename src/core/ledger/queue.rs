//! The waiting line of a device and its hand-over: turns are granted in the ledger by whoever
//! frees room or next decides, never left for the waiter to take.
//!
//! A queued request is recorded in its member's share: `wait_ticket` holds its FIFO ticket and
//! `wait_bytes` what it asks for (with [`CLAIM_ASK`] set when it asks for a claim rather than a
//! reservation). Whoever holds the device lock after a change that may make room (a release, a
//! rollback, a shrunk claim, a member leaving or reclaimed, a waiter giving up, or simply the
//! next admission decision) runs [`hand_over`]: the queued requests are granted in ticket order,
//! as far as they fit, *in that very step*: a reservation is credited to the waiter's share as in
//! flight (a claim is set), and the ticket is marked [`GRANTED`]. The waiter, once it runs again,
//! finds its grant made and only collects it. A waiter that is stopped, descheduled or slow
//! therefore holds exactly what it was granted, and nothing it has not been granted stands in
//! anyone's way: the line never waits for a waiter to wake up.
//!
//! `waiters` of the device record counts the queued requests not yet granted, so the hot path
//! still decides "nobody waits" with one load. A newcomer (under either policy) is admitted at
//! once when it fits beside every queued request's outstanding need (see [`fits_beside_queue`]).

use std::sync::atomic::Ordering;

use super::admission::{Ask, Counters, apply, fits};
use super::layout::{DeviceRecord, LedgerLayout, SlotDevice};

/// Bit of `wait_ticket` set by the granter once the queued request was granted in the ledger.
pub(super) const GRANTED: u64 = 1 << 63;
/// Bit of `wait_bytes` set when the queued request asks for a claim (`VRAMGUARD_EXPECT`) of that
/// size rather than for a reservation.
pub(super) const CLAIM_ASK: u64 = 1 << 63;
/// Tickets are kept below this (a damaged `next_ticket` cannot reach the flag bits).
const TICKET_MASK: u64 = (1 << 62) - 1;

/// The `wait_bytes` word recording `ask`.
pub(super) fn encode(ask: Ask) -> u64 {
    match ask {
        Ask::Reserve(bytes) => bytes & !CLAIM_ASK,
        Ask::Claim(bytes) => (bytes & !CLAIM_ASK) | CLAIM_ASK,
    }
}

/// The request a `wait_bytes` word records.
pub(super) fn decode(word: u64) -> Ask {
    if word & CLAIM_ASK != 0 {
        Ask::Claim(word & !CLAIM_ASK)
    } else {
        Ask::Reserve(word)
    }
}

/// Whether a `wait_ticket` word is a queued request that was not granted yet.
pub(super) fn is_queued(ticket_word: u64) -> bool {
    ticket_word != 0 && ticket_word & GRANTED == 0
}

/// Under the device lock: the next ticket to hand out (advancing the counter).
pub(super) fn take_ticket(device: &DeviceRecord) -> u64 {
    let ticket = (device.next_ticket.load(Ordering::Relaxed) & TICKET_MASK).max(1);
    device
        .next_ticket
        .store((ticket + 1) & TICKET_MASK, Ordering::Relaxed);
    ticket
}

/// For display: the bytes a member's share waits for, if it waits (a granted request waits no
/// more: it only has to be collected).
pub fn waiting_bytes(share: &SlotDevice) -> Option<u64> {
    is_queued(share.wait_ticket.load(Ordering::Relaxed))
        .then(|| decode(share.wait_bytes.load(Ordering::Relaxed)).requested())
}

/// How much granting the request queued in `share` would raise its member's charge.
fn need_of(share: &SlotDevice) -> u64 {
    Counters::read(share).growth(decode(share.wait_bytes.load(Ordering::Relaxed)))
}

/// Under the device lock: the sum of the outstanding needs of the requests queued on `device`
/// (index `device_index`), and the number of them.
pub(super) fn outstanding(layout: &LedgerLayout, device_index: usize, scan: usize) -> (u64, u32) {
    let mut needs = 0u64;
    let mut count = 0u32;
    for slot in layout.slots.iter().take(scan) {
        let share = &slot.devices[device_index];
        if is_queued(share.wait_ticket.load(Ordering::Relaxed)) {
            needs = needs.saturating_add(need_of(share));
            count = count.saturating_add(1);
        }
    }
    (needs, count)
}

/// Under the device lock: whether a growth of `growth` fits beside every queued request's
/// outstanding need (so granting it can delay none of them).
pub(super) fn fits_beside_queue(
    layout: &LedgerLayout,
    device: &DeviceRecord,
    device_index: usize,
    scan: usize,
    growth: u64,
) -> bool {
    if growth == 0 {
        return true;
    }
    if device.waiters.load(Ordering::Relaxed) == 0 {
        return fits(device, growth);
    }
    let (needs, _) = outstanding(layout, device_index, scan);
    fits(device, growth.saturating_add(needs))
}

/// Under the device lock: grants the queued requests of `device` in ticket order as far as they
/// fit, each in its member's share, and marks their tickets granted. Returns whether anything
/// was granted (the caller then wakes the sleepers, so that a running waiter collects at once).
///
/// The line is strict (nobody passes a head that does not fit), except when it is stuck for
/// good: every member with a charge on the device has a request queued, so nobody will free
/// anything. Then the earliest request that fits is granted out of order, as the only way
/// forward; typically a member that needs only little more, or one that waits only for the
/// driver (its request fits the ledger, the card's free figure does not have it yet). Only when
/// no queued request fits is the line deadlocked, and the latest waiter refused (see
/// `admission::wait_in_line`).
pub(super) fn hand_over(layout: &LedgerLayout, device_index: usize, scan: usize) -> bool {
    let Some(device) = layout.devices.get(device_index) else {
        return false;
    };
    let queued = |slot: &&SlotDevice| is_queued(slot.wait_ticket.load(Ordering::Relaxed));
    let shares = || {
        layout
            .slots
            .iter()
            .take(scan)
            .map(move |slot| &slot.devices[device_index])
    };
    let fits_now = |share: &SlotDevice| {
        let ask = decode(share.wait_bytes.load(Ordering::Relaxed));
        fits(device, Counters::read(share).growth(ask))
    };
    let mut granted = false;
    while device.waiters.load(Ordering::Relaxed) != 0 {
        // The head of the line: the queued request with the smallest ticket.
        let Some(head) = shares()
            .filter(queued)
            .min_by_key(|share| share.wait_ticket.load(Ordering::Relaxed))
        else {
            // The count disagrees with the shares (a damaged file): trust the shares.
            device.waiters.store(0, Ordering::Relaxed);
            break;
        };
        let next = if fits_now(head) {
            head
        } else if view(layout, device_index, scan).all_holders_wait {
            // Stuck for good: the earliest request that fits goes first.
            let Some(share) = shares()
                .filter(queued)
                .filter(|share| fits_now(share))
                .min_by_key(|share| share.wait_ticket.load(Ordering::Relaxed))
            else {
                break; // deadlocked: nothing queued fits
            };
            share
        } else {
            break; // strictly in order: nobody passes the head
        };
        grant(device, next);
        granted = true;
    }
    granted
}

/// Under the device lock: grants the request queued in `share` (it fits) and marks it granted.
fn grant(device: &DeviceRecord, share: &SlotDevice) {
    let ask = decode(share.wait_bytes.load(Ordering::Relaxed));
    apply(device, share, Counters::read(share), ask);
    let ticket = share.wait_ticket.load(Ordering::Relaxed);
    share.wait_ticket.store(ticket | GRANTED, Ordering::Relaxed);
    decrement_waiters(device);
}

/// Under the device lock: one queued request fewer.
pub(super) fn decrement_waiters(device: &DeviceRecord) {
    let waiters = device.waiters.load(Ordering::Relaxed);
    device
        .waiters
        .store(waiters.saturating_sub(1), Ordering::Relaxed);
}

/// Under the device lock: takes `share`'s request with `ticket` out of the line. A request that
/// was granted meanwhile is undone (a reservation rolled back, a claim set back to `old_claim`).
/// Returns whether it was still there.
pub(super) fn withdraw(
    device: &DeviceRecord,
    share: &SlotDevice,
    ticket: u64,
    old_claim: u64,
) -> bool {
    let word = share.wait_ticket.load(Ordering::Relaxed);
    if ticket == 0 || word & !GRANTED != ticket {
        return false;
    }
    share.wait_ticket.store(0, Ordering::Relaxed);
    if word & GRANTED == 0 {
        decrement_waiters(device);
        return true;
    }
    let now = Counters::read(share);
    let undone = match decode(share.wait_bytes.load(Ordering::Relaxed)) {
        Ask::Reserve(bytes) => {
            let bytes = bytes.min(now.in_flight);
            let after = Counters {
                in_flight: now.in_flight - bytes,
                ..now
            };
            share.in_flight.store(after.in_flight, Ordering::Relaxed);
            super::admission::subtract(&device.in_flight, bytes);
            after
        }
        Ask::Claim(_) => {
            share.claim.store(old_claim, Ordering::Relaxed);
            Counters {
                claim: old_claim,
                ..now
            }
        }
    };
    super::admission::recharge(device, now, undone);
    true
}

/// What a waiter found when it looked at the line (after the hand-over).
pub(super) struct QueueView {
    /// The largest ticket of a queued (not granted) request.
    pub latest: u64,
    /// Some member has a charge on the device, and every such member has a request queued on
    /// it that was not granted: nobody can free anything. A member granted its turn is no party
    /// (it will collect and go on), nor is one that waits only for the driver (it is not queued
    /// in the ledger: see `src/preload/admission/near_edge.rs`).
    pub all_holders_wait: bool,
}

/// Under the device lock: the line's tail and whether all holders wait.
pub(super) fn view(layout: &LedgerLayout, device_index: usize, scan: usize) -> QueueView {
    let mut view = QueueView {
        latest: 0,
        all_holders_wait: true,
    };
    let mut holders = 0usize;
    for slot in layout.slots.iter().take(scan) {
        let share = &slot.devices[device_index];
        let word = share.wait_ticket.load(Ordering::Relaxed);
        let queued = is_queued(word);
        if queued {
            view.latest = view.latest.max(word);
        }
        if Counters::read(share).charge() != 0 {
            holders += 1;
            if !queued {
                view.all_holders_wait = false;
            }
        }
    }
    view.all_holders_wait &= holders > 0;
    view
}
