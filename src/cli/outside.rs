//! Memory on a card that no guarded process accounts for, "outside the guard": a program started
//! without the guard, the display server, a runtime path the guard missed (and, on a real card,
//! what the driver reserves for itself, and contexts charged an estimate that cost more).
//!
//! From the management library when it can say: the card's used memory now, less what the
//! ledger says guarded processes hold. Else from what a guarded process last learned from the
//! driver: the card's used memory then, less what the ledger held then, with its age. Else
//! unknown. Never negative: a ledger that holds more than the card uses (a context cheaper than
//! its estimate) makes it 0.

use std::time::Duration;

use vramguard_core::ledger::DeviceSnapshot;
use vramguard_core::units::{format_duration, format_size};

const GIB: u64 = 1 << 30;

/// Where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The management library, just now.
    Nvml,
    /// The driver, as a guarded process last asked it, `age_ms` ago.
    Driver {
        /// How old the figure is.
        age_ms: u64,
    },
}

impl Source {
    /// The name `status --json` uses: `nvml` or `driver`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Nvml => "nvml",
            Source::Driver { .. } => "driver",
        }
    }

    /// How old the figure is (0 for the management library's).
    pub fn age_ms(self) -> u64 {
        match self {
            Source::Nvml => 0,
            Source::Driver { age_ms } => age_ms,
        }
    }
}

/// The memory outside the guard on one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outside {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure comes from.
    pub source: Source,
}

/// The memory outside the guard on `device`, given the card's used bytes from the management
/// library (`None` when it cannot say) and the time now in Unix milliseconds.
pub fn outside(
    device: &DeviceSnapshot,
    nvml_used: Option<u64>,
    now_unix_ms: u64,
) -> Option<Outside> {
    if let Some(used) = nvml_used {
        return Some(Outside {
            bytes: used.saturating_sub(device.held),
            source: Source::Nvml,
        });
    }
    device.driver.map(|figure| Outside {
        bytes: figure.unaccounted,
        source: Source::Driver {
            age_ms: now_unix_ms.saturating_sub(figure.seen_unix_ms),
        },
    })
}

/// The figure for people: `1.20 GiB (NVML)`, `812 MiB (driver, 12.0 s ago)`, or `unknown`.
pub fn describe(outside: Option<Outside>) -> String {
    match outside {
        None => "unknown".to_string(),
        Some(Outside {
            bytes,
            source: Source::Nvml,
        }) => format!("{} (NVML)", format_size(bytes)),
        Some(Outside {
            bytes,
            source: Source::Driver { age_ms },
        }) => format!(
            "{} (driver, {} ago)",
            format_size(bytes),
            format_duration(Duration::from_millis(age_ms))
        ),
    }
}

/// Whether `bytes` outside the guard on a card of `capacity` bytes are worth a warning: more
/// than a tenth of the card or 1 GiB, whichever is smaller.
pub fn is_large(bytes: u64, capacity: u64) -> bool {
    bytes > (capacity / 10).min(GIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vramguard_core::ledger::DriverFigure;

    const MIB: u64 = 1 << 20;

    fn device(held: u64, driver: Option<DriverFigure>) -> DeviceSnapshot {
        DeviceSnapshot {
            uuid: [1; 16],
            name: "card".into(),
            capacity: 8 * GIB,
            budget: 7 * GIB,
            used: held,
            held,
            reserved: 0,
            waiting: 0,
            driver,
        }
    }

    #[test]
    fn the_management_library_is_believed_first() {
        let figure = DriverFigure {
            used: 5 * GIB,
            unaccounted: 3 * GIB,
            seen_unix_ms: 1_000,
        };
        let card = device(2 * GIB, Some(figure));
        assert_eq!(
            outside(&card, Some(2 * GIB + 700 * MIB), 9_000),
            Some(Outside {
                bytes: 700 * MIB,
                source: Source::Nvml
            })
        );
    }

    #[test]
    fn without_it_the_driver_figure_stands_with_its_age() {
        let figure = DriverFigure {
            used: 5 * GIB,
            unaccounted: 3 * GIB,
            seen_unix_ms: 1_000,
        };
        // What the ledger held then counts, not what it holds now.
        let card = device(0, Some(figure));
        let found = outside(&card, None, 13_000).unwrap();
        assert_eq!(found.bytes, 3 * GIB);
        assert_eq!(found.source, Source::Driver { age_ms: 12_000 });
        assert_eq!(
            (found.source.name(), found.source.age_ms()),
            ("driver", 12_000)
        );
        // A clock that went back never makes the age wrap.
        assert_eq!(
            outside(&card, None, 500).unwrap().source,
            Source::Driver { age_ms: 0 }
        );
    }

    #[test]
    fn figures_for_people_name_their_source() {
        let nvml = Outside {
            bytes: GIB + GIB / 5,
            source: Source::Nvml,
        };
        assert_eq!(describe(Some(nvml)), "1.20 GiB (NVML)");
        let driver = Outside {
            bytes: 812 * MIB,
            source: Source::Driver { age_ms: 12_000 },
        };
        assert_eq!(describe(Some(driver)), "812 MiB (driver, 12.0 s ago)");
        assert_eq!(describe(None), "unknown");
    }

    #[test]
    fn unknown_when_nobody_can_say() {
        assert_eq!(outside(&device(GIB, None), None, 1), None);
    }

    #[test]
    fn never_negative() {
        // The ledger charges more than the card uses (contexts cheaper than the estimate).
        let card = device(3 * GIB, None);
        assert_eq!(outside(&card, Some(2 * GIB), 1).map(|o| o.bytes), Some(0));
    }

    #[test]
    fn large_means_a_tenth_of_the_card_or_a_gibibyte() {
        assert!(!is_large(400 * MIB, 4 * GIB));
        assert!(is_large(410 * MIB, 4 * GIB));
        assert!(!is_large(GIB, 80 * GIB));
        assert!(is_large(GIB + 1, 80 * GIB));
        assert!(!is_large(0, 0));
    }
}
