//! Near the edge of the card the driver decides: memory held by programs the guard does not see
//! is only known from the driver's free figure, asked when the ledger's admitted total comes
//! close to the card's size or the last figure is stale ([`crate::driver::headroom`]).

use std::time::{Duration, Instant};

use vramguard_core::cuda::CuResult;
use vramguard_core::ledger::{Request, Reservation};
use vramguard_core::units::format_size;

use super::Admitted;
use crate::driver::headroom;
use crate::driver::{self, current};
use crate::log;
use crate::process::Process;
use crate::process::devices::{Context, Device};

/// What the driver's free-memory check found for a request.
enum DriverCheck {
    /// It fits (or the cached figure shows it is far from the edge).
    Fits,
    /// It does not fit: the room the driver leaves.
    Short(u64),
    /// The driver cannot tell (no current context on that device).
    Unknown,
}

impl Process {
    /// What the ledger has admitted on `device`, this request included: every process's held
    /// bytes, other processes' reservations in flight and unused claims, and this process's
    /// reservations in flight (the charged total less this process's unused claim, which this
    /// request may draw on without growing the total). `available_after` is the ledger's
    /// figure handed back with the reservation ([`Reservation::available_after`]), taken under
    /// the device lock at the grant, so no separate read of the totals is needed.
    fn admitted(device: &Device, available_after: u64) -> u64 {
        device.budget.saturating_sub(available_after)
    }

    /// Whether `bytes`, just reserved on `device` (the ledger's admitted total then `admitted`),
    /// also fit in what the driver says is free, less the reserve and less what other processes
    /// were admitted but have not taken yet. Asked only near the edge of the card or when the
    /// last figure is stale ([`Process::far_from_edge`], [`crate::driver::headroom`]); the answer
    /// refreshes the figure.
    #[cold]
    #[inline(never)]
    fn ask_driver(
        &self,
        device: &Device,
        bytes: u64,
        admitted: u64,
        context: Context,
        now: u64,
    ) -> DriverCheck {
        let slot = self.slot_of(device.ordinal);
        // cuMemGetInfo answers for the current context's device.
        if context == Context::Named && current::current_ordinal() != Some(device.ordinal) {
            return DriverCheck::Unknown;
        }
        // Read before the driver: a guarded allocation racing with the query is then counted
        // twice rather than not at all.
        let unbacked = self.ledger.unbacked_by_others(self.slot, device.id);
        // This process's reservations in flight, this request included (the ledger's figure, or
        // at least this request when the ledger cannot tell).
        let own_in_flight = self.ledger.in_flight(self.slot, device.id).max(bytes);
        let Some((free, total)) = driver::memory() else {
            return DriverCheck::Unknown;
        };
        self.note_driver_memory(device, free, total);
        if let Some(slot) = slot {
            // What the ledger holds: its admitted total less what is admitted but not taken.
            let holds = admitted
                .saturating_sub(unbacked)
                .saturating_sub(own_in_flight);
            let unaccounted = headroom::unaccounted(device.capacity, free, holds);
            slot.watch.observe(unaccounted, now);
        }
        let room = free.saturating_sub(device.reserve).saturating_sub(unbacked);
        if bytes <= room {
            DriverCheck::Fits
        } else {
            DriverCheck::Short(room)
        }
    }

    /// Whether the driver's last figure is fresh and leaves the ledger's admitted total
    /// (`available_after` the grant) far from the edge of the card: then the driver is not asked.
    #[inline]
    pub(super) fn far_from_edge(&self, device: &Device, available_after: u64) -> bool {
        let Some(slot) = self.slot_of(device.ordinal) else {
            return false;
        };
        slot.watch
            .fresh(headroom::now())
            .is_some_and(|unaccounted| {
                headroom::far_from_edge(
                    Self::admitted(device, available_after),
                    unaccounted,
                    device.edge,
                )
            })
    }

    /// [`Process::admit`] once the ledger granted `first` but the driver's figure is stale or
    /// near the edge: the driver decides; while it is short, the reservation is returned and
    /// asked for again after a pause as long as `request`'s deadline allows.
    #[cold]
    #[inline(never)]
    pub(super) fn admit_near_edge(
        &self,
        device: &Device,
        context: Context,
        bytes: u64,
        what: &str,
        first: Reservation,
        request: &Request,
    ) -> Result<Admitted, CuResult> {
        let mut reservation = first;
        let mut driver_wait_announced = false;
        loop {
            let admitted_total = Self::admitted(device, reservation.available_after());
            let admitted = Admitted::of(reservation, device);
            let now = headroom::now();
            let room = match self.ask_driver(device, bytes, admitted_total, context, now) {
                DriverCheck::Fits | DriverCheck::Unknown => return Ok(admitted),
                DriverCheck::Short(room) => room,
            };
            self.rollback(admitted);
            Self::driver_short(
                device,
                bytes,
                room,
                what,
                request.wait_until,
                &mut driver_wait_announced,
            )?;
            reservation = match self.ledger.reserve(self.slot, device.id, bytes, request) {
                Ok(reservation) if self.far_from_edge(device, reservation.available_after()) => {
                    return Ok(Admitted::of(reservation, device));
                }
                Ok(reservation) => reservation,
                Err(refusal) => return self.refused(device, what, &refusal),
            };
        }
    }

    /// The driver leaves only `room` for `bytes` just rolled back: waits a little before the next
    /// attempt while `deadline` allows (saying so once), else refuses.
    #[cold]
    #[inline(never)]
    fn driver_short(
        device: &Device,
        bytes: u64,
        room: u64,
        what: &str,
        deadline: Option<Instant>,
        announced: &mut bool,
    ) -> Result<(), CuResult> {
        let now = Instant::now();
        let driver_short = format!(
            "the driver reports only {} free beyond the reserve and memory admitted to others",
            format_size(room)
        );
        match deadline {
            Some(deadline) if now < deadline => {
                if !*announced {
                    *announced = true;
                    log::warn(&format!(
                        "waiting for {} on {} ({what}): {driver_short} (programs not using the guard hold the rest)",
                        format_size(bytes),
                        device.uuid,
                    ));
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
                Ok(())
            }
            _ => {
                log::warn(&format!(
                    "refused {what} of {} on {}: {driver_short}",
                    format_size(bytes),
                    device.uuid,
                ));
                Err(CuResult::OUT_OF_MEMORY)
            }
        }
    }
}
