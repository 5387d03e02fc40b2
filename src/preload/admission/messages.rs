//! The ledger's refusals said in sizes people read, for the one line a refused call prints.

use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::Refusal;
use vramguard_core::units::{format_duration, format_size};

/// A refusal of the ledger, said in sizes people read.
pub fn describe(refusal: &Refusal, uuid: CuUuid) -> String {
    match refusal {
        Refusal::NeverFits { requested, budget } => format!(
            "{} can never fit on this card at all (its budget is {} on {uuid})",
            format_size(*requested),
            format_size(*budget)
        ),
        Refusal::OverLimit {
            requested, limit, ..
        } if requested > limit => format!(
            "{} can never fit within this process's per-process limit (VRAMGUARD_LIMIT) of {} on \
             {uuid}",
            format_size(*requested),
            format_size(*limit)
        ),
        Refusal::OverLimit {
            requested,
            held,
            limit,
        } => format!(
            "this process has reached its per-process limit (VRAMGUARD_LIMIT) on {uuid}: it holds \
             {} of its {} limit, and asks {} more",
            format_size(*held),
            format_size(*limit),
            format_size(*requested)
        ),
        Refusal::NoRoom {
            requested,
            available,
        } => format!(
            "{} do not fit now ({} available on {uuid})",
            format_size(*requested),
            format_size(*available)
        ),
        Refusal::TimedOut { requested, waited } => format!(
            "waited {} for {} on {uuid} without room appearing",
            format_duration(*waited),
            format_size(*requested)
        ),
        Refusal::Deadlock { requested } => format!(
            "{} refused on {uuid}: every process holding memory on the device is waiting",
            format_size(*requested)
        ),
        other => other.to_string(),
    }
}
