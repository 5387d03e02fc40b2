//! Sizes and durations as users write them, and sizes as people read them.
//!
//! Sizes: a number (decimal fractions allowed) followed by an optional unit, case-insensitive.
//! `KiB`, `MiB`, `GiB`, `TiB` and the bare `K`, `M`, `G`, `T` are powers of 1024 (as in
//! `nvidia-smi` and most GPU tools); `KB`, `MB`, `GB`, `TB` are powers of 1000; `B` or no unit is
//! bytes. A fractional result is rounded down to whole bytes. Amounts may also be a percentage of
//! a card's capacity (`5%`), where a setting allows it.
//!
//! Durations: a number and `ms`, `s`, `m`, `h` (no unit means seconds).

use std::fmt;
use std::time::Duration;

/// Why a size or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// The text is empty.
    Empty,
    /// The number part is missing or not a number.
    BadNumber {
        /// the text as given
        text: String,
    },
    /// The unit is not one this reader knows.
    BadUnit {
        /// the unit as given
        unit: String,
    },
    /// The value does not fit in 64 bits, or a percentage is over 100.
    OutOfRange {
        /// the text as given
        text: String,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Empty => write!(f, "empty value"),
            UnitError::BadNumber { text } => write!(f, "`{text}` does not start with a number"),
            UnitError::BadUnit { unit } => write!(f, "unknown unit `{unit}`"),
            UnitError::OutOfRange { text } => write!(f, "`{text}` is out of range"),
        }
    }
}

impl std::error::Error for UnitError {}

/// An amount of memory: absolute, or a share of the card it applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A number of bytes.
    Bytes(u64),
    /// A percentage (0 to 100) of a device's capacity.
    Percent(f64),
}

impl Amount {
    /// The number of bytes this amount means on a device of `capacity` bytes.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Amount::Bytes(bytes) => bytes,
            // Percent is checked to be within 0..=100 when parsed, so this never exceeds capacity.
            Amount::Percent(pct) => ((capacity as f64) * pct / 100.0) as u64,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Bytes(bytes) => write!(f, "{}", format_size(*bytes)),
            Amount::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

fn split_number(text: &str) -> Result<(f64, &str), UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let value: f64 = number.parse().map_err(|_| UnitError::BadNumber {
        text: text.to_string(),
    })?;
    if !value.is_finite() {
        return Err(UnitError::OutOfRange {
            text: text.to_string(),
        });
    }
    Ok((value, unit.trim()))
}

/// Reads a size such as `512MiB`, `3.5GiB`, `4G`, `1.5GB` or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(text)?;
    let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(UnitError::BadUnit {
                unit: unit.to_string(),
            });
        }
    };
    let bytes = value * multiplier;
    if bytes >= u64::MAX as f64 {
        return Err(UnitError::OutOfRange {
            text: text.trim().to_string(),
        });
    }
    Ok(bytes as u64)
}

/// Reads a size or a percentage of capacity (`5%`).
pub fn parse_amount(text: &str) -> Result<Amount, UnitError> {
    let trimmed = text.trim();
    if let Some(number) = trimmed.strip_suffix('%') {
        let (value, unit) = split_number(number)?;
        if !unit.is_empty() {
            return Err(UnitError::BadUnit {
                unit: format!("{unit}%"),
            });
        }
        if value > 100.0 {
            return Err(UnitError::OutOfRange {
                text: trimmed.to_string(),
            });
        }
        return Ok(Amount::Percent(value));
    }
    parse_size(trimmed).map(Amount::Bytes)
}

/// Reads a duration such as `500ms`, `30s`, `10m`, `1.5h` or `45` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (value, unit) = split_number(text)?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(UnitError::BadUnit {
                unit: unit.to_string(),
            });
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| UnitError::OutOfRange {
        text: text.trim().to_string(),
    })
}

/// Prints a size for people: `0 B`, `512 B`, `300.0 MiB`, `3.50 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else if value >= 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// Prints a duration for people: `250 ms`, `12.0 s`, `10 min`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", duration.as_secs_f64())
    } else {
        format!("{} min", duration.as_secs() / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    #[test]
    fn sizes_in_iec_and_decimal_units() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", MIB),
            ("512MiB", 512 * MIB),
            ("512mib", 512 * MIB),
            ("3.5GiB", 3 * GIB + GIB / 2),
            ("4G", 4 * GIB),
            ("4 GiB", 4 * GIB),
            ("1.5GB", 1_500_000_000),
            ("100MB", 100_000_000),
            ("2k", 2048),
            ("7B", 7),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert!(matches!(
            parse_size("lots"),
            Err(UnitError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_size("12 parsecs"),
            Err(UnitError::BadUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(UnitError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_size("1.2.3G"),
            Err(UnitError::BadNumber { .. })
        ));
    }

    #[test]
    fn amounts_take_percentages_of_capacity() {
        assert_eq!(parse_amount("5%"), Ok(Amount::Percent(5.0)));
        assert_eq!(parse_amount("5%").unwrap().of(4 * GIB), (4 * GIB) / 20);
        assert_eq!(parse_amount("256MiB").unwrap().of(4 * GIB), 256 * MIB);
        assert!(matches!(
            parse_amount("101%"),
            Err(UnitError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_amount("5MiB%"),
            Err(UnitError::BadUnit { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(matches!(
            parse_duration("3 fortnights"),
            Err(UnitError::BadUnit { .. })
        ));
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(300 * MIB), "300 MiB");
        assert_eq!(format_size(3 * GIB + GIB / 2), "3.50 GiB");
        assert_eq!(format_size(20 * MIB), "20.0 MiB");
        assert_eq!(format_size(u64::MAX), "16384 PiB");
    }
}
