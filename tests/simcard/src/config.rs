//! What the simulated card looks like, read from the environment: `SIMCUDA_DEVICES`,
//! `SIMCUDA_CONTEXT_COST`, `SIMCUDA_FRAGILE`, `SIMCUDA_LATENCY`, `SIMCUDA_REUSE_HANDLES`,
//! `SIMCUDA_RETURN_DELAY`, `SIMCUDA_NVML_PROCESSES`, `SIMCUDA_STATE` (`SIMCUDA_PROCADDR` is read by
//! the driver's lookup), and the
//! `CUDA_VISIBLE_DEVICES` filter that turns the machine's devices into a process's ordinals.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where the card state lives when `SIMCUDA_STATE` is not set.
pub const DEFAULT_STATE_PATH: &str = "/dev/shm/simcuda/state";
/// Device memory each context takes when `SIMCUDA_CONTEXT_COST` is not set.
pub const DEFAULT_CONTEXT_COST: u64 = 300 << 20;
/// Size of the one device simulated when `SIMCUDA_DEVICES` is not set.
pub const DEFAULT_DEVICE_SIZE: u64 = 4 << 30;

/// A configuration value that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable that held it.
    pub variable: &'static str,
    /// The offending text.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cannot use {:?}, expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// One simulated device as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Bytes of device memory.
    pub capacity: u64,
    /// Marketing name (`cuDeviceGetName`).
    pub name: String,
    /// `cuDeviceGetUuid`.
    pub uuid: [u8; 16],
    /// PCI domain, bus and device numbers.
    pub pci: (u32, u32, u32),
}

/// The whole card configuration, used when a state file is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSpec {
    /// The devices, in machine order.
    pub devices: Vec<DeviceSpec>,
    /// Bytes each context takes.
    pub context_cost: u64,
    /// Whether an over-size request poisons the device.
    pub fragile: bool,
}

/// The state file path from `SIMCUDA_STATE`.
pub fn state_path() -> PathBuf {
    match std::env::var_os("SIMCUDA_STATE") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_STATE_PATH),
    }
}

/// Whether the switch `name` is on (`1`, `true`, `yes` or `on`).
fn switch_from_env(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// Whether the simulated management library lists processes (`SIMCUDA_NVML_PROCESSES`, on
/// unless `0`, `false`, `no` or `off`). Off, it lists none, as NVML does inside a container whose
/// pid namespace is not the host's.
pub fn nvml_processes_from_env() -> bool {
    std::env::var("SIMCUDA_NVML_PROCESSES")
        .map_or(true, |v| !matches!(v.trim(), "0" | "false" | "no" | "off"))
}

/// Whether `SIMCUDA_FRAGILE` asks for fragile mode in this process.
pub fn fragile_from_env() -> bool {
    switch_from_env("SIMCUDA_FRAGILE")
}

/// `SIMCUDA_RETURN_DELAY=<entry point>:<duration>` (e.g. `cuCtxDestroy_v2:300ms`): that entry
/// point, its work done and the driver's lock released, waits this long before it returns, as a
/// slow driver call would, so that a test can run other threads' calls in between.
pub fn return_delay_from_env() -> Option<(String, Duration)> {
    let text = std::env::var("SIMCUDA_RETURN_DELAY").ok()?;
    let (name, delay) = text.trim().split_once(':')?;
    Some((name.to_owned(), parse_duration(delay)?))
}

/// Whether `SIMCUDA_REUSE_HANDLES` asks this process to hand out a destroyed context's handle to
/// the next context it creates, as a real driver may (its contexts are heap objects).
pub fn reuse_handles_from_env() -> bool {
    switch_from_env("SIMCUDA_REUSE_HANDLES")
}

/// The busy-wait added to each allocation and free call (`SIMCUDA_LATENCY`).
pub fn latency_from_env() -> Result<Duration, ConfigError> {
    match std::env::var("SIMCUDA_LATENCY") {
        Ok(text) if !text.trim().is_empty() => parse_duration(&text).ok_or(ConfigError {
            variable: "SIMCUDA_LATENCY",
            value: text,
            expected: "a duration such as 2us, 1ms or 0",
        }),
        _ => Ok(Duration::ZERO),
    }
}

impl CardSpec {
    /// Reads `SIMCUDA_DEVICES`, `SIMCUDA_CONTEXT_COST` and `SIMCUDA_FRAGILE`.
    pub fn from_env() -> Result<CardSpec, ConfigError> {
        let path = state_path();
        let devices = std::env::var("SIMCUDA_DEVICES").unwrap_or_default();
        let cost = std::env::var("SIMCUDA_CONTEXT_COST").unwrap_or_default();
        let context_cost = if cost.trim().is_empty() {
            DEFAULT_CONTEXT_COST
        } else {
            parse_size(&cost).ok_or(ConfigError {
                variable: "SIMCUDA_CONTEXT_COST",
                value: cost.clone(),
                expected: "a size such as 300MiB or 0",
            })?
        };
        Ok(CardSpec {
            devices: parse_devices(&devices, &path.to_string_lossy())?,
            context_cost,
            fragile: fragile_from_env(),
        })
    }
}

/// Parses a `SIMCUDA_DEVICES` value; `salt` (the state path) makes default UUIDs differ per card.
pub fn parse_devices(text: &str, salt: &str) -> Result<Vec<DeviceSpec>, ConfigError> {
    let bad = |expected| ConfigError {
        variable: "SIMCUDA_DEVICES",
        value: text.to_string(),
        expected,
    };
    let entries: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Ok(vec![default_device(0, DEFAULT_DEVICE_SIZE, salt)]);
    }
    let mut devices = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let mut device = default_device(index, DEFAULT_DEVICE_SIZE, salt);
        if !entry.contains('=') {
            device.capacity = parse_size(entry).ok_or_else(|| bad("SIZE or key=value pairs"))?;
        } else {
            for pair in entry.split(',') {
                let (key, value) = pair.split_once('=').ok_or_else(|| bad("key=value"))?;
                let value = value.trim();
                match key.trim() {
                    "size" => {
                        device.capacity = parse_size(value).ok_or_else(|| bad("size=SIZE"))?
                    }
                    "name" => device.name = value.to_string(),
                    "uuid" => {
                        device.uuid = parse_uuid(value).ok_or_else(|| bad("uuid=GPU-<32 hex>"))?
                    }
                    "pci" => {
                        device.pci = parse_pci(value).ok_or_else(|| bad("pci=DDDD:BB:DD.F"))?
                    }
                    _ => return Err(bad("keys size, name, uuid, pci")),
                }
            }
        }
        devices.push(device);
    }
    Ok(devices)
}

fn default_device(index: usize, capacity: u64, salt: &str) -> DeviceSpec {
    let mut uuid = [0u8; 16];
    let first = fnv1a64(format!("{salt}#{index}#a").as_bytes());
    let second = fnv1a64(format!("{salt}#{index}#b").as_bytes());
    uuid[..8].copy_from_slice(&first.to_be_bytes());
    uuid[8..].copy_from_slice(&second.to_be_bytes());
    DeviceSpec {
        capacity,
        name: format!("Simulated GPU {index}"),
        uuid,
        pci: (0, index as u32 + 1, 0),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Parses `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (prefix and dashes optional).
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text
        .trim()
        .strip_prefix("GPU-")
        .unwrap_or(text.trim())
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Formats a UUID the way `nvidia-smi -L` and `CUDA_VISIBLE_DEVICES` write it.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut out = String::from("GPU-");
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Formats a PCI address as `cuDeviceGetPCIBusId` does: `0000:01:00.0`.
pub fn format_pci(pci: (u32, u32, u32)) -> String {
    format!("{:04x}:{:02x}:{:02x}.0", pci.0, pci.1, pci.2)
}

fn parse_pci(text: &str) -> Option<(u32, u32, u32)> {
    let (domain, rest) = text.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let device = rest.split('.').next()?;
    Some((
        u32::from_str_radix(domain, 16).ok()?,
        u32::from_str_radix(bus, 16).ok()?,
        u32::from_str_radix(device, 16).ok()?,
    ))
}

/// Parses a byte size: `4GiB`, `512MiB`, `3.5GiB`, `1000`, `4G` (binary), `2GB` (decimal); the
/// guard's own reading of sizes ([`vramguard_core::units::parse_size`]).
pub fn parse_size(text: &str) -> Option<u64> {
    vramguard_core::units::parse_size(text).ok()
}

/// Parses `2us`, `1ms`, `0.5s`, `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" if number == 0.0 => 0.0,
        "ns" => number * 1e-9,
        "us" | "µs" => number * 1e-6,
        "ms" => number * 1e-3,
        "s" => number,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Applies `CUDA_VISIBLE_DEVICES` (`None`: not set) to the machine's devices (by UUID) and returns
/// the machine indices in ordinal order. Like the real driver, an entry that names no device (bad
/// index, unknown or ambiguous UUID prefix, a repeat) ends the list there.
pub fn visible_devices(filter: Option<&str>, uuids: &[[u8; 16]]) -> Vec<usize> {
    let Some(filter) = filter else {
        return (0..uuids.len()).collect();
    };
    let mut visible = Vec::new();
    for entry in filter.split(',').map(str::trim) {
        let found = if let Ok(index) = entry.parse::<usize>() {
            (index < uuids.len()).then_some(index)
        } else if let Some(prefix) = entry.strip_prefix("GPU-") {
            let prefix = prefix.to_ascii_lowercase();
            let matches: Vec<usize> = (0..uuids.len())
                .filter(|&i| !prefix.is_empty() && format_uuid(&uuids[i])[4..].starts_with(&prefix))
                .collect();
            (matches.len() == 1).then(|| matches[0])
        } else {
            None
        };
        match found {
            Some(index) if !visible.contains(&index) => visible.push(index),
            _ => break,
        }
    }
    visible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("3.5GiB"), Some(3758096384));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_duration("2us"), Some(Duration::from_micros(2)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
    }

    #[test]
    fn devices_from_text() {
        let devices = parse_devices("4GiB;size=8GiB,name=Big,pci=0000:0a:00.0", "s").unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].capacity, 4 << 30);
        assert_eq!(devices[0].name, "Simulated GPU 0");
        assert_eq!(devices[1].name, "Big");
        assert_eq!(devices[1].pci, (0, 10, 0));
        assert_ne!(devices[0].uuid, devices[1].uuid);
        assert!(parse_devices("size=huge", "s").is_err());
        let uuid = "GPU-00112233-4455-6677-8899-aabbccddeeff";
        assert_eq!(format_uuid(&parse_uuid(uuid).unwrap()), uuid);
    }

    #[test]
    fn visible_devices_like_the_driver() {
        let uuids = [[0x11; 16], [0x22; 16], [0x23; 16]];
        assert_eq!(visible_devices(None, &uuids), vec![0, 1, 2]);
        assert_eq!(visible_devices(Some("2,0"), &uuids), vec![2, 0]);
        assert_eq!(visible_devices(Some("1,7,0"), &uuids), vec![1]);
        assert_eq!(visible_devices(Some(""), &uuids), Vec::<usize>::new());
        assert_eq!(visible_devices(Some("GPU-1111"), &uuids), vec![0]);
        assert_eq!(
            visible_devices(Some("GPU-2,0"), &uuids),
            Vec::<usize>::new()
        );
        assert_eq!(visible_devices(Some("GPU-23,1,1"), &uuids), vec![2, 1]);
    }
}
