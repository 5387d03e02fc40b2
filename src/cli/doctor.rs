//! `vramguard doctor`: checks that the guard can work on this machine, and when CUDA cannot
//! start, names the usual real causes of "CUDA unknown error" it can see and what to do.
//!
//! The library and the driver are opened in child processes (`__probe-library`,
//! `__probe-driver`), so a crash or hang in either cannot take the doctor with it. The files it
//! reads (`/proc/modules`, `/dev/nvidia*`, `/proc/driver/nvidia/*`, the systemd units, the driver
//! library directories) are looked up under `$VRAMGUARD_DOCTOR_ROOT` (default `/`), so tests can
//! stage each cause.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::{Ledger, LedgerError, SPACE_FIX, layout};
use vramguard_core::settings::{self, Config};
use vramguard_core::units::format_size;

use super::driver::{Driver, describe, open_library};
use super::nvml_reader::{NvmlReader, NvmlState};
use super::{library, outside, status};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the doctor's report, with what to do when it is not ok.
pub(super) struct Finding {
    level: Level,
    what: String,
    fix: Option<String>,
}

impl Finding {
    pub(super) fn ok(what: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }
    pub(super) fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// How long a probe child may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `vramguard <args>` as a child with a deadline; returns (exit code, stdout, stderr).
fn probe(args: &[&std::ffi::OsStr]) -> Result<(Option<i32>, String, String), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the vramguard executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args(args).env_remove("LD_PRELOAD");
    run_probe(command)
}

/// Runs `command` (stdin closed, small output) with the probe deadline; returns (exit code,
/// stdout, stderr).
pub(super) fn run_probe(mut command: Command) -> Result<(Option<i32>, String, String), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a probe: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > PROBE_DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the probe did not finish within {} s",
                    PROBE_DEADLINE.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for the probe: {e}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot read the probe: {e}"))?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The file system root the cause probes look under.
fn root() -> PathBuf {
    std::env::var_os("VRAMGUARD_DOCTOR_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn check_library() -> Finding {
    let path = match library::locate() {
        Ok(path) => path,
        Err(e) => return Finding::fail(format!("library: {e}"), "build or install it"),
    };
    match fs::read(&path).map(|bytes| bytes.starts_with(b"\x7fELF")) {
        Ok(true) => {}
        Ok(false) => {
            return Finding::fail(
                format!("library: {} is not an ELF shared object", path.display()),
                "rebuild it",
            );
        }
        Err(e) => {
            return Finding::fail(
                format!("library: cannot read {}: {e}", path.display()),
                "check its permissions",
            );
        }
    }
    match probe(&["__probe-library".as_ref(), path.as_os_str()]) {
        Ok((Some(0), _, _)) => Finding::ok(format!("library: {} loads", path.display())),
        Ok((_, out, err)) => Finding::fail(
            format!(
                "library: {} does not load: {}",
                path.display(),
                format!("{out}{err}").trim()
            ),
            "rebuild it for this machine (cargo build --release --workspace)",
        ),
        Err(e) => Finding::fail(format!("library: {e}"), "rebuild it"),
    }
}

fn check_ledger_dir(dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            findings.push(Finding::fail(
                format!("ledger: {} exists but is not a directory", dir.display()),
                "remove it or point VRAMGUARD_DIR at a directory",
            ));
            return findings;
        }
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            let shared = if mode & 0o002 != 0 {
                "shared with every user"
            } else {
                "only its owner and group can join; chmod 1777 it to share it with every user"
            };
            match tempfile_probe(dir) {
                Ok(()) => findings.push(Finding::ok(format!(
                    "ledger: directory {} is writable (mode {mode:o}, {shared})",
                    dir.display()
                ))),
                Err(e) => findings.push(Finding::fail(
                    format!(
                        "ledger: cannot write in {} ({e}; mode {mode:o})",
                        dir.display()
                    ),
                    format!(
                        "make it writable for every user of the GPU: sudo chmod 1777 {}",
                        dir.display()
                    ),
                )),
            }
        }
        Err(_) => {
            // Only the ledger directory itself is ever created: its parent must exist.
            let parent = dir.parent().filter(|p| p.is_dir()).map(Path::to_path_buf);
            match parent {
                Some(parent) if tempfile_probe(&parent).is_ok() => {
                    findings.push(Finding::ok(format!(
                        "ledger: {} does not exist yet; the first guarded program creates it",
                        dir.display()
                    )))
                }
                _ => {
                    findings.push(Finding::fail(
                        format!("ledger: {} does not exist and cannot be created", dir.display()),
                        "create it (sudo vramguard host-setup --dir DIR for one group, or sudo mkdir -m \
                         1777 DIR for every user) or point VRAMGUARD_DIR at a writable directory",
                    ));
                }
            }
            return findings;
        }
    }
    match Ledger::open_existing(dir) {
        Ok(ledger) => {
            // Totals that disagree with the slots: recomputed (and said), or a failure.
            let repairs = ledger.repair_totals();
            for repair in &repairs {
                let what = format!("ledger: {}; {}", repair.found, repair.done);
                findings.push(if repair.repaired {
                    Finding::warn(what, "nothing more: the ledger agrees with its members now")
                } else {
                    Finding::fail(
                        what,
                        "run vramguard doctor as a user who may write the ledger, or start any \
                         guarded program: it repairs the totals",
                    )
                });
            }
            let snapshot = ledger.snapshot();
            let live = snapshot.processes.iter().filter(|p| p.alive).count();
            if repairs.iter().all(|r| r.repaired) {
                findings.push(Finding::ok(format!(
                    "ledger: {} is valid ({} card(s), {live} guarded process(es))",
                    ledger.path().display(),
                    snapshot.devices.len()
                )));
            }
        }
        Err(LedgerError::Missing { .. }) => findings.push(Finding::ok(
            "ledger: no ledger file yet (no guarded program has run)",
        )),
        Err(e) => findings.push(Finding::fail(format!("ledger: {e}"), "see the message")),
    }
    findings
}

/// Whether the management library can be used, and on each card of the ledger the memory that
/// no guarded process accounts for: a warning when it is large ([`outside::is_large`]).
fn check_outside(dir: &Path, library: &Path) -> Vec<Finding> {
    let mut reader = NvmlReader::new(library);
    let mut findings = vec![match reader.open() {
        NvmlState::Open(count) => Finding::ok(format!(
            "nvml: {} found ({count} device(s)); status shows the memory held outside the guard",
            library.display()
        )),
        NvmlState::Failed(message) => Finding::ok(format!(
            "nvml: {} not usable ({message}); status shows the memory outside the guard as \
             guarded programs last learned it from the driver",
            library.display()
        )),
        NvmlState::Unopened => Finding::ok(format!("nvml: {} not opened", library.display())),
    }];
    let Ok(ledger) = Ledger::open_existing(dir) else {
        return findings; // check_ledger_dir says why
    };
    let snapshot = ledger.snapshot();
    let (used, _) = status::nvml_used(&snapshot, Some(&mut reader));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for (device, used) in snapshot.devices.iter().zip(used) {
        let card = format!("card {}", CuUuid(device.uuid));
        let Some(found) = outside::outside(device, used, now) else {
            findings.push(Finding::ok(format!(
                "{card}: memory outside the guard unknown (no management library, and no guarded \
                 program has asked the driver yet)"
            )));
            continue;
        };
        let figure = outside::describe(Some(found));
        if outside::is_large(found.bytes, device.capacity) {
            findings.push(Finding::warn(
                format!(
                    "{card}: {figure} of {} is held outside the guard",
                    format_size(device.capacity)
                ),
                "memory no guarded program accounts for: a program started without the guard \
                 (start it with `vramguard run`, or `vramguard env` for a virtualenv), the \
                 display server, or a runtime path the guard missed; `nvidia-smi` lists the \
                 processes on the card. Guarded programs get that much less",
            ));
        } else {
            findings.push(Finding::ok(format!("{card}: {figure} outside the guard")));
        }
    }
    findings
}

/// The free space of the ledger's file system against what the ledger needs: the storage it
/// lacks (all of it while it does not exist), and one more ledger's size to spare (a creation
/// racing another, a re-creation after removal, a repair after truncation).
fn check_ledger_space(dir: &Path) -> Finding {
    if !dir.ancestors().any(|p| p.exists()) {
        return Finding::ok("ledger: no existing directory to ask for free space");
    }
    let Some(status::Room {
        existing,
        free,
        missing,
    }) = status::room(dir)
    else {
        return Finding::warn(
            format!(
                "ledger: cannot ask the file system of {} for its free space",
                dir.display()
            ),
            "check it with df -h",
        );
    };
    let size = layout::FILE_SIZE as u64;
    let free_here = format!(
        "{} free on the file system of {}",
        format_size(free),
        existing.display()
    );
    if free < missing {
        Finding::fail(
            format!(
                "ledger: {free_here}, and the ledger needs {}: guarded programs cannot use it and \
                 follow VRAMGUARD_ON_ERROR",
                format_size(missing)
            ),
            SPACE_FIX,
        )
    } else if free < missing + size {
        let needs = if missing == 0 {
            "the ledger has all its storage".to_string()
        } else {
            format!("the ledger needs {}", format_size(missing))
        };
        Finding::warn(
            format!(
                "ledger: only {free_here}: {needs}, and {} to spare are wanted (to make it again \
                 or repair it); programs sharing the file system, such as data loader workers, \
                 fail when it is full",
                format_size(size)
            ),
            SPACE_FIX,
        )
    } else {
        Finding::ok(format!("ledger: {free_here}"))
    }
}

/// Creates and removes a file in `dir`.
fn tempfile_probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".vramguard-doctor-{}", std::process::id()));
    fs::write(&path, b"")?;
    fs::remove_file(&path)
}

/// What `__probe-driver` reported.
#[derive(Default, Debug)]
struct DriverReport {
    opened: Option<Result<(), String>>,
    library: Option<PathBuf>,
    init: Option<u32>,
    init_text: String,
    version: Option<i32>,
    devices: Vec<String>,
}

fn parse_driver_report(text: &str) -> DriverReport {
    let mut report = DriverReport::default();
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "open" if value == "ok" => report.opened = Some(Ok(())),
            "open" => report.opened = Some(Err(value.trim_start_matches("error ").to_string())),
            "init" => {
                let (code, text) = value.split_once(' ').unwrap_or((value, ""));
                report.init = code.parse().ok();
                report.init_text = text.to_string();
            }
            "version" => report.version = value.parse().ok(),
            "path" => report.library = Some(PathBuf::from(value)),
            "device" => report.devices.push(value.to_string()),
            _ => {}
        }
    }
    report
}

/// `vramguard __probe-driver PATH`: opens the driver and prints what it sees, one fact a line.
pub fn probe_driver(path: &Path) -> i32 {
    let driver = match Driver::open(path) {
        Ok(driver) => driver,
        Err(e) => {
            println!("open error {e}");
            return 1;
        }
    };
    println!("open ok");
    if let Some(path) = driver.library_path() {
        println!("path {}", path.display());
    }
    let result = driver.init();
    println!("init {} {}", result.0, describe(result));
    if !result.is_success() {
        return 1;
    }
    if let Ok(version) = driver.version() {
        println!("version {version}");
    }
    let count = driver.device_count().unwrap_or(0);
    for ordinal in 0..count {
        let Ok(device) = driver.device(ordinal) else {
            continue;
        };
        let name = driver
            .device_name(device)
            .unwrap_or_else(|e| format!("(name unavailable: {e})"));
        let memory = driver
            .device_total_mem(device)
            .map_or_else(|e| format!("memory unavailable: {e}"), format_size);
        println!("device {ordinal}: {name}, {memory}");
    }
    0
}

/// `vramguard __probe-library PATH`: opens a shared library.
pub fn probe_library(path: &Path) -> i32 {
    match open_library(path) {
        Ok(_) => 0,
        Err(e) => {
            println!("{e}");
            1
        }
    }
}

fn check_driver(driver: &Path) -> (Vec<Finding>, bool, Option<PathBuf>) {
    match probe(&["__probe-driver".as_ref(), driver.as_os_str()]) {
        Ok((_, out, _)) => {
            let report = parse_driver_report(&out);
            let (findings, works) = judge_driver(driver, &report);
            (findings, works, report.library)
        }
        Err(e) => (
            vec![Finding::fail(
                format!("driver: {e}"),
                "see the causes below",
            )],
            false,
            None,
        ),
    }
}

/// The findings for what the driver probe reported, and whether CUDA works.
fn judge_driver(driver: &Path, report: &DriverReport) -> (Vec<Finding>, bool) {
    match &report.opened {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return (
                vec![Finding::fail(
                    format!("driver: cannot open {}: {e}", driver.display()),
                    "install the NVIDIA driver (its libcuda.so.1), or in a container start it with the \
                     NVIDIA container toolkit (docker run --gpus all); VRAMGUARD_DRIVER names another library",
                )],
                false,
            );
        }
        None => {
            return (
                vec![Finding::fail(
                    "driver: the probe said nothing",
                    "run it again",
                )],
                false,
            );
        }
    }
    match report.init {
        Some(0) => {}
        Some(_) => {
            return (
                vec![Finding::fail(
                    format!("driver: cuInit failed with {}", report.init_text),
                    "CUDA cannot start on this machine; the causes found are listed below",
                )],
                false,
            );
        }
        None => {
            return (
                vec![Finding::fail(
                    "driver: the probe did not report cuInit",
                    "run it again",
                )],
                false,
            );
        }
    }
    let version = report.version.map_or("unknown".to_string(), |v| {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    });
    let mut findings = vec![Finding::ok(format!(
        "driver: {} works (CUDA {version}, {} device(s))",
        driver.display(),
        report.devices.len()
    ))];
    if report.devices.is_empty() {
        findings.push(Finding::warn(
            "driver: no CUDA device is visible",
            "check CUDA_VISIBLE_DEVICES and nvidia-smi",
        ));
    }
    for device in &report.devices {
        findings.push(Finding::ok(format!("device {device}")));
    }
    (findings, true)
}

/// The NVIDIA kernel module's version, from `/proc/driver/nvidia/version`.
fn kernel_module_version(root: &Path) -> Option<String> {
    let text = fs::read_to_string(under(root, "/proc/driver/nvidia/version")).ok()?;
    let line = text.lines().find(|l| l.contains("Kernel Module"))?;
    let after = line.split("Kernel Module").nth(1)?;
    after
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// The driver version in a library's file name (`libcuda.so.550.54.14` -> `550.54.14`).
fn library_version(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let version = name.strip_prefix("libcuda.so.")?;
    let plausible =
        version.contains('.') && version.chars().all(|c| c.is_ascii_digit() || c == '.');
    plausible.then(|| version.to_string())
}

/// The versions of the user-space driver libraries installed (`libcuda.so.<version>`).
fn library_versions(root: &Path) -> Vec<(String, PathBuf)> {
    const DIRS: &[&str] = &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/local/nvidia/lib64",
    ];
    let mut found = Vec::new();
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(under(root, dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(version) = library_version(&path)
                && !found.iter().any(|(v, _): &(String, PathBuf)| *v == version)
            {
                found.push((version, path));
            }
        }
    }
    found
}

/// Whether a systemd unit is enabled, from its symlinks under /etc/systemd/system.
fn unit_enabled(root: &Path, unit: &str) -> bool {
    let Ok(entries) = fs::read_dir(under(root, "/etc/systemd/system")) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let is_hook_dir = entry.file_name().to_string_lossy().ends_with(".requires")
            || entry.file_name().to_string_lossy().ends_with(".wants");
        is_hook_dir && entry.path().join(unit).exists()
    })
}

/// The usual real causes of a CUDA start failure that can be seen from here.
/// `loaded` is the driver library the probe opened, if it could.
fn causes(root: &Path, loaded: Option<&Path>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let modules = fs::read_to_string(under(root, "/proc/modules")).ok();
    let module_loaded = |name: &str| {
        modules
            .as_deref()
            .is_some_and(|m| m.lines().any(|l| l.split_whitespace().next() == Some(name)))
    };
    let driver_present = module_loaded("nvidia") || under(root, "/proc/driver/nvidia").exists();
    if modules.is_some() && !driver_present {
        findings.push(Finding::fail(
            "cause: the NVIDIA kernel module is not loaded",
            "load it (sudo modprobe nvidia) or reinstall the driver; after a kernel update, reboot so \
             the module is built for the running kernel",
        ));
    }
    if driver_present && modules.is_some() && !module_loaded("nvidia_uvm") {
        findings.push(Finding::fail(
            "cause: the nvidia_uvm module is not loaded (CUDA needs it)",
            "sudo modprobe nvidia-uvm (or sudo nvidia-modprobe -u -c=0); if it was unloaded by a \
             suspend/resume, see the suspend cause",
        ));
    }
    let has_device_nodes =
        under(root, "/dev/nvidiactl").exists() || under(root, "/dev/nvidia0").exists();
    if has_device_nodes && !under(root, "/dev/nvidia-uvm").exists() {
        findings.push(Finding::fail(
            "cause: /dev/nvidia-uvm is missing",
            "on the host: sudo nvidia-modprobe -u -c=0 (creates it); in a container: start it with \
             the NVIDIA container toolkit (docker run --gpus all) or pass --device /dev/nvidia-uvm",
        ));
    }
    if let Some(kernel) = kernel_module_version(root) {
        let mut libraries = library_versions(root);
        if let Some(path) = loaded
            && let Some(version) = library_version(path)
            && !libraries.iter().any(|(v, _)| *v == version)
        {
            libraries.push((version, path.to_path_buf()));
        }
        if !libraries.is_empty() && !libraries.iter().any(|(v, _)| *v == kernel) {
            let found: Vec<String> = libraries
                .iter()
                .map(|(v, p)| format!("{v} ({})", p.display()))
                .collect();
            findings.push(Finding::fail(
                format!(
                    "cause: driver version mismatch: kernel module {kernel}, user-space library {}",
                    found.join(", ")
                ),
                "the driver was upgraded without a reboot (or half installed): reboot, or reinstall \
                 one driver version so both sides agree",
            ));
        }
    }
    if driver_present {
        let services = ["nvidia-suspend.service", "nvidia-resume.service"];
        let missing: Vec<&str> = services
            .iter()
            .copied()
            .filter(|s| !unit_enabled(root, s))
            .collect();
        let preserve = fs::read_to_string(under(root, "/proc/driver/nvidia/params"))
            .ok()
            .and_then(|p| {
                p.lines()
                    .find(|l| l.starts_with("PreserveVideoMemoryAllocations"))
                    .map(|l| l.trim_end().ends_with(" 1") || l.trim_end().ends_with(":1"))
            });
        if !missing.is_empty() || preserve == Some(false) {
            let mut what =
                String::from("cause: suspend/resume is not handled by the NVIDIA services (");
            if !missing.is_empty() {
                what.push_str(&format!("{} not enabled", missing.join(", ")));
            }
            if preserve == Some(false) {
                if !missing.is_empty() {
                    what.push_str("; ");
                }
                what.push_str("PreserveVideoMemoryAllocations=0");
            }
            what.push_str("): if CUDA broke after a suspend, this is the usual cause");
            findings.push(Finding::warn(
                what,
                "now: sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm (or reboot); for good: sudo \
                 systemctl enable nvidia-suspend nvidia-resume nvidia-hibernate and set \
                 options nvidia NVreg_PreserveVideoMemoryAllocations=1 in /etc/modprobe.d",
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::warn(
            "cause: none of the usual causes is visible from here",
            "run nvidia-smi; check dmesg for NVRM messages; a reboot clears a wedged driver",
        ));
    }
    findings
}

/// `vramguard doctor`.
pub fn doctor() -> i32 {
    let (config, errors) = Config::from_env();
    let mut findings = Vec::new();
    if errors.is_empty() {
        findings.push(Finding::ok("settings: every VRAMGUARD_* variable is valid"));
    }
    for error in errors {
        findings.push(Finding::fail(
            format!("settings: {error}"),
            "fix the variable (vramguard env --list); `vramguard run` refuses to start a program with it",
        ));
    }
    for (name, meant) in Config::misspelt_in_env() {
        findings.push(Finding::warn(
            format!("settings: {}", settings::misspelling_message(&name, meant)),
            format!("rename it to {meant}"),
        ));
    }
    findings.push(check_library());
    findings.push(super::interpreter::check(&config));
    findings.extend(check_ledger_dir(&config.dir));
    findings.push(check_ledger_space(&config.dir));
    findings.extend(check_outside(&config.dir, &config.nvml));
    let (driver_findings, driver_works, driver_library) = check_driver(&config.driver);
    findings.extend(driver_findings);
    if !driver_works {
        findings.extend(causes(&root(), driver_library.as_deref()));
    }
    let mut worst = Level::Ok;
    for finding in &findings {
        let tag = match finding.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {}", finding.what);
        if let Some(fix) = &finding.fix {
            println!("      -> {fix}");
        }
        worst = worst.max(finding.level);
    }
    if worst == Level::Ok { 0 } else { 1 }
}
