//! The `VRAMGUARD_EXPECT` claim: the whole expected load set aside at the first charge on a
//! device, so that a program either gets its whole turn or waits for it.

use std::sync::atomic::Ordering;

use vramguard_core::cuda::CuResult;
use vramguard_core::ledger::{Refusal, WaitReport};
use vramguard_core::settings::OnError;
use vramguard_core::units::format_size;

use super::context_cost;
use super::messages::describe;
use crate::log;
use crate::process::devices::{Device, DeviceSlot};
use crate::process::{Process, session};

impl Process {
    /// Sets the `VRAMGUARD_EXPECT` claim at the first charge on a device (waiting under `wait`).
    /// The claim is the expected allocations plus one context (as last measured on the device,
    /// else `VRAMGUARD_CONTEXT_SIZE`), which the guard charges on its own: users state what
    /// their program loads.
    #[inline]
    pub(super) fn ensure_claim(&self, device: &Device) -> Result<(), CuResult> {
        let Some(expect) = self.config.expect else {
            return Ok(());
        };
        let slot = self.slot_of(device.ordinal);
        if slot.is_some_and(|s| s.claimed.load(Ordering::Acquire)) {
            return Ok(());
        }
        self.claim(device, expect, slot)
    }

    /// [`Process::ensure_claim`] when the claim of `expect` bytes is not in place yet.
    #[cold]
    #[inline(never)]
    fn claim(
        &self,
        device: &Device,
        expect: u64,
        slot: Option<&DeviceSlot>,
    ) -> Result<(), CuResult> {
        let context = context_cost::estimate(&self.ledger, device.id, self.config.context_size);
        let expect = expect.saturating_add(context);
        let announce = |report: &WaitReport| self.announce_wait("VRAMGUARD_EXPECT", report);
        match self.ledger.set_claim(
            self.slot,
            device.id,
            expect,
            &self.request(device, self.deadline(), &announce),
        ) {
            Ok(()) => {
                log::info(&format!(
                    "claimed {} on {} (VRAMGUARD_EXPECT)",
                    format_size(expect),
                    device.uuid
                ));
            }
            Err(Refusal::Ledger(e)) => {
                session::ledger_failed("cannot set the VRAMGUARD_EXPECT claim", &e);
                if self.config.on_error == OnError::Closed {
                    return Err(CuResult::OUT_OF_MEMORY);
                }
            }
            Err(refusal) => {
                log::warn(&format!(
                    "cannot reserve VRAMGUARD_EXPECT={}: {}",
                    format_size(expect),
                    describe(&refusal, device.uuid)
                ));
                return Err(CuResult::OUT_OF_MEMORY);
            }
        }
        if let Some(slot) = slot {
            slot.claimed.store(true, Ordering::Release);
        }
        Ok(())
    }
}
