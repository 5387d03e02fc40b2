//! `vramguard doctor`: all ok against the simulated driver; each usual cause of "CUDA unknown
//! error" recognised when CUDA cannot start (a poisoned simulated card), with the machine's files
//! staged under `VRAMGUARD_DOCTOR_ROOT`; a broken library or ledger directory reported.

#[path = "support/cli.rs"]
mod cli_support;

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cli_support::*;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

fn doctor(card: &SimCard, root: Option<&Path>) -> Output {
    let mut command = card.command(vramguard());
    command.arg("doctor").env_remove("VRAMGUARD_LIBRARY");
    if let Some(root) = root {
        command.env("VRAMGUARD_DOCTOR_ROOT", root);
    }
    run_with_deadline(&mut command, DEADLINE)
}

fn lines_with<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(tag)).collect()
}

#[test]
fn all_ok_with_a_working_driver_and_ledger() {
    let card = SimCard::new("size=4GiB,name=Doctor Test GPU");
    let out = doctor(&card, None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        lines_with(&text, "warn").is_empty() && lines_with(&text, "FAIL").is_empty(),
        "{text}"
    );
    assert!(
        text.contains("library: ") && text.contains(" loads"),
        "{text}"
    );
    assert!(text.contains("does not exist yet"), "{text}");
    assert!(text.contains("works (CUDA 12."), "{text}");
    assert!(
        text.contains("device 0: Doctor Test GPU, 4.00 GiB"),
        "{text}"
    );

    // With a ledger in place, it is opened and described.
    vramguard_core::ledger::Ledger::open(&card.ledger_dir()).unwrap();
    let out = doctor(&card, None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("is valid (0 card(s), 0 guarded process(es))"),
        "{text}"
    );
    assert!(text.contains("is writable"), "{text}");
    // Doctor never creates a CUDA context in the guard's name: no member joined the ledger.
    let snapshot = vramguard_core::ledger::Ledger::open_existing(&card.ledger_dir())
        .unwrap()
        .snapshot();
    assert!(snapshot.processes.is_empty());
}

#[test]
fn broken_library_ledger_and_settings_are_reported() {
    let card = SimCard::new("4GiB");
    let not_a_dir = card.dir.join("ledger-file");
    fs::write(&not_a_dir, "").unwrap();
    let out = run_with_deadline(
        card.command(vramguard())
            .arg("doctor")
            .env("VRAMGUARD_LIBRARY", card.dir.join("devices")) // a file, but not a library
            .env("VRAMGUARD_DIR", &not_a_dir)
            .env("VRAMGUARD_POLICY", "sometimes"),
        DEADLINE,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  library:") && text.contains("not an ELF"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  ledger:") && text.contains("not a directory"),
        "{text}"
    );
    // A safety setting that does not parse fails: `run` would refuse to start a program with it.
    assert!(text.contains("FAIL  settings: VRAMGUARD_POLICY"), "{text}");
    // The driver still works, so no "unknown error" causes are listed.
    assert!(!text.contains("cause:"), "{text}");
}

/// Poisons the simulated card (a fragile card and a request it cannot hold), so that cuInit
/// fails with CUDA_ERROR_UNKNOWN in every process, as on the user's machine.
fn poison(card: &SimCard) {
    let out = run_with_deadline(
        card.command(vramguard())
            .args(["__demo-load", "--chunks", "1", "--chunk", "8GiB"])
            .env("SIMCUDA_FRAGILE", "1"),
        DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "the oversized load should fail: {}",
        stdout(&out)
    );
    let out = run_with_deadline(
        card.command(vramguard())
            .args(["__demo-load", "--chunks", "1"]),
        DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the card should be poisoned: {}",
        stdout(&out)
    );
}

/// A staged machine: the files doctor reads, healthy unless a cause is staged.
struct Machine {
    root: TempDir,
}

impl Machine {
    fn healthy() -> Machine {
        let root = TempDir::new("root");
        let write = |path: &str, text: &str| {
            let file = root.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        };
        write(
            "proc/modules",
            "nvidia_uvm 1437696 0 - Live 0x0000000000000000\nnvidia 56532992 2 nvidia_uvm, Live 0x0000000000000000\next4 1 0 - Live 0x0\n",
        );
        write("dev/nvidiactl", "");
        write("dev/nvidia0", "");
        write("dev/nvidia-uvm", "");
        write(
            "proc/driver/nvidia/version",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0\n",
        );
        write(
            "proc/driver/nvidia/params",
            "ResmanDebugLevel: 4294967295\nPreserveVideoMemoryAllocations: 1\n",
        );
        write("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14", "");
        write(
            "etc/systemd/system/systemd-suspend.service.requires/nvidia-suspend.service",
            "",
        );
        write(
            "etc/systemd/system/systemd-suspend.service.requires/nvidia-resume.service",
            "",
        );
        Machine { root }
    }

    fn remove(self, path: &str) -> Machine {
        fs::remove_file(self.root.join(path)).unwrap();
        self
    }

    fn write(self, path: &str, text: &str) -> Machine {
        fs::write(self.root.join(path), text).unwrap();
        self
    }
}

const UVM_NOT_LOADED: &str = "nvidia_uvm module is not loaded";
const UVM_NODE_MISSING: &str = "/dev/nvidia-uvm is missing";
const VERSION_MISMATCH: &str = "driver version mismatch";
const SUSPEND: &str = "suspend/resume is not handled";
const MODULE_MISSING: &str = "NVIDIA kernel module is not loaded";
const NONE_SEEN: &str = "none of the usual causes";
const ALL_CAUSES: [&str; 6] = [
    UVM_NOT_LOADED,
    UVM_NODE_MISSING,
    VERSION_MISMATCH,
    SUSPEND,
    MODULE_MISSING,
    NONE_SEEN,
];

#[test]
fn each_cause_of_cuda_unknown_error_is_recognised() {
    let card = SimCard::new("4GiB");
    poison(&card);
    let cases: Vec<(&str, Machine, &[&str])> = vec![
        ("healthy machine", Machine::healthy(), &[NONE_SEEN]),
        (
            "nvidia_uvm unloaded",
            Machine::healthy()
                .write("proc/modules", "nvidia 56532992 0 - Live 0x0\n")
                .remove("dev/nvidia-uvm"),
            &[UVM_NOT_LOADED, UVM_NODE_MISSING],
        ),
        (
            "container without /dev/nvidia-uvm",
            Machine::healthy().remove("dev/nvidia-uvm"),
            &[UVM_NODE_MISSING],
        ),
        (
            "upgrade without reboot",
            Machine::healthy()
                .remove("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14")
                .write("usr/lib/x86_64-linux-gnu/libcuda.so.550.90.07", ""),
            &[VERSION_MISMATCH],
        ),
        (
            "no suspend services",
            Machine::healthy()
                .remove(
                    "etc/systemd/system/systemd-suspend.service.requires/nvidia-suspend.service",
                )
                .write(
                    "proc/driver/nvidia/params",
                    "PreserveVideoMemoryAllocations: 0\n",
                ),
            &[SUSPEND],
        ),
        (
            "no driver at all",
            Machine {
                root: TempDir::new("bare"),
            }
            .write_modules_only(),
            &[MODULE_MISSING],
        ),
    ];
    for (name, machine, expected) in cases {
        let out = doctor(&card, Some(machine.root.path()));
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert!(
            text.contains("FAIL  driver: cuInit failed with CUDA_ERROR_UNKNOWN (999)"),
            "{name}: {text}"
        );
        for cause in ALL_CAUSES {
            let shown = text
                .lines()
                .any(|l| l.contains("cause:") && l.contains(cause));
            assert_eq!(
                shown,
                expected.contains(&cause),
                "{name}: `{cause}` shown={shown}:\n{text}"
            );
        }
        // Every cause says what to do.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("cause:") {
                assert!(
                    lines
                        .get(i + 1)
                        .is_some_and(|next| next.trim_start().starts_with("->")),
                    "{name}: {text}"
                );
            }
        }
    }
    // The mismatch names both versions.
    let upgraded = Machine::healthy()
        .remove("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14")
        .write("usr/lib/x86_64-linux-gnu/libcuda.so.550.90.07", "");
    let text = stdout(&doctor(&card, Some(upgraded.root.path())));
    let line = text
        .lines()
        .find(|l| l.contains(VERSION_MISMATCH))
        .expect("the mismatch line");
    assert!(
        line.contains("550.54.14") && line.contains("550.90.07"),
        "{line}"
    );
}

#[test]
fn the_loaded_driver_librarys_own_version_counts() {
    // No libcuda.so.<version> in the staged library directories: the version comes from the file
    // the driver was loaded from (a real installation's libcuda.so.1 points to such a file).
    let card = SimCard::new("4GiB");
    poison(&card);
    let versioned = card.dir.join("lib/libcuda.so.545.23.08");
    fs::copy(artifact("libcuda.so"), &versioned).unwrap();
    let machine = Machine::healthy().remove("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.14");
    let out = run_with_deadline(
        card.command(vramguard())
            .arg("doctor")
            .env("VRAMGUARD_DRIVER", &versioned)
            .env("VRAMGUARD_DOCTOR_ROOT", machine.root.path()),
        DEADLINE,
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains(VERSION_MISMATCH))
        .unwrap_or_else(|| panic!("no mismatch found:\n{text}"));
    assert!(
        line.contains("550.54.14") && line.contains("545.23.08"),
        "{line}"
    );
}

impl Machine {
    /// A machine whose /proc/modules lists no NVIDIA module.
    fn write_modules_only(self) -> Machine {
        fs::create_dir_all(self.root.join("proc")).unwrap();
        fs::write(self.root.join("proc/modules"), "ext4 1 0 - Live 0x0\n").unwrap();
        self
    }
}

#[test]
fn a_missing_driver_is_named() {
    let card = SimCard::new("4GiB");
    let out = run_with_deadline(
        card.command(vramguard())
            .arg("doctor")
            .env("VRAMGUARD_DRIVER", "/nonexistent/libcuda.so.1")
            .env("VRAMGUARD_DOCTOR_ROOT", Machine::healthy().root.path()),
        DEADLINE,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  driver: cannot open /nonexistent/libcuda.so.1"),
        "{text}"
    );
}
