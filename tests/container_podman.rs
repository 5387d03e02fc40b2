//! A real container engine applies the spec `vramguard cdi` writes: Debian's podman runs a
//! container from a local root file system (no image pull: a directory with `sh`, the C test
//! client, the simulated driver and the libraries they need, copied from this host) with
//! `--device vramguard.dev/guard=all`. Inside, the client allocates under the guard and the
//! host's ledger; the host's `vramguard status` shows it under its host pid (not the
//! container's pid 1) and names its container; the image's own `LD_PRELOAD` (a preload library
//! of the image that says when it is loaded) still applies next to the guard.
//!
//! The spec goes to `/run/cdi` (podman 4.3 reads `/etc/cdi` and `/run/cdi` only) under a name of
//! this test's own, removed afterwards. On these machines podman runs such a container with
//! `--runtime runc --cgroup-manager=cgroupfs` and limits no higher than the session's (crun
//! refuses the hybrid cgroup layout; raising the limits is not permitted). Skipped, with the
//! reason, only where podman cannot run a container at all.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{HANG_GUARD, Sandbox};

/// What the client allocates inside the container.
const CHUNK: u64 = 256 << 20;
/// The image's own preload library, inside the container.
const IMAGE_PRELOAD: &str = "/usr/lib/image/libimage_preload.so";
/// Where the simulated driver lies inside the container.
const DRIVER_DIR: &str = "/usr/lib/simcuda";

/// podman's options for a container here (see the module comment).
fn podman_run() -> Command {
    let mut command = Command::new("podman");
    command.args([
        "run",
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network=none",
    ]);
    command
}

/// Copies `file` into `rootfs` at the same path, with every library `ldd` says it needs.
fn copy_with_libraries(rootfs: &Path, file: &Path, to: Option<&Path>) {
    let target = rootfs.join(to.unwrap_or(file).strip_prefix("/").unwrap());
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(file, &target).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
    let out = Command::new("ldd").arg(file).output().unwrap();
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let library = Path::new(word);
        if library.is_absolute() && library.is_file() {
            let dest = rootfs.join(library.strip_prefix("/").unwrap());
            if !dest.exists() {
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::copy(library, &dest).unwrap();
            }
        }
    }
}

/// The root file system: `sh`, the client, the simulated driver, the image's preload library,
/// and what the guard library itself links.
fn build_rootfs(rootfs: &Path, guard: &Path) -> PathBuf {
    let artifacts = support::artifacts();
    let client = support::clients().direct;
    copy_with_libraries(rootfs, Path::new("/bin/sh"), None);
    copy_with_libraries(rootfs, &client, Some(Path::new("/usr/bin/vg-client")));
    copy_with_libraries(
        rootfs,
        &artifacts.simulator,
        Some(&Path::new(DRIVER_DIR).join("libcuda.so.1")),
    );
    copy_with_libraries(rootfs, guard, Some(Path::new("/tmp/guard-deps-only")));
    fs::remove_file(rootfs.join("tmp/guard-deps-only")).unwrap();
    let preload = rootfs.join(IMAGE_PRELOAD.strip_prefix('/').unwrap());
    fs::create_dir_all(preload.parent().unwrap()).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&preload)
        .arg(support::repo().join("tests/clients/image_preload.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    client
}

/// Removes the spec and the container however the test ends.
struct Cleanup {
    spec: PathBuf,
    preload_list: PathBuf,
    container: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.spec);
        let _ = fs::remove_file(&self.preload_list);
        let _ = Command::new("podman")
            .args(["rm", "-f", &self.container])
            .output();
    }
}

/// Why podman cannot run a container here, if it cannot.
fn podman_unusable(rootfs: &Path) -> Option<String> {
    let mut probe = podman_run();
    probe
        .arg("--rm")
        .arg("--rootfs")
        .arg(rootfs)
        .args(["/bin/sh", "-c", "echo container-ok"]);
    match support::run_with_deadline(probe, HANG_GUARD) {
        out if String::from_utf8_lossy(&out.stdout).contains("container-ok") => None,
        out => Some(format!(
            "podman cannot run a container here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn status_json(sandbox: &Sandbox) -> serde_json::Value {
    let mut command = sandbox.program(support::artifacts().cli);
    command.args(["status", "--json"]);
    let out = support::run_with_deadline(command, HANG_GUARD);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn podman_applies_the_spec_and_the_host_sees_the_container_s_process() {
    if Command::new("podman").arg("--version").output().is_err() {
        support::skip(
            "podman_applies_the_spec_and_the_host_sees_the_container_s_process",
            "podman is not installed (scripts/setup.sh installs it)",
        );
        return;
    }
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let guard = support::artifacts().preload;
    let rootfs_dir = tempfile::Builder::new()
        .prefix("vramguard-rootfs-")
        .tempdir()
        .unwrap();
    let rootfs = rootfs_dir.path();
    build_rootfs(rootfs, &guard);
    if let Some(reason) = podman_unusable(rootfs) {
        support::skip(
            "podman_applies_the_spec_and_the_host_sees_the_container_s_process",
            &reason,
        );
        return;
    }

    let ledger_dir = sandbox.root().join("ledger");
    let unique = format!("vramguard-test-{}", std::process::id());
    let cleanup = Cleanup {
        spec: PathBuf::from(format!("/run/cdi/{unique}.yaml")),
        preload_list: sandbox.root().join("ld.so.preload"),
        container: unique.clone(),
    };
    if let Err(error) = fs::create_dir_all("/run/cdi").and_then(|()| fs::write(&cleanup.spec, "")) {
        support::skip(
            "podman_applies_the_spec_and_the_host_sees_the_container_s_process",
            &format!(
                "cannot write {} ({error}): podman 4.3 reads CDI specs only from /etc/cdi and \
                 /run/cdi, which need root",
                cleanup.spec.display()
            ),
        );
        return;
    }
    let mut cdi = sandbox.program(support::artifacts().cli);
    cdi.arg("cdi")
        .arg("--library")
        .arg(&guard)
        .arg("--ledger-dir")
        .arg(&ledger_dir)
        // The image's glibc is this host's (its libraries were copied from here).
        .args(["--oldest-glibc", "2.99"])
        .arg("--preload-list")
        .arg(&cleanup.preload_list)
        .arg("--output")
        .arg(&cleanup.spec);
    let out = support::run_with_deadline(cdi, HANG_GUARD);
    assert!(out.status.success(), "vramguard cdi: {out:?}");

    let release = sandbox.root().join("release");
    let mut run = podman_run();
    run.args(["--name", &unique])
        .args(["--device", "vramguard.dev/guard=all"])
        // The card's state file lies in the sandbox: mounted at the same path.
        .arg("-v")
        .arg(format!("{0}:{0}", sandbox.root().display()))
        .arg("-e")
        .arg(format!("LD_PRELOAD={IMAGE_PRELOAD}"))
        .arg("-e")
        .arg(format!("LD_LIBRARY_PATH={DRIVER_DIR}"))
        .arg("-e")
        .arg(format!("VRAMGUARD_DRIVER={DRIVER_DIR}/libcuda.so.1"))
        .args(["-e", "VRAMGUARD_NVML=/nonexistent/libnvidia-ml.so.1"]);
    let sandbox_env = sandbox.program("true");
    for (key, value) in sandbox_env.get_envs() {
        let key = key.to_string_lossy();
        if key.starts_with("SIMCUDA_") {
            let value = value.expect("set, not removed").to_string_lossy();
            run.arg("-e").arg(format!("{key}={value}"));
        }
    }
    run.arg("--rootfs").arg(rootfs).args([
        "/usr/bin/vg-client",
        "--chunk",
        &CHUNK.to_string(),
        "--hold-until",
    ]);
    run.arg(&release);
    let mut container = support::spawn(run);
    container.wait_for_line("holding", HANG_GUARD);

    // The host's ledger has the container's process, under its host pid.
    let inspect = Command::new("podman")
        .args(["inspect", "-f", "{{.State.Pid}} {{.Id}}", &unique])
        .output()
        .unwrap();
    let inspected = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let (host_pid, id) = inspected.split_once(' ').expect("podman inspect");
    let host_pid: i64 = host_pid.parse().unwrap();
    let started = Instant::now();
    let report = loop {
        let report = status_json(&sandbox);
        let used = report["devices"][0]["used_bytes"].as_u64().unwrap_or(0);
        if used >= CHUNK || started.elapsed() > HANG_GUARD {
            break report;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let processes = report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1, "{report:#}");
    let p = &processes[0];
    assert_eq!(p["pid"].as_i64(), Some(host_pid), "{report:#}");
    assert_eq!(p["namespace_pid"].as_i64(), Some(1), "{report:#}");
    assert_eq!(
        p["container"].as_str(),
        Some(format!("podman {}", &id[..12]).as_str()),
        "{report:#}"
    );
    assert!(
        p["devices"][0]["used_bytes"].as_u64().unwrap() >= CHUNK,
        "{report:#}"
    );
    let mut human = sandbox.program(support::artifacts().cli);
    human.arg("status");
    let out = support::run_with_deadline(human, HANG_GUARD);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&host_pid.to_string())
            && l.contains(&format!("in podman {}", &id[..12]))),
        "{text}"
    );

    fs::write(&release, "").unwrap();
    let finished = container.finish(HANG_GUARD);
    assert!(finished.status.success(), "{finished:?}");
    assert!(
        finished.stdout.contains(&format!("alloc ok {CHUNK}")),
        "{finished:?}"
    );
    // The image's own preload library was loaded too (once per program: here the client).
    let image_lines: BTreeSet<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("image preload: loaded"))
        .collect();
    assert!(
        !image_lines.is_empty(),
        "the image's LD_PRELOAD was dropped: {finished:?}"
    );
    drop(cleanup);
}
