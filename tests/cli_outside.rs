//! "Outside the guard": memory on a card that no guarded process accounts for, as `vramguard
//! status` (table, `--json`, `--prometheus`) and `vramguard doctor` show it. An unguarded
//! simulated client holds memory beside a guarded one; the figure must be exactly what the
//! simulated card says the unguarded process holds (its allocations and its context), from the
//! management library when there is one, else from what a guarded process last learned from the
//! driver (with its age), else unknown. `status` itself never creates a CUDA context.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::report::process;
use support::{ClientPath, Finished, Sandbox, artifacts, spawn};
use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::Ledger;

const MIB: u64 = 1 << 20;
/// How long a child may take: only catches a hang.
const DEADLINE: Duration = support::HANG_GUARD;

fn vramguard(sandbox: &Sandbox, args: &[&str]) -> (Finished, u32) {
    let mut command = sandbox.program(artifacts().cli);
    command.args(args);
    let running = spawn(command);
    let pid = running.pid();
    (running.finish(DEADLINE), pid)
}

fn status(sandbox: &Sandbox, args: &[&str]) -> String {
    let (out, _) = vramguard(sandbox, &[&["status"][..], args].concat());
    assert!(out.status.success(), "status {args:?}: {}", out.stderr);
    out.stdout
}

fn status_json(sandbox: &Sandbox) -> Value {
    let text = status(sandbox, &["--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts that a line of `doctor`'s output starts with `level` (`ok`, `warn`) and contains
/// every one of `needles`.
fn assert_doctor_says(doctor: &Finished, level: &str, needles: &[&str]) {
    assert!(
        doctor
            .stdout
            .lines()
            .any(|l| l.starts_with(level) && needles.iter().all(|n| l.contains(n))),
        "no `{level}` line with {needles:?}:\n{}",
        doctor.stdout
    );
}

/// What the simulated card says `pid` holds on its first device (allocations and contexts).
fn card_holds(sandbox: &Sandbox, pid: u32) -> u64 {
    let report = sandbox.sim_report();
    process(&report, pid).unwrap_or_else(|| panic!("{pid} not on the card: {report}"))["devices"][0]
        ["used_bytes"]
        .as_u64()
        .unwrap()
}

fn card() -> Sandbox {
    let sandbox = Sandbox::new("size=4GiB,name=Outside GPU");
    sandbox.init();
    sandbox
}

#[test]
fn status_shows_what_an_unguarded_program_holds_from_the_management_library() {
    let mut sandbox = card();
    let guarded = sandbox.hold(true, "256MiB");
    // The guard accounts for everything the guarded process holds (its context included).
    let alone = status_json(&sandbox);
    let device = &alone["devices"][0];
    assert_eq!(device["outside_bytes"], 0, "{alone}");
    assert_eq!(device["outside_source"], "nvml", "{alone}");
    assert_eq!(device["held_bytes"], card_holds(&sandbox, guarded.pid()));
    assert_eq!(alone["nvml"]["found"], true, "{alone}");

    let unguarded = sandbox.hold(false, "512MiB");
    let expected = card_holds(&sandbox, unguarded.pid());
    assert_eq!(expected, 512 * MIB + 300 * MIB, "512 MiB and a context");
    let (out, status_pid) = vramguard(&sandbox, &["status", "--json"]);
    assert!(out.status.success(), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let device = &report["devices"][0];
    assert_eq!(device["outside_bytes"], expected, "{report}");
    assert_eq!(device["outside_source"], "nvml");
    assert_eq!(device["outside_age_ms"], 0);
    // Reading the management library created no process on the card, let alone a context.
    assert!(
        process(&sandbox.sim_report(), status_pid).is_none(),
        "status appeared on the card"
    );

    // For people: a column, and a line because it is large (more than a tenth of the card).
    let table = status(&sandbox, &[]);
    assert!(table.contains("OUTSIDE THE GUARD"), "{table}");
    assert!(table.contains("812 MiB (NVML)"), "{table}");
    assert!(
        table.contains("812 MiB (NVML) on GPU-") && table.contains("is held outside the guard"),
        "{table}"
    );

    let metrics = status(&sandbox, &["--prometheus"]);
    let uuid = device["uuid"].as_str().unwrap();
    let labels = format!("{{uuid=\"{uuid}\",name=\"Outside GPU\"}}");
    for wanted in [
        "# TYPE vramguard_device_outside_bytes gauge".to_string(),
        format!("vramguard_device_outside_bytes{labels} {expected}"),
        format!("vramguard_device_outside_age_seconds{labels} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == wanted),
            "`{wanted}` missing:\n{metrics}"
        );
    }

    let (doctor, _) = vramguard(&sandbox, &["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{}", doctor.stdout);
    assert_doctor_says(
        &doctor,
        "warn",
        &["812 MiB (NVML) of 4.00 GiB is held outside the guard"],
    );
    assert!(
        doctor
            .stdout
            .contains("a program started without the guard"),
        "{}",
        doctor.stdout
    );
    assert_doctor_says(&doctor, "ok", &["nvml: ", "found (1 device(s))"]);

    // Inside a container whose pid namespace is not the host's, NVML lists no process; the
    // card's memory, all this needs, is still known.
    sandbox.set_env("SIMCUDA_NVML_PROCESSES", "0");
    let report = status_json(&sandbox);
    assert_eq!(report["devices"][0]["outside_bytes"], expected, "{report}");

    // The unguarded program ends: nothing is outside any more.
    drop(unguarded.kill());
    let report = status_json(&sandbox);
    assert_eq!(report["devices"][0]["outside_bytes"], 0, "{report}");
    let (doctor, _) = vramguard(&sandbox, &["doctor"]);
    assert_doctor_says(&doctor, "ok", &["0 B (NVML) outside the guard"]);
    drop(guarded);
}

#[test]
fn without_the_management_library_the_driver_figure_stands_with_its_age() {
    let mut sandbox = card();
    sandbox.without_nvml();
    let unguarded = sandbox.hold(false, "512MiB");
    let expected = card_holds(&sandbox, unguarded.pid());

    // The card is in the ledger, but no guarded process has asked the driver yet: unknown.
    let uuid_bytes = {
        let report = sandbox.sim_report();
        let text = report["devices"][0]["uuid"].as_str().unwrap().to_string();
        let hex: String = text[4..].chars().filter(|c| *c != '-').collect();
        let mut uuid = [0u8; 16];
        for (i, byte) in uuid.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        uuid
    };
    let ledger = Ledger::open(&sandbox.ledger_dir).unwrap();
    ledger
        .register_device(uuid_bytes, "Outside GPU", 4096 * MIB, 3840 * MIB)
        .unwrap();
    let report = status_json(&sandbox);
    let device = &report["devices"][0];
    assert_eq!(device["uuid"], CuUuid(uuid_bytes).to_string());
    assert!(device["outside_bytes"].is_null(), "{report}");
    assert!(device["outside_source"].is_null(), "{report}");
    assert!(device["outside_age_ms"].is_null(), "{report}");
    assert_eq!(report["nvml"]["found"], false, "{report}");
    assert!(
        report["nvml"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("libnvidia-ml.so.1")),
        "{report}"
    );
    let table = status(&sandbox, &[]);
    assert!(table.contains("unknown"), "{table}");
    let metrics = status(&sandbox, &["--prometheus"]);
    assert!(
        metrics.contains("# TYPE vramguard_device_outside_bytes gauge")
            && !metrics
                .lines()
                .any(|l| l.starts_with("vramguard_device_outside_bytes{")),
        "an unknown figure has no sample:\n{metrics}"
    );

    // A guarded program runs and ends; it asked the driver on its way.
    let (run, _) = sandbox.run_client(ClientPath::Direct, true, &["--chunk", "64MiB"]);
    assert!(run.status.success(), "{run:?}");
    let report = status_json(&sandbox);
    let device = &report["devices"][0];
    assert_eq!(device["outside_bytes"], expected, "{report}");
    assert_eq!(device["outside_source"], "driver", "{report}");
    assert!(device["outside_age_ms"].is_u64(), "{report}");
    let table = status(&sandbox, &[]);
    assert!(table.contains("812 MiB (driver, "), "{table}");
    let metrics = status(&sandbox, &["--prometheus"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vramguard_device_outside_bytes{")
                && l.ends_with(&format!(" {expected}"))),
        "{metrics}"
    );
    let (doctor, _) = vramguard(&sandbox, &["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{}", doctor.stdout);
    assert_doctor_says(
        &doctor,
        "warn",
        &["812 MiB (driver, ", "is held outside the guard"],
    );
    assert_doctor_says(&doctor, "ok", &["nvml: ", "not usable"]);
    drop(unguarded);
}

/// A guarded program's own `cuMemGetInfo` is a look at the driver too: what it learns is kept.
/// The program (Python `ctypes`) makes its context current, then, once an unguarded program holds
/// memory (the go file `argv[1]`), asks for the free memory; it allocates nothing, and keeps its
/// context until it is killed. Its waits end after five minutes, like the clients'
/// (`tests/clients/go_file.h`).
const ASK_LATER: &str = r#"
import ctypes as C, os, sys, time
d = C.CDLL("libcuda.so.1")
dev, ctx = C.c_int(), C.c_void_p()
assert d.cuInit(0) == 0
assert d.cuDeviceGet(C.byref(dev), 0) == 0
assert d.cuDevicePrimaryCtxRetain(C.byref(ctx), dev) == 0
assert d.cuCtxSetCurrent(ctx) == 0
print("ready", flush=True)
deadline = time.monotonic() + 300
while not os.path.exists(sys.argv[1]):
    assert time.monotonic() < deadline, "never told to ask"
    time.sleep(0.01)
free, total = C.c_size_t(), C.c_size_t()
assert d.cuMemGetInfo_v2(C.byref(free), C.byref(total)) == 0
print("asked", flush=True)
time.sleep(300)
"#;

#[test]
fn a_guarded_programs_own_question_to_the_driver_is_remembered() {
    let mut sandbox = card();
    sandbox.without_nvml();
    let go = sandbox.root().join("ask-now");
    let mut asker = sandbox.program("python3");
    asker
        .env("LD_PRELOAD", artifacts().preload)
        .args(["-c", ASK_LATER])
        .arg(&go);
    let mut asker = spawn(asker);
    asker.wait_for_line("ready", DEADLINE);
    // Its context is charged; whatever the guard learned so far, nothing was outside yet.
    let report = status_json(&sandbox);
    let before = &report["devices"][0]["outside_bytes"];
    assert!(before.is_null() || *before == 0, "{report}");

    let unguarded = sandbox.hold(false, "512MiB");
    let expected = card_holds(&sandbox, unguarded.pid());
    std::fs::write(&go, b"").unwrap();
    asker.wait_for_line("asked", DEADLINE);
    let report = status_json(&sandbox);
    let device = &report["devices"][0];
    assert_eq!(device["outside_bytes"], expected, "{report}");
    assert_eq!(device["outside_source"], "driver", "{report}");
    drop(unguarded);
    drop(asker.kill());
}

/// A management library that fails at `nvmlInit_v2`, or never returns from it: `status` still
/// answers (from the driver figure, else unknown) and says why NVML is of no use.
#[test]
fn a_management_library_that_fails_or_hangs_does_not_stop_status() {
    let library = support::broken_nvml();
    let mut sandbox = card();
    sandbox.set_env("VRAMGUARD_NVML", library.to_str().unwrap());
    let _guarded = sandbox.hold(true, "64MiB");

    let report = status_json(&sandbox);
    let error = report["nvml"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("nvmlInit_v2 failed with NVML_ERROR_DRIVER_NOT_LOADED: Driver Not Loaded"),
        "{report}"
    );
    assert_eq!(report["nvml"]["found"], false);
    assert_eq!(report["devices"][0]["outside_source"], "driver", "{report}");

    sandbox.set_env("BROKEN_NVML", "hang");
    let report = status_json(&sandbox);
    let error = report["nvml"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("did not answer"), "{report}");
    assert_eq!(report["devices"][0]["outside_source"], "driver", "{report}");
    let (doctor, _) = vramguard(&sandbox, &["doctor"]);
    assert_doctor_says(&doctor, "ok", &["nvml: ", "did not answer"]);
}
