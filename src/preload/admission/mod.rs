//! Admission: every allocation is reserved in the ledger *before* the driver call (the ledger
//! refuses or queues what does not fit under the budget), checked against the driver's own free
//! figure near the edge of the card, then committed when the call succeeds or rolled back when it
//! fails. The in-process mutexes are never held across a driver call or a ledger wait.
//!
//! - [`registry`]: each ordinal's card and ledger record, found by UUID.
//! - [`claims`]: the `VRAMGUARD_EXPECT` claim at a device's first charge.
//! - [`waiting`]: the policy's deadline and the line saying who a request waits for.
//! - [`near_edge`]: the driver's free figure, asked only near the edge ([`crate::driver::headroom`]).
//! - [`contexts`]: a context's creation, charged what it takes ([`context_cost`]).
//! - [`messages`]: refusals said in sizes people read.
#![deny(unsafe_code)]

mod claims;
pub mod context_cost;
mod contexts;
mod messages;
mod near_edge;
mod registry;
mod waiting;

use vramguard_core::cuda::{CuDevice, CuResult};
use vramguard_core::ledger::{Refusal, Request, Reservation, WaitReport};
use vramguard_core::settings::OnError;

use crate::log;
use crate::process::devices::{Context, Device};
use crate::process::{Process, session};
use messages::describe;

/// Bytes admitted by the ledger for one driver call: commit them when the call succeeds, roll
/// them back when it fails.
#[must_use = "an admission must be committed or rolled back"]
#[derive(Debug)]
pub struct Admitted {
    reservation: Option<Reservation>,
    ordinal: CuDevice,
}

impl Admitted {
    /// Nothing admitted (nothing asked, or the call passes through unaccounted).
    pub const NOTHING: Admitted = Admitted {
        reservation: None,
        ordinal: -1,
    };

    fn of(reservation: Reservation, device: &Device) -> Admitted {
        Admitted {
            reservation: Some(reservation),
            ordinal: device.ordinal,
        }
    }
}

impl Process {
    /// Admits `bytes` on `device` for `what`: an admission to commit or roll back (empty when
    /// the ledger cannot decide and `ON_ERROR=open` lets the call through unaccounted), or the
    /// code to return (`CUDA_ERROR_OUT_OF_MEMORY`).
    pub fn admit(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
    ) -> Result<Admitted, CuResult> {
        if bytes == 0 {
            return Ok(Admitted::NOTHING);
        }
        self.ensure_claim(device)?;
        let deadline = self.deadline();
        let announce = |report: &WaitReport| self.announce_wait(what, report);
        let request = self.request(device, deadline, &announce);
        match self.ledger.reserve(self.slot, device.id, bytes, &request) {
            Ok(reservation) if self.far_from_edge(device, reservation.available_after()) => {
                Ok(Admitted::of(reservation, device))
            }
            Ok(reservation) => {
                self.admit_near_edge(device, context, bytes, what, reservation, &request)
            }
            Err(refusal) => self.refused(device, what, &refusal),
        }
    }

    /// Admits `bytes` on `device`, then runs the driver call `call`: `Ok` with the admission to
    /// commit and the driver's success, or `Err` with the code to return (refused, or the driver
    /// failed and the admission was rolled back).
    #[inline]
    pub fn call_admitted(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
        call: impl FnOnce() -> CuResult,
    ) -> Result<(Admitted, CuResult), CuResult> {
        let admitted = self.admit(device, context, bytes, what)?;
        let result = call();
        if result.is_success() {
            Ok((admitted, result))
        } else {
            self.rollback_after(admitted, result);
            Err(result)
        }
    }

    /// The answer to a request the ledger did not grant.
    #[cold]
    #[inline(never)]
    pub(super) fn refused(
        &self,
        device: &Device,
        what: &str,
        refusal: &Refusal,
    ) -> Result<Admitted, CuResult> {
        if let Refusal::Ledger(e) = refusal {
            session::ledger_failed(&format!("the ledger cannot decide {what}"), e);
            return match self.config.on_error {
                OnError::Open => Ok(Admitted::NOTHING),
                OnError::Closed => Err(CuResult::OUT_OF_MEMORY),
            };
        }
        log::warn(&format!(
            "refused {what}: {}",
            describe(refusal, device.uuid)
        ));
        Err(CuResult::OUT_OF_MEMORY)
    }

    /// The driver call succeeded: the reservation becomes held. Returns the bytes charged.
    #[inline]
    pub fn commit(&self, admitted: Admitted) -> u64 {
        admitted.reservation.map_or(0, |r| {
            let bytes = r.bytes();
            self.ledger.commit(r);
            bytes
        })
    }

    /// The driver call failed: the reservation is returned. A refusal by the driver of what the
    /// guard admitted means its last figure was wrong: the next request asks it again.
    #[cold]
    #[inline(never)]
    pub(super) fn rollback_after(&self, admitted: Admitted, result: CuResult) {
        if result == CuResult::OUT_OF_MEMORY
            && let Some(slot) = self.slot_of(admitted.ordinal)
        {
            slot.watch.invalidate();
        }
        self.rollback(admitted);
    }

    /// The reservation is returned.
    pub fn rollback(&self, admitted: Admitted) {
        if let Some(r) = admitted.reservation {
            self.ledger.rollback(r);
        }
    }

    /// Commits `admitted` and adjusts the charge to `actual` bytes (pitched allocations learn
    /// their size from the driver). Returns the bytes charged, or `None` when more was taken than
    /// admitted and the difference does not fit (the caller undoes the allocation).
    pub fn commit_actual(&self, device: &Device, admitted: Admitted, actual: u64) -> Option<u64> {
        if admitted.reservation.is_none() {
            return Some(0);
        }
        let admitted = self.commit(admitted);
        if actual <= admitted {
            self.ledger.release(self.slot, device.id, admitted - actual);
            return Some(actual);
        }
        if self.charge_now(device, actual - admitted) {
            Some(actual)
        } else {
            self.ledger.release(self.slot, device.id, admitted);
            None
        }
    }

    /// Charges `bytes` more on `device` at once if they fit (never waits).
    pub(super) fn charge_now(&self, device: &Device, bytes: u64) -> bool {
        let no_wait = Request {
            limit: self.limit(device),
            wait_until: None,
            on_wait: None,
        };
        match self.ledger.reserve(self.slot, device.id, bytes, &no_wait) {
            Ok(extra) => {
                self.ledger.commit(extra);
                true
            }
            Err(_) => false,
        }
    }
}
