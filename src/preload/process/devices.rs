//! The devices as this process sees them: one slot per ordinal, filled at the ordinal's first
//! use by admission ([`crate::admission`]), with the card's ledger record and the last word of the
//! driver about its memory.
#![deny(unsafe_code)]

use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use vramguard_core::cuda::{CuDevice, CuUuid};
use vramguard_core::ledger::DeviceId;

use crate::driver::headroom::Watch;

/// A device as this process sees it, with its ledger record.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// The ordinal in this process (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: CuDevice,
    /// The ledger record (shared by every process using the same physical card).
    pub id: DeviceId,
    /// The card's UUID.
    pub uuid: CuUuid,
    /// The driver's total memory figure.
    pub capacity: u64,
    /// The budget: capacity less the reserve.
    pub budget: u64,
    /// This process's `VRAMGUARD_RESERVE` on this card, in bytes.
    pub reserve: u64,
    /// Up to where requests are admitted on the last driver figure ([`crate::driver::headroom::edge`]).
    pub edge: u64,
}

/// Why the current device could not be determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDevice {
    /// No current context: the driver will answer the call with its own error.
    NoContext,
    /// The device could not be registered in the ledger: `VRAMGUARD_ON_ERROR` decides.
    Unusable,
}

/// Where the device of an allocation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// The current context, which is on the device (its handle; 0 if unknown).
    Current(usize),
    /// A device named by the call (`cuMemCreate`, a context or pool creation): the current
    /// context may be elsewhere, or missing.
    Named,
}

/// What this process knows of one device ordinal.
#[derive(Default)]
pub struct DeviceSlot {
    /// Set once, at the first use of the ordinal.
    pub(crate) device: OnceLock<Device>,
    /// The last driver observation of memory the ledger does not account for.
    pub(crate) watch: Watch,
    /// The `VRAMGUARD_EXPECT` claim is in place (or given up on).
    pub(crate) claimed: AtomicBool,
}
