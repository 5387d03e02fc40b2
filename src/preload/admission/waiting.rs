//! How long a request may wait in the ledger's line (`VRAMGUARD_POLICY`, `VRAMGUARD_TIMEOUT`),
//! and the line saying who it waits for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::{Request, WaitReport};
use vramguard_core::settings::Policy;
use vramguard_core::units::format_size;

use crate::log;
use crate::process::Process;
use crate::process::devices::Device;

impl Process {
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.config.policy {
            Policy::Deny => None,
            Policy::Wait => {
                let now = Instant::now();
                let wait = self
                    .config
                    .wait_timeout
                    .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));
                Some(
                    now.checked_add(wait)
                        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
                )
            }
        }
    }

    pub(super) fn announce_wait(&self, what: &str, report: &WaitReport) {
        let holders: Vec<String> = report
            .holders
            .iter()
            .map(|(pid, command, bytes)| format!("pid {pid} ({command}) {}", format_size(*bytes)))
            .collect();
        let text = format!(
            "waiting for {} on {} ({what}): {} available; held by {}",
            format_size(report.requested),
            CuUuid(report.device_uuid),
            format_size(report.available),
            if holders.is_empty() {
                "nobody (queued behind earlier requests)".into()
            } else {
                holders.join(", ")
            }
        );
        if !self.wait_announced.swap(true, Ordering::AcqRel) {
            log::warn(&text)
        } else {
            log::debug(&text)
        }
    }

    pub(super) fn request<'a>(
        &self,
        device: &Device,
        deadline: Option<Instant>,
        on_wait: &'a dyn Fn(&WaitReport),
    ) -> Request<'a> {
        Request {
            limit: self.limit(device),
            wait_until: deadline,
            on_wait: Some(on_wait),
        }
    }
}
