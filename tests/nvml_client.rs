//! The management library client (`vramguard_core::nvml`) against the simulated management
//! library (`tests/simnvml`), checked against what the simulated card itself reports
//! (`simcuda report --json`): devices by index and by UUID, the card's memory, the processes on
//! it and their memory, the growing process buffer, the container case where NVML lists nobody,
//! errors that name the call; and the simulated library's exports.
//!
//! The client runs in a child (this test binary re-run as an "observer", selected by an
//! environment variable before the test harness starts), because NVML's state is per process
//! and the simulated library reads the card's location from its process's environment.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::report::{device_u64, process};
use support::{Running, Sandbox, nvml_simulator, run_with_deadline};
use vramguard_core::nvml::{Nvml, NvmlError, NvmlReturn};

const MIB: u64 = 1 << 20;
const OBSERVER_VAR: &str = "VRAMGUARD_NVML_TEST_OBSERVER";

/// When this binary is started as the observer, report what NVML says as JSON and exit.
#[ctor::ctor(unsafe)]
fn maybe_observe() {
    if std::env::var_os(OBSERVER_VAR).is_none() {
        return;
    }
    let library = std::env::var_os("VRAMGUARD_NVML").expect("the observer needs VRAMGUARD_NVML");
    let ask: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    println!("{}", observe(Path::new(&library), &ask));
    std::process::exit(0);
}

/// Everything the client can learn from the library at `library`, as JSON; `ask` are pids whose
/// memory on device 0 is asked with `process_memory`.
fn observe(library: &Path, ask: &[u32]) -> Value {
    let nvml = match Nvml::open(library) {
        Ok(nvml) => nvml,
        Err(e) => return json!({"open_error": e.to_string()}),
    };
    // A second initialisation, shut down at once: NVML counts them, the first stays usable.
    drop(Nvml::open(library).expect("a second initialisation"));
    let count = nvml.device_count().expect("device count");
    let devices: Vec<Value> = (0..count)
        .map(|index| {
            let device = nvml.device_by_index(index).expect("device by index");
            let memory = nvml.memory(device).expect("memory");
            let processes: Vec<Value> = nvml
                .processes(device)
                .expect("processes")
                .iter()
                .map(|p| json!({"pid": p.pid, "used": p.used}))
                .collect();
            json!({"total": memory.total, "free": memory.free, "used": memory.used,
                   "processes": processes})
        })
        .collect();
    let device = nvml.device_by_index(0).expect("device 0");
    let asked: HashMap<String, Option<u64>> = ask
        .iter()
        .map(|&pid| {
            let memory = nvml.process_memory(device, pid).expect("process memory");
            (pid.to_string(), memory)
        })
        .collect();
    let by_uuid = |uuid: [u8; 16]| -> Value {
        match nvml.device_by_uuid(&uuid) {
            Ok(found) => {
                json!({"index": (0..count).position(|i| nvml.device_by_index(i).ok() == Some(found)),
                                "used": nvml.memory(found).expect("memory").used})
            }
            Err(e) => json!({"error": e.to_string(), "code": e.code().map(|c| c.0),
                             "function": match &e { NvmlError::Call { function, .. } => *function, _ => "" }}),
        }
    };
    let uuids: Vec<Value> = std::env::var("OBSERVE_UUIDS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|text| by_uuid(parse_uuid(text)))
        .collect();
    let out_of_range = nvml.device_by_index(count).err().map(|e| e.to_string());
    json!({"count": count, "devices": devices, "asked": asked, "by_uuid": uuids,
           "out_of_range": out_of_range})
}

fn parse_uuid(text: &str) -> [u8; 16] {
    let hex: String = text
        .trim_start_matches("GPU-")
        .chars()
        .filter(|c| *c != '-')
        .collect();
    let mut uuid = [0u8; 16];
    for (i, byte) in uuid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    uuid
}

/// Runs the observer in `sandbox`'s environment, asking about `pids`, looking up `uuids`.
fn observe_in(sandbox: &Sandbox, pids: &[u32], uuids: &[&str]) -> Value {
    let mut command = sandbox.program(std::env::current_exe().unwrap());
    command
        .env(OBSERVER_VAR, "1")
        .env("OBSERVE_UUIDS", uuids.join(","))
        .args(pids.iter().map(u32::to_string));
    let out = run_with_deadline(command, support::HANG_GUARD);
    assert!(
        out.status.success(),
        "observer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("the observer printed no JSON ({e}): {text}"))
}

fn card(devices: &str) -> Sandbox {
    let mut sandbox = Sandbox::new(devices);
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "100MiB");
    sandbox.init();
    sandbox
}

#[test]
fn the_client_reads_the_simulated_card() {
    let sandbox = card("size=4GiB,uuid=GPU-11111111-2222-3333-4444-555555555555;2GiB");
    let unguarded = sandbox.hold(false, "512MiB");
    let guarded = sandbox.hold(true, "256MiB");
    let observed = observe_in(
        &sandbox,
        &[unguarded.pid(), guarded.pid(), std::process::id()],
        &[],
    );
    let report = sandbox.sim_report();
    let uuids: Vec<String> = (0..2)
        .map(|i| report["devices"][i]["uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uuids[0], "GPU-11111111-2222-3333-4444-555555555555");
    assert_eq!(observed["count"], 2, "{observed}");
    for index in 0..2 {
        let device = &observed["devices"][index];
        let capacity = device_u64(&report, index, "capacity_bytes");
        let used = device_u64(&report, index, "used_bytes");
        assert_eq!(device["total"], capacity, "{observed}");
        assert_eq!(device["used"], used, "{observed}");
        assert_eq!(device["free"], capacity - used, "{observed}");
    }
    // Everything the card holds on device 0: both clients' memory and contexts, guarded or not.
    assert_eq!(
        device_u64(&report, 0, "used_bytes"),
        512 * MIB + 256 * MIB + 2 * 100 * MIB
    );
    assert_eq!(observed["devices"][1]["used"], 0);
    assert_eq!(observed["devices"][1]["processes"], json!([]));
    let listed: HashMap<u64, u64> = observed["devices"][0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pid"].as_u64().unwrap(), p["used"].as_u64().unwrap()))
        .collect();
    for client in [&unguarded, &guarded] {
        let truth = process(&report, client.pid()).unwrap()["devices"][0]["used_bytes"]
            .as_u64()
            .unwrap();
        assert_eq!(
            listed.get(&u64::from(client.pid())),
            Some(&truth),
            "{observed}"
        );
        assert_eq!(observed["asked"][client.pid().to_string()], truth);
    }
    assert_eq!(
        listed.len(),
        2,
        "only processes with a context are listed: {observed}"
    );
    // The observer itself has no context: not listed, so `None`.
    assert_eq!(
        observed["asked"][std::process::id().to_string()],
        Value::Null
    );
    let out_of_range = observed["out_of_range"].as_str().unwrap();
    assert!(
        out_of_range.contains("nvmlDeviceGetHandleByIndex_v2")
            && out_of_range.contains("NVML_ERROR_INVALID_ARGUMENT"),
        "{out_of_range}"
    );
}

#[test]
fn devices_are_found_by_uuid_and_an_unknown_uuid_is_not_found() {
    let sandbox = card(
        "size=4GiB,uuid=GPU-11111111-2222-3333-4444-555555555555;size=2GiB,uuid=GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    );
    let _holder = sandbox.hold(false, "64MiB");
    let observed = observe_in(
        &sandbox,
        &[],
        &[
            "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "GPU-11111111-2222-3333-4444-555555555555",
            "GPU-99999999-2222-3333-4444-555555555555",
        ],
    );
    let found = &observed["by_uuid"];
    assert_eq!(found[0]["index"], 1, "{observed}");
    assert_eq!(found[0]["used"], 0);
    assert_eq!(found[1]["index"], 0);
    assert_eq!(found[1]["used"], 64 * MIB + 100 * MIB);
    assert_eq!(
        found[2]["function"], "nvmlDeviceGetHandleByUUID",
        "{observed}"
    );
    assert_eq!(found[2]["code"], NvmlReturn::NOT_FOUND.0);
    assert!(
        found[2]["error"].as_str().unwrap().contains("Not Found"),
        "nvmlErrorString's text: {observed}"
    );
}

#[test]
fn the_process_list_grows_past_its_first_buffer() {
    // The client first asks for 32 entries; 36 processes make NVML answer
    // NVML_ERROR_INSUFFICIENT_SIZE once.
    let mut sandbox = Sandbox::new("8GiB");
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "1MiB");
    sandbox.init();
    let holders: Vec<Running> = (0..36).map(|_| sandbox.hold(false, "2MiB")).collect();
    let observed = observe_in(&sandbox, &[holders[35].pid()], &[]);
    let listed = observed["devices"][0]["processes"].as_array().unwrap();
    assert_eq!(listed.len(), 36, "{observed}");
    for holder in &holders {
        assert!(
            listed
                .iter()
                .any(|p| p["pid"] == holder.pid() && p["used"] == 3 * MIB),
            "{} missing: {observed}",
            holder.pid()
        );
    }
    assert_eq!(observed["asked"][holders[35].pid().to_string()], 3 * MIB);
}

#[test]
fn inside_a_foreign_pid_namespace_nvml_lists_nobody() {
    let mut sandbox = card("4GiB");
    sandbox.set_env("SIMCUDA_NVML_PROCESSES", "0");
    let holder = sandbox.hold(false, "512MiB");
    let observed = observe_in(&sandbox, &[holder.pid()], &[]);
    assert_eq!(observed["devices"][0]["processes"], json!([]), "{observed}");
    assert_eq!(observed["asked"][holder.pid().to_string()], Value::Null);
    // The card's memory is still known.
    assert_eq!(observed["devices"][0]["used"], 512 * MIB + 100 * MIB);
}

#[test]
fn a_missing_library_or_one_without_nvml_is_an_error_naming_it() {
    let mut sandbox = card("4GiB");
    sandbox.without_nvml();
    let observed = observe_in(&sandbox, &[], &[]);
    let error = observed["open_error"].as_str().unwrap();
    assert!(
        error.contains("libnvidia-ml.so.1") && error.contains("cannot load"),
        "{observed}"
    );
    // The simulated driver is a library, but not the management library.
    let driver = sandbox.lib_dir.join("libcuda.so.1");
    match Nvml::open(&driver) {
        Err(NvmlError::MissingSymbol { symbol, library }) => {
            assert_eq!(symbol, "nvmlInit_v2");
            assert_eq!(library, driver);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_simulated_library_exports_only_nvml_entry_points() {
    let library = nvml_simulator();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&library)
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    for needed in [
        "nvmlInit_v2",
        "nvmlShutdown",
        "nvmlErrorString",
        "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetComputeRunningProcesses_v3",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} not exported: {names:?}"
        );
    }
    let foreign: Vec<&String> = names.iter().filter(|n| !n.starts_with("nvml")).collect();
    assert!(
        foreign.is_empty(),
        "{} exports {foreign:?}",
        library.display()
    );
    let soname = Command::new("readelf")
        .arg("-d")
        .arg(&library)
        .output()
        .expect("readelf");
    assert!(
        String::from_utf8_lossy(&soname.stdout).contains("[libnvidia-ml.so.1]"),
        "soname"
    );
}
