//! The shell scripts users run: the container entrypoint under `sh`, the installer (twice, into
//! a staging directory, after which the installed command finds its library), and a syntax check
//! of every script, including `gpu-smoke.sh`, which needs a real GPU to run.

#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/manylinux.rs"]
mod manylinux;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cli_support::*;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

fn entrypoint(library: Option<&Path>) -> Command {
    let mut command = Command::new("sh");
    command
        .arg(repo().join("scripts/docker-entrypoint.sh"))
        .env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VRAMGUARD_") {
            command.env_remove(&key);
        }
    }
    if let Some(library) = library {
        command.env("VRAMGUARD_LIBRARY", library);
    }
    command
}

#[test]
fn entrypoint_sets_up_the_guard_and_execs_the_command() {
    let lib = library();
    let lib_text = lib.to_string_lossy().to_string();
    let show = "echo \"pid=$$\"; echo \"preload=$LD_PRELOAD\"; echo \"dir=$VRAMGUARD_DIR\"; echo \"policy=${VRAMGUARD_POLICY-}\"";

    // exec: the command runs in the entrypoint's own process (so `docker stop` signals reach it).
    let (pid, out) =
        run_with_deadline_and_pid(entrypoint(Some(&lib)).args(["sh", "-c", show]), DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("pid={pid}\n")),
        "the command was not exec'd: {text}"
    );
    assert!(text.contains(&format!("preload={lib_text}\n")), "{text}");
    assert!(text.contains("dir=/dev/shm/vramguard\n"), "{text}");

    // The container's own settings and preloads are kept.
    let out = run_with_deadline(
        entrypoint(Some(&lib))
            .env("LD_PRELOAD", "/opt/x/libx.so")
            .env("VRAMGUARD_DIR", "/mnt/ledger")
            .env("VRAMGUARD_POLICY", "wait")
            .args(["sh", "-c", show]),
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("preload={lib_text}:/opt/x/libx.so\n")),
        "{text}"
    );
    assert!(
        text.contains("dir=/mnt/ledger\n") && text.contains("policy=wait\n"),
        "{text}"
    );

    // Exit status and signals come through.
    let out = run_with_deadline(
        entrypoint(Some(&lib)).args(["sh", "-c", "exit 9"]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(9));
    let out = run_with_deadline(
        entrypoint(Some(&lib)).args(["sh", "-c", "kill -TERM $$"]),
        DEADLINE,
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(15));

    // A missing library stops the container with a message instead of running unguarded.
    let out = run_with_deadline(
        entrypoint(Some(Path::new("/nonexistent/libvramguard.so"))).args(["true"]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("/nonexistent/libvramguard.so"));
}

/// How long an install may take: it builds for glibc 2.28 (a first build compiles every
/// dependency for that target; `tests/install_wheel.rs` shares its target directory).
const BUILD_DEADLINE: Duration = Duration::from_secs(1800);

#[test]
fn installer_is_idempotent_and_the_installed_command_finds_its_library() {
    let stage = TempDir::new("install");
    // The wheel's target directory: one build for glibc 2.28 serves both tests.
    let target_dir = release_dir().parent().unwrap().join("wheel");
    let built_library = target_dir.join("x86_64-unknown-linux-gnu/release/libvramguard.so");
    let install = || {
        run_with_deadline(
            Command::new("sh")
                .arg(repo().join("scripts/install.sh"))
                .env("DESTDIR", stage.path())
                .env("PREFIX", "/opt/vg")
                .env("CARGO_TARGET_DIR", &target_dir),
            BUILD_DEADLINE,
        )
    };
    for round in 0..2 {
        let out = install();
        assert!(
            out.status.success(),
            "install round {round}: {}",
            stderr(&out)
        );
    }
    let prefix = stage.join("opt/vg");
    for file in [
        "bin/vramguard",
        "bin/vramguard-run",
        "bin/vramguard-entrypoint",
        "lib/vramguard/libvramguard.so",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
    let installed_lib = prefix
        .join("lib/vramguard/libvramguard.so")
        .canonicalize()
        .unwrap();
    assert_eq!(
        std::fs::read(&installed_lib).unwrap(),
        std::fs::read(&built_library).unwrap()
    );
    // What it installs loads wherever glibc is 2.28 or later, like the wheel's binaries.
    for file in ["bin/vramguard", "lib/vramguard/libvramguard.so"] {
        manylinux::assert_manylinux_2_28(&prefix.join(file));
    }

    // The installed command, the wrapper and the entrypoint find the installed library with no
    // configuration.
    let out = run_with_deadline(
        Command::new(prefix.join("bin/vramguard"))
            .args(["env"])
            .env_remove("VRAMGUARD_LIBRARY"),
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&*installed_lib.to_string_lossy()),
        "{}",
        stdout(&out)
    );
    for program in ["bin/vramguard-run", "bin/vramguard-entrypoint"] {
        let out = run_with_deadline(
            Command::new(prefix.join(program))
                .env_remove("VRAMGUARD_LIBRARY")
                .env_remove("LD_PRELOAD")
                .args(["sh", "-c", "echo \"$LD_PRELOAD\""]),
            DEADLINE,
        );
        assert!(out.status.success(), "{program}: {}", stderr(&out));
        assert_eq!(
            stdout(&out).trim(),
            installed_lib.to_string_lossy(),
            "{program}"
        );
    }

    let out = run_with_deadline(
        Command::new("sh")
            .arg(repo().join("scripts/install.sh"))
            .arg("--uninstall")
            .env("DESTDIR", stage.path())
            .env("PREFIX", "/opt/vg"),
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!prefix.join("bin/vramguard").exists() && !prefix.join("lib/vramguard").exists());
}

#[test]
fn every_script_parses() {
    let scripts = repo().join("scripts");
    let posix = [
        "vramguard-run",
        "docker-entrypoint.sh",
        "install.sh",
        "activate.sh",
    ];
    for script in posix {
        for shell in ["sh", "bash"] {
            let out = run_with_deadline(
                Command::new(shell).arg("-n").arg(scripts.join(script)),
                DEADLINE,
            );
            assert!(
                out.status.success(),
                "{shell} -n {script}: {}",
                stderr(&out)
            );
        }
    }
    let out = run_with_deadline(
        Command::new("bash")
            .arg("-n")
            .arg(scripts.join("gpu-smoke.sh")),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "bash -n gpu-smoke.sh: {}",
        stderr(&out)
    );
    let out = run_with_deadline(
        Command::new("fish")
            .arg("-n")
            .arg(scripts.join("activate.fish")),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "fish -n activate.fish: {}",
        stderr(&out)
    );
}

#[test]
fn gpu_smoke_says_what_it_needs_on_a_machine_without_a_gpu() {
    if Path::new("/usr/bin/nvidia-smi").exists() {
        return skip(
            "gpu_smoke_says_what_it_needs_on_a_machine_without_a_gpu",
            "/usr/bin/nvidia-smi exists: on a real GPU machine the script is run by hand",
        );
    }
    // Here there is no nvidia-smi: the script must stop at once with its "missing" code, not
    // pretend to have checked anything.
    let out = run_with_deadline(
        Command::new("bash")
            .arg(repo().join("scripts/gpu-smoke.sh"))
            .env("PATH", "/usr/bin:/bin"),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nvidia-smi not found"),
        "{}",
        stderr(&out)
    );
}
