//! `vramguard status`: reads the ledger and shows every card and every guarded process, once or
//! every few seconds, with the memory on each card that no guarded process accounts for
//! ("outside the guard", [`super::outside`]: from the management library, else from what a
//! guarded process last learned from the driver). It never creates a CUDA context.
//!
//! Processes found dead are shown once as `reclaimed`: when the ledger is writable, their memory
//! is given back by this call (the next decision of any guarded process would do it too).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::{
    DeviceSnapshot, Ledger, LedgerError, ProcessSnapshot, ProcessState, Snapshot,
};
use vramguard_core::settings::Config;

use super::format::{
    self, DeviceView, NvmlView, ProcessDeviceView, ProcessView, RepairView, StatusReport, WaitView,
};
use super::nvml_reader::{NvmlReader, NvmlState};
use super::outside;

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables for people.
    Human,
    /// One JSON object.
    Json,
    /// Prometheus text format.
    Prometheus,
}

fn uuid_text(uuid: [u8; 16]) -> String {
    CuUuid(uuid).to_string()
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn process_view(p: &ProcessSnapshot, reclaimed: bool) -> ProcessView {
    let waiting_for = match &p.state {
        ProcessState::Waiting {
            device_uuid,
            bytes,
            since_unix_ms,
        } if !reclaimed => Some(WaitView {
            uuid: uuid_text(*device_uuid),
            bytes: *bytes,
            since_unix_ms: *since_unix_ms,
            waited_ms: now_unix_ms().saturating_sub(*since_unix_ms),
        }),
        _ => None,
    };
    let state = if reclaimed {
        "reclaimed"
    } else if waiting_for.is_some() {
        "waiting"
    } else {
        "running"
    };
    ProcessView {
        pid: p.pid,
        command: p.command.clone(),
        state,
        started_unix_ms: p.started_unix_ms,
        devices: p
            .devices
            .iter()
            .map(|d| ProcessDeviceView {
                uuid: uuid_text(d.uuid),
                used_bytes: d.charged,
                held_bytes: d.held,
                reserved_bytes: d.reserved,
                claim_bytes: d.claim,
            })
            .collect(),
        waiting_for,
    }
}

/// The view of one card, with `nvml_used`, the card's used bytes from the management library.
fn device_view(d: &DeviceSnapshot, nvml_used: Option<u64>, now_unix_ms: u64) -> DeviceView {
    let outside = outside::outside(d, nvml_used, now_unix_ms);
    DeviceView {
        uuid: uuid_text(d.uuid),
        name: d.name.clone(),
        capacity_bytes: d.capacity,
        budget_bytes: d.budget,
        used_bytes: d.used,
        held_bytes: d.held,
        reserved_bytes: d.reserved,
        waiting: d.waiting,
        outside_bytes: outside.map(|o| o.bytes),
        outside_source: outside.map(|o| o.source.name()),
        outside_age_ms: outside.map(|o| o.source.age_ms()),
        outside,
    }
}

/// Asks the management library for the used bytes of each of `snapshot`'s cards (`None` per card
/// it cannot tell; all `None` without a reader or a usable library), and how it went.
pub fn nvml_used(
    snapshot: &Snapshot,
    nvml: Option<&mut NvmlReader>,
) -> (Vec<Option<u64>>, Option<NvmlView>) {
    let unknown = vec![None; snapshot.devices.len()];
    let Some(reader) = nvml.filter(|_| !snapshot.devices.is_empty()) else {
        return (unknown, None);
    };
    let uuids: Vec<[u8; 16]> = snapshot.devices.iter().map(|d| d.uuid).collect();
    let used = reader.used(&uuids);
    let error = match reader.state() {
        NvmlState::Failed(message) => Some(message.clone()),
        _ => None,
    };
    let view = NvmlView {
        library: reader.library().display().to_string(),
        found: used.is_some(),
        error,
    };
    (used.unwrap_or(unknown), Some(view))
}

/// The report for one snapshot plus the views of processes found dead (and reclaimed) before it.
fn report_from(
    ledger_path: &Path,
    snapshot: &Snapshot,
    dead: Vec<ProcessView>,
    reclaimed: u64,
    nvml: Option<&mut NvmlReader>,
) -> StatusReport {
    let (used, nvml) = nvml_used(snapshot, nvml);
    let now = now_unix_ms();
    let mut processes: Vec<ProcessView> = snapshot
        .processes
        .iter()
        .filter(|p| p.alive)
        .map(|p| process_view(p, false))
        .collect();
    processes.extend(dead);
    StatusReport {
        ledger: ledger_path.display().to_string(),
        ledger_exists: true,
        devices: snapshot
            .devices
            .iter()
            .zip(used)
            .map(|(d, used)| device_view(d, used, now))
            .collect(),
        processes,
        reclaimed_bytes: reclaimed,
        nvml,
        repairs: Vec::new(),
    }
}

/// Reads the ledger in `dir`, and the cards' used memory from `nvml` (when given). A missing
/// ledger is not an error: the report says so.
pub fn collect(dir: &Path, nvml: Option<&mut NvmlReader>) -> Result<StatusReport, LedgerError> {
    let ledger = match Ledger::open_existing(dir) {
        Ok(ledger) => ledger,
        Err(LedgerError::Missing { .. }) => {
            return Ok(StatusReport {
                ledger: dir.display().to_string(),
                ..StatusReport::default()
            });
        }
        Err(LedgerError::Directory { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(StatusReport {
                ledger: dir.display().to_string(),
                ..StatusReport::default()
            });
        }
        Err(e) => return Err(e),
    };
    // Totals that disagree with the slots are recomputed (and said) before anything is shown.
    let repairs: Vec<RepairView> = ledger
        .repair_totals()
        .into_iter()
        .map(|f| RepairView {
            found: f.found,
            done: f.done,
            repaired: f.repaired,
        })
        .collect();
    let before = ledger.snapshot();
    // Dead entries are shown once, as reclaimed: given back here when the ledger is writable,
    // otherwise by the next decision of any guarded process.
    let dead: Vec<ProcessView> = before
        .processes
        .iter()
        .filter(|p| !p.alive)
        .map(|p| process_view(p, true))
        .collect();
    let (reclaimed, after) = if !dead.is_empty() && !ledger.is_read_only() {
        let reclaimed = ledger.reclaim_dead();
        (reclaimed, ledger.snapshot())
    } else {
        (0, before)
    };
    let mut report = report_from(ledger.path(), &after, dead, reclaimed, nvml);
    report.repairs = repairs;
    Ok(report)
}

fn render(format: Format, report: &StatusReport) -> String {
    match format {
        Format::Human => format::human(report),
        Format::Json => format::json(report) + "\n",
        Format::Prometheus => format::prometheus(report),
    }
}

/// `vramguard status [--json | --prometheus] [--watch [SECS]] [--output FILE]`. With `output`
/// each report replaces the file atomically instead of going to stdout.
pub fn status(format: Format, watch: Option<f64>, output: Option<&Path>) -> i32 {
    let (config, errors) = Config::from_env();
    for error in errors {
        eprintln!("vramguard status: {error}");
    }
    let interval = watch.map(|secs| Duration::from_secs_f64(secs.clamp(0.1, 86_400.0)));
    let mut nvml = NvmlReader::new(&config.nvml);
    loop {
        let text = match collect(&config.dir, Some(&mut nvml)) {
            Ok(report) => render(format, &report),
            Err(e) => {
                eprintln!("vramguard status: {e}");
                return 1;
            }
        };
        if let Some(path) = output {
            if let Err(e) = super::atomic_file::write(path, text.as_bytes(), 0o644) {
                eprintln!("vramguard status: cannot write {}: {e}", path.display());
                return 1;
            }
            match interval {
                Some(every) => {
                    std::thread::sleep(every);
                    continue;
                }
                None => return 0,
            }
        }
        let mut stdout = std::io::stdout().lock();
        let shown = match interval {
            // Clear the screen and move home before each redraw.
            Some(_) => write!(stdout, "\x1b[H\x1b[2J{text}"),
            None => write!(stdout, "{text}"),
        };
        if shown.and_then(|()| stdout.flush()).is_err() {
            return 0; // the reader went away (a closed pipe)
        }
        match interval {
            Some(every) => std::thread::sleep(every),
            None => return 0,
        }
    }
}
