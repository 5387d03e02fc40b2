//! Finding a call's device: each ordinal's card, found by UUID and registered in the ledger at
//! its first use, so that processes that see the cards in different orders
//! (`CUDA_VISIBLE_DEVICES`) share one record per physical card. Devices are looked up without a
//! lock (one slot per ordinal, [`crate::process::devices`]).

use std::sync::atomic::{AtomicBool, Ordering};

use vramguard_core::cuda::{CuDevice, CuResult};
use vramguard_core::ledger::MAX_DEVICES;
use vramguard_core::settings::OnError;
use vramguard_core::units::format_size;

use crate::driver::{self, current, headroom};
use crate::log;
use crate::process::Process;
use crate::process::devices::{Context, Device, DeviceSlot, NoDevice};

impl Process {
    #[inline]
    pub(super) fn slot_of(&self, ordinal: CuDevice) -> Option<&DeviceSlot> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|index| self.devices.get(index))
    }

    /// The device of `ordinal`, registered in the ledger on first use.
    #[inline]
    pub fn device(&self, ordinal: CuDevice) -> Result<&Device, NoDevice> {
        let Some(slot) = self.slot_of(ordinal) else {
            return Err(Self::without_slot(ordinal));
        };
        match slot.device.get() {
            Some(device) => Ok(device),
            None => self.first_use(ordinal, slot),
        }
    }

    /// [`Process::device`] for an ordinal not seen yet.
    #[cold]
    #[inline(never)]
    fn first_use<'a>(
        &self,
        ordinal: CuDevice,
        slot: &'a DeviceSlot,
    ) -> Result<&'a Device, NoDevice> {
        let device = self.register(ordinal)?;
        // A racing first use registered the same record: either copy will do.
        Ok(slot.device.get_or_init(|| device))
    }

    /// An ordinal without a slot: negative, or at or beyond [`MAX_DEVICES`]. One the driver does
    /// not know is the caller's mistake, which the driver answers (`CUDA_ERROR_INVALID_DEVICE`);
    /// a real device beyond the ledger's room is unusable (`VRAMGUARD_ON_ERROR` decides; said
    /// once).
    #[cold]
    #[inline(never)]
    fn without_slot(ordinal: CuDevice) -> NoDevice {
        static SAID: AtomicBool = AtomicBool::new(false);
        if ordinal < 0 || driver::uuid(ordinal).is_none() {
            return NoDevice::NoContext;
        }
        if !SAID.swap(true, Ordering::Relaxed) {
            log::error(&format!(
                "device ordinal {ordinal} is beyond the {MAX_DEVICES} devices the ledger can track"
            ));
        }
        NoDevice::Unusable
    }

    /// Finds the card of `ordinal` and its ledger record (find-or-add by UUID).
    fn register(&self, ordinal: CuDevice) -> Result<Device, NoDevice> {
        let uuid = driver::uuid(ordinal).ok_or(NoDevice::NoContext)?;
        let capacity = driver::total_memory(ordinal).ok_or(NoDevice::NoContext)?;
        let name = driver::name(ordinal);
        let reserve = usable_reserve(self.config, capacity);
        let budget = capacity.saturating_sub(reserve);
        let id = self
            .ledger
            .register_device(uuid.0, &name, capacity, budget)
            .map_err(|e| {
                crate::process::session::ledger_failed(
                    &format!("cannot register {uuid} in the ledger"),
                    &e,
                );
                NoDevice::Unusable
            })?;
        let budget = self.ledger.budget(id);
        log::info(&format!(
            "device {ordinal} is {uuid} ({name}): {} of which {} may be used",
            format_size(capacity),
            format_size(budget)
        ));
        Ok(Device {
            ordinal,
            id,
            uuid,
            capacity,
            budget,
            reserve,
            edge: headroom::edge(capacity, reserve),
        })
    }

    /// The device of the current context, and that context.
    #[inline]
    pub fn current_device(&self) -> Result<(&Device, Context), NoDevice> {
        let (context, ordinal) = current::context_and_device().ok_or(NoDevice::NoContext)?;
        Ok((self.device(ordinal)?, Context::Current(context)))
    }

    /// What a call does when the device is unknown: pass it through, or refuse it under
    /// `ON_ERROR=closed` when the ledger is the problem.
    pub fn unaccounted(&self, why: NoDevice, pass_through: impl FnOnce() -> CuResult) -> CuResult {
        match (why, self.config.on_error) {
            (NoDevice::Unusable, OnError::Closed) => CuResult::OUT_OF_MEMORY,
            _ => pass_through(),
        }
    }
}

/// The reserve that applies on a card of `capacity` bytes: `VRAMGUARD_RESERVE`, unless it leaves
/// no budget at all (`100%`, or more than the card), which is an invalid setting: said once, and
/// the default reserve applies instead (none on a card no larger than it), so that the ledger
/// never stores a budget of 0 for everyone who comes later.
fn usable_reserve(config: &vramguard_core::settings::Config, capacity: u64) -> u64 {
    static SAID: AtomicBool = AtomicBool::new(false);
    let reserve = config.reserve.of(capacity);
    if reserve < capacity || capacity == 0 {
        return reserve;
    }
    let fallback = if DEFAULT_RESERVE < capacity {
        DEFAULT_RESERVE
    } else {
        0
    };
    if !SAID.swap(true, Ordering::Relaxed) {
        log::error(&format!(
            "invalid setting VRAMGUARD_RESERVE: a reserve of {} leaves no budget on a card of {}; \
             the default reserve of {} applies instead",
            format_size(reserve),
            format_size(capacity),
            format_size(fallback)
        ));
    }
    fallback
}

/// `VRAMGUARD_RESERVE`'s default (`docs/usage.md`).
const DEFAULT_RESERVE: u64 = 256 << 20;
