//! A context's creation, charged what it really takes on the card: one creation at a time per
//! device across processes, the estimate admitted first, the card measured across the call
//! ([`super::context_cost`]).

use std::time::{Duration, Instant};

use vramguard_core::cuda::CuResult;
use vramguard_core::ledger::ContextCreation;
use vramguard_core::settings::Policy;
use vramguard_core::units::format_size;

use super::context_cost;
use crate::log;
use crate::process::Process;
use crate::process::devices::{Context, Device};

/// How long a context creation waits for another process's creation on the same device before
/// it goes ahead unserialised (its measurement may then include the other context).
const CONTEXT_CREATION_PATIENCE: Duration = Duration::from_secs(30);

impl Process {
    /// Creates a context on `device` with `call`, charging what it really takes: one creation
    /// at a time on the device (the ledger's context-creation lock), the estimate
    /// ([`context_cost::estimate`]) admitted up front as for any allocation (under `wait`, an
    /// estimate that does not fit is waited for with the lock let go), the card read
    /// before and after the call ([`context_cost::Probe`]), and the charge set to the measured
    /// figure (the estimate when it cannot be measured). When the context took more than
    /// fits, `undo` destroys it and the caller gets `CUDA_ERROR_OUT_OF_MEMORY`. On success:
    /// the bytes charged and the driver's result.
    pub fn create_context(
        &self,
        device: &Device,
        what: &str,
        call: impl FnOnce() -> CuResult,
        undo: impl FnOnce(),
    ) -> Result<(u64, CuResult), CuResult> {
        // The up-front claim may wait its turn: never while holding the creation lock, which
        // would keep every other process's context (and its own wait in the ledger) back.
        self.ensure_claim(device)?;
        let mut one_at_a_time = self.lock_context_creation(device, what);
        let estimate = context_cost::estimate(&self.ledger, device.id, self.config.context_size);
        // Under `wait`, an estimate that does not fit now is waited for in the ledger's line
        // (seen by `vramguard status`, first come first served), the lock let go meanwhile.
        let waits = self.config.policy == Policy::Wait
            && self
                .ledger
                .available(self.slot, device.id, self.limit(device))
                < estimate;
        if waits {
            one_at_a_time = None;
        }
        let admitted = self.admit(device, Context::Named, estimate, what)?;
        if waits {
            one_at_a_time = self.lock_context_creation(device, what);
        }
        let probe = context_cost::Probe::start(&self.ledger, self.slot, device);
        let result = call();
        if !result.is_success() {
            self.rollback_after(admitted, result);
            return Err(result);
        }
        let measured = probe.finish();
        drop(one_at_a_time);
        let actual = measured.unwrap_or(estimate);
        let charged = if estimate == 0 {
            // Nothing was admitted up front (the device's contexts measured free so far).
            (actual == 0 || self.charge_now(device, actual)).then_some(actual)
        } else {
            self.commit_actual(device, admitted, actual)
        };
        if let Some(cost) = measured {
            self.ledger
                .note_context_cost(device.id, cost, context_cost::unix_ms());
        }
        match charged {
            Some(bytes) => Ok((bytes, result)),
            None => {
                undo();
                log::warn(&format!(
                    "refused {what}: it took {} on {}, more than this process may still hold there ({} available); it was destroyed again",
                    format_size(actual),
                    device.uuid,
                    format_size(
                        self.ledger
                            .available(self.slot, device.id, self.limit(device))
                    )
                ));
                Err(CuResult::OUT_OF_MEMORY)
            }
        }
    }

    /// `device`'s context-creation lock (`None`, said once, when it stayed busy: the creation
    /// then goes ahead, and its measurement may include another process's context).
    fn lock_context_creation(&self, device: &Device, what: &str) -> Option<ContextCreation> {
        self.ledger
            .lock_context_creation(device.id, Instant::now() + CONTEXT_CREATION_PATIENCE)
            .map_err(|e| log::warn(&format!("{what} is created unserialised: {e}")))
            .ok()
    }
}
