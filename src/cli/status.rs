//! `vramguard status`: reads the ledger and shows every card and every guarded process, once or
//! every few seconds, with the memory on each card that no guarded process accounts for
//! ("outside the guard", [`super::outside`]: from the management library, else from what a
//! guarded process last learned from the driver). It never creates a CUDA context.
//!
//! Processes found dead are shown once as `reclaimed`: when the ledger is writable, their memory
//! is given back by this call (the next decision of any guarded process would do it too).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::{
    DeviceSnapshot, Ledger, LedgerError, ProcessSnapshot, ProcessState, SPACE_FIX, Snapshot,
    backing, layout,
};
use vramguard_core::settings::Config;
use vramguard_core::units::format_size;

use super::format::{
    self, DeviceView, NvmlView, ProcessDeviceView, ProcessView, RepairView, StatusReport, WaitView,
};
use super::nvml_reader::{NvmlReader, NvmlState};
use super::origin;
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
        namespace_pid: None,
        container: None,
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
    let holders = origin::holders(ledger_path);
    let mut processes: Vec<ProcessView> = snapshot
        .processes
        .iter()
        .filter(|p| p.alive)
        .map(|p| {
            let mut view = process_view(p, false);
            if let Some(holder) = holders
                .get(&p.slot)
                .and_then(|found| origin::member(found, p.pid))
            {
                if let Ok(host_pid) = i32::try_from(holder.pid) {
                    if host_pid != p.pid {
                        view.namespace_pid = Some(p.pid);
                    }
                    view.pid = host_pid;
                }
                view.container = holder.container.clone();
            }
            view
        })
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

/// Where a ledger for `dir` would be made, how much its file system has free, and how much a
/// ledger still needs there (all of it when there is none yet; what its file lacks otherwise).
/// `None` when no existing directory or no free-space figure can be had.
pub struct Room {
    /// The nearest existing directory of `dir` (itself, or an ancestor).
    pub existing: PathBuf,
    /// Bytes free for an unprivileged process on its file system.
    pub free: u64,
    /// Bytes the ledger still needs there.
    pub missing: u64,
}

/// The [`Room`] for a ledger in `dir`.
pub fn room(dir: &Path) -> Option<Room> {
    let existing = dir.ancestors().find(|p| p.exists())?.to_path_buf();
    let free = backing::free_space(&existing)?;
    let size = layout::FILE_SIZE as u64;
    let missing = match std::fs::symlink_metadata(dir.join(layout::FILE_NAME)) {
        Ok(meta) if meta.is_file() => size.saturating_sub(meta.blocks().saturating_mul(512)),
        _ => size,
    };
    Some(Room {
        existing,
        free,
        missing,
    })
}

/// Why `report` (of the ledger directory `dir`) cannot stand as it is: no ledger exists and none
/// fits on the directory's file system, so every guarded program there fails to make one.
fn no_room(report: &StatusReport, dir: &Path) -> Option<String> {
    if report.ledger_exists {
        return None;
    }
    let room = room(dir)?;
    (room.free < room.missing).then(|| {
        format!(
            "no ledger fits in {}: {} free on the file system of {}, and a ledger needs {}; no \
             guarded program can make one there, so each follows VRAMGUARD_ON_ERROR; {SPACE_FIX}",
            dir.display(),
            format_size(room.free),
            room.existing.display(),
            format_size(room.missing)
        )
    })
}

/// One report, or why there is none.
fn report_text(format: Format, dir: &Path, nvml: &mut NvmlReader) -> Result<String, String> {
    let report = collect(dir, Some(nvml)).map_err(|e| e.to_string())?;
    match no_room(&report, dir) {
        Some(why) => Err(why),
        None => Ok(render(format, &report)),
    }
}

/// `vramguard status [--json | --prometheus] [--watch [SECS]] [--output FILE]`. With `output`
/// each report replaces the file atomically instead of going to stdout. A ledger that cannot be
/// read is exit code 1, except under `--prometheus --watch`, which goes on: each round that
/// cannot read it writes `vramguard_ledger_up 0` and no other figure (never the last good
/// report, which would look healthy), and the next good round writes `1` and the figures again.
pub fn status(format: Format, watch: Option<f64>, output: Option<&Path>) -> i32 {
    let (config, errors) = Config::from_env();
    for error in errors {
        eprintln!("vramguard status: {error}");
    }
    let interval = watch.map(|secs| Duration::from_secs_f64(secs.clamp(0.1, 86_400.0)));
    let mut nvml = NvmlReader::new(&config.nvml);
    // What the last round said on stderr, so a watch says each trouble once, not every round.
    let mut said: Option<String> = None;
    // Redraws clear a terminal; into a pipe or a file the reports follow one another with no
    // control codes for a reader to trip over: tables with a blank line between them, JSON
    // objects one after another (a stream JSON readers take as it comes).
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let text = match report_text(format, &config.dir, &mut nvml) {
            Ok(text) => {
                if said.take().is_some() && interval.is_some() {
                    eprintln!("vramguard status: the ledger can be read again");
                }
                text
            }
            Err(why) => {
                if said.as_deref() != Some(why.as_str()) {
                    eprintln!("vramguard status: {why}");
                }
                said = Some(why);
                match (format, interval) {
                    (Format::Prometheus, Some(_)) => format::prometheus_down(),
                    (Format::Prometheus, None) => {
                        if let Some(path) = output {
                            // Never leave the last good figures standing for a collector.
                            let down = format::prometheus_down();
                            let _ = super::atomic_file::write(path, down.as_bytes(), 0o644);
                        }
                        return 1;
                    }
                    _ => return 1,
                }
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
            Some(_) if terminal => write!(stdout, "\x1b[H\x1b[2J{text}"),
            Some(_) if !first && format == Format::Human => write!(stdout, "\n{text}"),
            _ => write!(stdout, "{text}"),
        };
        first = false;
        if shown.and_then(|()| stdout.flush()).is_err() {
            return 0; // the reader went away (a closed pipe)
        }
        match interval {
            Some(every) => std::thread::sleep(every),
            None => return 0,
        }
    }
}
