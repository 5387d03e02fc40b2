//! What `status` shows, and its three renderings: tables for people, one JSON object, and the
//! Prometheus text format. The demo's live view uses the one-line summary.
//!
//! The report is built from a ledger snapshot by `status`; nothing here reads the ledger.

use std::fmt::Write;

use serde::Serialize;
use vramguard_core::units::{format_duration, format_size};

use super::outside;

/// Everything `status` shows.
#[derive(Serialize, Debug, Default)]
pub struct StatusReport {
    /// The ledger file, or the directory where it would be.
    pub ledger: String,
    /// False when no guarded process has run yet (no ledger file).
    pub ledger_exists: bool,
    /// Every card any guarded process has used.
    pub devices: Vec<DeviceView>,
    /// Every guarded process, live ones first, then those found dead and reclaimed.
    pub processes: Vec<ProcessView>,
    /// Bytes returned to the cards from dead processes by this call.
    pub reclaimed_bytes: u64,
    /// The management library, when it was asked about the cards (`None`: no card to ask about).
    pub nvml: Option<NvmlView>,
    /// What was found wrong with the ledger (totals that disagree with its slots) and what was
    /// done about it, in words.
    pub repairs: Vec<RepairView>,
}

/// One thing `status` found wrong with the ledger.
#[derive(Serialize, Debug)]
pub struct RepairView {
    /// What was wrong.
    pub found: String,
    /// What was done: the repair, or why it could not be made.
    pub done: String,
    /// Whether it was put right.
    pub repaired: bool,
}

/// The management library as `status` found it.
#[derive(Serialize, Debug)]
pub struct NvmlView {
    /// Its name or path (`VRAMGUARD_NVML`).
    pub library: String,
    /// Whether it could be loaded and answered.
    pub found: bool,
    /// Why not, when it could not.
    pub error: Option<String>,
}

/// One card.
#[derive(Serialize, Debug)]
pub struct DeviceView {
    /// `GPU-xxxxxxxx-...`
    pub uuid: String,
    /// The driver's name for it.
    pub name: String,
    /// Its memory.
    pub capacity_bytes: u64,
    /// What guarded processes may use together (capacity less the reserve).
    pub budget_bytes: u64,
    /// Charged to processes: held + in flight + unused parts of up-front reservations.
    pub used_bytes: u64,
    /// Allocated and returned by the driver.
    pub held_bytes: u64,
    /// Admitted but not yet returned by the driver (in flight).
    pub reserved_bytes: u64,
    /// Processes waiting for memory on this card.
    pub waiting: u32,
    /// Memory on the card that no guarded process accounts for; `None` when unknown.
    pub outside_bytes: Option<u64>,
    /// Where that figure comes from: `nvml` (the management library, now) or `driver` (what a
    /// guarded process last learned from the driver); `None` when unknown.
    pub outside_source: Option<&'static str>,
    /// How old the figure is, in milliseconds (0 for `nvml`); `None` when unknown.
    pub outside_age_ms: Option<u64>,
    /// The same three, as one value.
    #[serde(skip)]
    pub outside: Option<outside::Outside>,
}

impl DeviceView {
    /// The memory outside the guard for people ([`outside::describe`]).
    pub fn outside_text(&self) -> String {
        outside::describe(self.outside)
    }
}

/// One guarded process.
#[derive(Serialize, Debug)]
pub struct ProcessView {
    /// Its pid on this host: found from the process that holds its slot's lock where this user
    /// can see it (`origin.rs`), else the pid it recorded (in its own pid namespace).
    pub pid: i32,
    /// The pid it recorded, in its own pid namespace, when that is not `pid` (a container's).
    pub namespace_pid: Option<i32>,
    /// The container it runs in (`podman 0123456789ab`), where that can be told.
    pub container: Option<String>,
    /// Its command line, as recorded when it joined.
    pub command: String,
    /// `running`, `waiting`, or `reclaimed` (found dead; its memory given back).
    pub state: &'static str,
    /// When it joined the ledger.
    pub started_unix_ms: u64,
    /// Its charge on each card.
    pub devices: Vec<ProcessDeviceView>,
    /// What it waits for, when waiting.
    pub waiting_for: Option<WaitView>,
}

/// A process's charge on one card.
#[derive(Serialize, Debug)]
pub struct ProcessDeviceView {
    /// The card.
    pub uuid: String,
    /// Charged: held + in flight + unused claim.
    pub used_bytes: u64,
    /// Allocated.
    pub held_bytes: u64,
    /// In flight.
    pub reserved_bytes: u64,
    /// Its up-front reservation (`VRAMGUARD_EXPECT`), 0 when none.
    pub claim_bytes: u64,
}

/// What a waiting process waits for.
#[derive(Serialize, Debug)]
pub struct WaitView {
    /// The card.
    pub uuid: String,
    /// The request.
    pub bytes: u64,
    /// Since when.
    pub since_unix_ms: u64,
    /// How long so far.
    pub waited_ms: u64,
}

/// `text` safe to show on a terminal: control characters (C0, DEL, C1), line and tab breaks, and
/// the bidirectional overrides that reorder what a terminal shows are written as escapes (`\x1b`,
/// `\n`, `\u{202e}`), so a command line recorded in the ledger (anyone's to choose) cannot
/// move the cursor, retitle the window or hide text in the administrator's terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Left-aligned columns, each as wide as its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The short form of a UUID for narrow tables (`GPU-1a2b3c4d`).
fn short_uuid(uuid: &str) -> &str {
    uuid.get(..12).unwrap_or(uuid)
}

/// The tables for people.
pub fn human(report: &StatusReport) -> String {
    let mut out = String::new();
    if !report.ledger_exists {
        let _ = writeln!(
            out,
            "no guarded process has run yet (no ledger in {})",
            printable(&report.ledger)
        );
        return out;
    }
    let _ = writeln!(out, "ledger: {}", printable(&report.ledger));
    if report.devices.is_empty() {
        out.push_str("\nno card has been used by a guarded process yet\n");
    } else {
        let mut rows = vec![
            [
                "DEVICE",
                "NAME",
                "CAPACITY",
                "BUDGET",
                "USED",
                "HELD",
                "IN FLIGHT",
                "WAITING",
                "OUTSIDE THE GUARD",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for d in &report.devices {
            rows.push(vec![
                d.uuid.clone(),
                printable(&d.name),
                format_size(d.capacity_bytes),
                format_size(d.budget_bytes),
                format_size(d.used_bytes),
                format_size(d.held_bytes),
                format_size(d.reserved_bytes),
                d.waiting.to_string(),
                d.outside_text(),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
        for d in &report.devices {
            if d.outside_bytes
                .is_some_and(|bytes| outside::is_large(bytes, d.capacity_bytes))
            {
                let _ = writeln!(
                    out,
                    "\n{} on {} is held outside the guard: a program started without it, the \
                     display, or a path the guard missed (see `vramguard doctor`)",
                    d.outside_text(),
                    short_uuid(&d.uuid)
                );
            }
        }
    }
    if report.processes.is_empty() {
        out.push_str("\nno guarded process is running\n");
    } else {
        let mut rows = vec![
            [
                "PID",
                "STATE",
                "DEVICE",
                "USED",
                "CLAIM",
                "WAITS FOR",
                "COMMAND",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for p in &report.processes {
            let waits = p.waiting_for.as_ref().map_or(String::new(), |w| {
                format!(
                    "{} on {} for {}",
                    format_size(w.bytes),
                    short_uuid(&w.uuid),
                    format_duration(std::time::Duration::from_millis(w.waited_ms))
                )
            });
            let shown = printable(&p.command);
            let command = match (&p.container, p.namespace_pid) {
                (Some(container), Some(inner)) => {
                    format!("{shown} (in {}, pid {inner} there)", printable(container))
                }
                (Some(container), None) => format!("{shown} (in {})", printable(container)),
                (None, Some(inner)) => format!("{shown} (pid {inner} in its pid namespace)"),
                (None, None) => shown,
            };
            if p.devices.is_empty() {
                rows.push(vec![
                    p.pid.to_string(),
                    p.state.to_string(),
                    "-".into(),
                    "0 B".into(),
                    "".into(),
                    waits,
                    command,
                ]);
                continue;
            }
            for (i, d) in p.devices.iter().enumerate() {
                let first = i == 0;
                rows.push(vec![
                    if first {
                        p.pid.to_string()
                    } else {
                        String::new()
                    },
                    if first {
                        p.state.to_string()
                    } else {
                        String::new()
                    },
                    short_uuid(&d.uuid).to_string(),
                    format_size(d.used_bytes),
                    if d.claim_bytes > 0 {
                        format_size(d.claim_bytes)
                    } else {
                        String::new()
                    },
                    if first { waits.clone() } else { String::new() },
                    if first {
                        command.clone()
                    } else {
                        String::new()
                    },
                ]);
            }
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    if report.reclaimed_bytes > 0 {
        let _ = writeln!(
            out,
            "\nreclaimed {} from processes that died without freeing it",
            format_size(report.reclaimed_bytes)
        );
    }
    for repair in &report.repairs {
        let _ = writeln!(out, "\nledger: {}; {}", repair.found, repair.done);
    }
    out
}

/// One line per card for the demo's live view: `GPU-1a2b3c4d: 3.00 GiB of 3.75 GiB used, 2 waiting
/// (script 1 holds 3.00 GiB, ...)`; `name` names a process for the reader (`pid 1234` by default).
pub fn summary_lines(report: &StatusReport, name: impl Fn(i32) -> Option<String>) -> Vec<String> {
    let name = |pid: i32| name(pid).unwrap_or_else(|| format!("pid {pid}"));
    report
        .devices
        .iter()
        .map(|d| {
            let holders: Vec<String> = report
                .processes
                .iter()
                .filter(|p| p.state != "reclaimed")
                .filter_map(|p| {
                    let used = p
                        .devices
                        .iter()
                        .find(|pd| pd.uuid == d.uuid)
                        .map_or(0, |pd| pd.used_bytes);
                    match &p.waiting_for {
                        Some(w) if w.uuid == d.uuid => Some(format!(
                            "{} waits for {}",
                            name(p.pid),
                            format_size(w.bytes)
                        )),
                        _ if used > 0 => {
                            Some(format!("{} holds {}", name(p.pid), format_size(used)))
                        }
                        _ => None,
                    }
                })
                .collect();
            let mut line = format!(
                "{}: {} of {} used, {} waiting",
                short_uuid(&d.uuid),
                format_size(d.used_bytes),
                format_size(d.budget_bytes),
                d.waiting
            );
            if !holders.is_empty() {
                let _ = write!(line, " ({})", holders.join(", "));
            }
            line
        })
        .collect()
}

/// One JSON object.
pub fn json(report: &StatusReport) -> String {
    serde_json::to_string_pretty(report).expect("the report serialises")
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The per-device gauges: name, help text, and the figure of a device (`None`: no sample).
type DeviceFamily = (&'static str, &'static str, fn(&DeviceView) -> Option<u64>);

const DEVICE_FAMILIES: [DeviceFamily; 8] = [
    (
        "vramguard_device_capacity_bytes",
        "Memory of the card.",
        |d| Some(d.capacity_bytes),
    ),
    (
        "vramguard_device_budget_bytes",
        "What guarded processes may use together on the card (capacity less the reserve).",
        |d| Some(d.budget_bytes),
    ),
    (
        "vramguard_device_used_bytes",
        "Charged to guarded processes: held, in flight and unused up-front reservations.",
        |d| Some(d.used_bytes),
    ),
    (
        "vramguard_device_held_bytes",
        "Allocated by guarded processes.",
        |d| Some(d.held_bytes),
    ),
    (
        "vramguard_device_reserved_bytes",
        "Admitted but not yet returned by the driver (in flight).",
        |d| Some(d.reserved_bytes),
    ),
    (
        "vramguard_device_waiting",
        "Guarded processes waiting for memory on the card.",
        |d| Some(u64::from(d.waiting)),
    ),
    (
        "vramguard_device_outside_bytes",
        "Memory on the card no guarded process accounts for (programs without the guard, the \
         display); absent when unknown.",
        |d| d.outside_bytes,
    ),
    (
        "vramguard_device_outside_age_seconds",
        "Age of vramguard_device_outside_bytes: 0 from the management library, else since a \
         guarded process last asked the driver.",
        |d| d.outside_bytes.and(d.outside_age_ms).map(|ms| ms / 1000),
    ),
];

/// The Prometheus text exposition format (version 0.0.4).
pub fn prometheus(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let device_labels = |d: &DeviceView| {
        format!(
            "{{uuid=\"{}\",name=\"{}\"}}",
            label(&d.uuid),
            label(&d.name)
        )
    };
    for (name, help, value) in DEVICE_FAMILIES {
        let samples = report
            .devices
            .iter()
            .filter_map(|d| Some((device_labels(d), value(d)?)))
            .collect();
        family(name, help, samples);
    }
    let live: Vec<&ProcessView> = report
        .processes
        .iter()
        .filter(|p| p.state != "reclaimed")
        .collect();
    let process_samples = live
        .iter()
        .flat_map(|p| {
            p.devices.iter().map(move |d| {
                (
                    format!(
                        "{{pid=\"{}\",command=\"{}\",uuid=\"{}\"}}",
                        p.pid,
                        label(&p.command),
                        label(&d.uuid)
                    ),
                    d.used_bytes,
                )
            })
        })
        .collect();
    family(
        "vramguard_process_used_bytes",
        "Charged to a guarded process on a card.",
        process_samples,
    );
    let waiting_samples = live
        .iter()
        .map(|p| {
            (
                format!("{{pid=\"{}\",command=\"{}\"}}", p.pid, label(&p.command)),
                p.waiting_for.as_ref().map_or(0, |w| w.bytes),
            )
        })
        .collect();
    family(
        "vramguard_process_waiting_bytes",
        "The request a guarded process waits for (0 when it does not wait).",
        waiting_samples,
    );
    family(
        "vramguard_processes",
        "Live guarded processes.",
        vec![(String::new(), live.len() as u64)],
    );
    out.push_str(&ledger_up(true));
    out
}

/// The `vramguard_ledger_up` family: 1 when the figures above it were read from the ledger.
fn ledger_up(up: bool) -> String {
    format!(
        "# HELP vramguard_ledger_up Whether the ledger could be read: 1 with the figures read from \
         it, 0 (and no other figure) when it cannot be.\n# TYPE vramguard_ledger_up gauge\n\
         vramguard_ledger_up {}\n",
        u8::from(up)
    )
}

/// The Prometheus text when the ledger cannot be read: `vramguard_ledger_up 0` and nothing else,
/// so that no stale figure outlives the trouble.
pub fn prometheus_down() -> String {
    ledger_up(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(
            printable("a\x1b]0;title\x07b\x1b[2J\tc\nd\u{9b}e\u{202e}f\x7fé"),
            "a\\x1b]0;title\\x07b\\x1b[2J\\tc\\nd\\u{9b}e\\u{202e}f\\x7fé"
        );
        assert_eq!(
            printable("python train.py --lr 0.1"),
            "python train.py --lr 0.1"
        );
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string()],
            vec!["CCC".to_string(), "D".to_string()],
        ];
        assert_eq!(table(&rows), "A    BB\nCCC  D\n");
    }
}
