//! `vramguard status` shows a guarded process of another pid namespace (as in a container, where
//! it is pid 1 and records 1) under its host pid, found from the process that holds its slot's
//! liveness lock, with the pid it recorded beside it. The container engine's own case, with the
//! container named, is `tests/container_podman.rs`; this one needs only `unshare`.

mod support;

use std::time::{Duration, Instant};

use support::{ClientPath, HANG_GUARD, Sandbox};

/// The pid of `parent`'s only child (unshare's `--fork`ed child: the client, pid 1 inside).
fn only_child(parent: u32) -> u32 {
    let started = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        let pids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let [pid] = pids.as_slice() {
            return *pid;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "{parent} has children {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_process_of_another_pid_namespace_is_shown_under_its_host_pid() {
    let sandbox = Sandbox::new("4GiB");
    sandbox.init();
    let release = sandbox.root().join("release");
    let mut command = sandbox.program("unshare");
    command
        .args(support::pid_namespace::unshare_pid_args())
        .arg("--")
        .arg(sandbox.command(ClientPath::Direct, true).get_program())
        .args(["--chunk", "64MiB", "--hold-until"])
        .arg(&release)
        .env("LD_PRELOAD", support::artifacts().preload);
    let mut client = support::spawn(command);
    let seen = client.wait_for_line_or_end("holding", HANG_GUARD);
    if seen.is_none() {
        let finished = client.kill();
        support::skip(
            "a_process_of_another_pid_namespace_is_shown_under_its_host_pid",
            &format!(
                "unshare cannot make a pid namespace here: {}",
                finished.stderr.trim()
            ),
        );
        return;
    }
    let host_pid = only_child(client.pid());

    let mut status = sandbox.program(support::artifacts().cli);
    status.args(["status", "--json"]);
    let out = support::run_with_deadline(status, HANG_GUARD);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let processes = report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1, "{report:#}");
    assert_eq!(
        processes[0]["pid"].as_u64(),
        Some(u64::from(host_pid)),
        "{report:#}"
    );
    assert_eq!(
        processes[0]["namespace_pid"].as_i64(),
        Some(1),
        "{report:#}"
    );
    assert!(processes[0]["container"].is_null(), "{report:#}");

    let mut human = sandbox.program(support::artifacts().cli);
    human.arg("status");
    let out = support::run_with_deadline(human, HANG_GUARD);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{host_pid} "))
            && l.contains("(pid 1 in its pid namespace)")),
        "{text}"
    );

    std::fs::write(&release, "").unwrap();
    let finished = client.finish(HANG_GUARD);
    assert!(finished.status.success(), "{finished:?}");
}
