//! `vramguard status` against a live ledger: a process holding memory, one waiting for it and one
//! that died holding some. The members are this test binary re-run as "actors" (selected by an
//! environment variable before the test harness starts) that use the ledger API directly; the
//! `--json` output is checked against the ledger's own snapshot, and the human and Prometheus
//! renderings against the same figures. A last test watches real guarded programs (the demo's
//! loads under `vramguard run`, on the simulated driver) hold and wait.

#[path = "support/cli.rs"]
mod cli_support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_support::*;
use vramguard_core::cuda::CuUuid;
use vramguard_core::ledger::{Ledger, Request};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const UUID: [u8; 16] = [
    0x5a, 0x7e, 0x11, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
];
/// The dead member's card: decisions on the first card reclaim only that card's dead members, so
/// the dead one stays for `status` to find.
const OTHER_UUID: [u8; 16] = [
    0x07, 0x7e, 0x11, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 99,
];
/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;
const ACTOR_VAR: &str = "VRAMGUARD_CLI_TEST_ACTOR";
const ACTOR_DIR_VAR: &str = "VRAMGUARD_CLI_TEST_LEDGER";

/// When this binary is started as an actor, act and exit before the test harness runs.
#[ctor::ctor(unsafe)]
fn maybe_act() {
    let Some(role) = std::env::var_os(ACTOR_VAR) else {
        return;
    };
    let dir = std::env::var_os(ACTOR_DIR_VAR).expect("actor without a ledger directory");
    act(&role.to_string_lossy(), Path::new(&dir));
    std::process::exit(0);
}

/// One ledger member: `holder` takes 2 GiB and holds it until its stdin closes; `waiter` asks for
/// 2 GiB (waiting), then holds it until stdin closes; `dead` takes 512 MiB on another card and,
/// when stdin closes, exits without leaving.
fn act(role: &str, dir: &Path) {
    let ledger = Ledger::open(dir).expect("open the ledger");
    let slot = ledger
        .join(&format!("actor-{role} --model big"))
        .expect("join");
    let device = if role == "dead" {
        ledger.register_device(OTHER_UUID, "Other GPU", 2 * GIB, 2 * GIB)
    } else {
        ledger.register_device(UUID, "Test GPU \"4G\"", 4 * GIB, 3 * GIB)
    }
    .expect("register");
    let say = |text: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    let bytes = if role == "dead" { 512 * MIB } else { 2 * GIB };
    let on_wait = |_: &vramguard_core::ledger::WaitReport| say("waiting");
    let request = Request {
        limit: None,
        wait_until: Some(Instant::now() + HANG_GUARD),
        on_wait: Some(&on_wait),
    };
    let reservation = ledger
        .reserve(slot, device, bytes, &request)
        .unwrap_or_else(|r| panic!("{role}: refused: {r:?}"));
    ledger.commit(reservation);
    say("holding");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line); // until the test closes stdin
    if role == "dead" {
        std::process::exit(0); // without leave(): the kernel drops its liveness lock
    }
    ledger.release(slot, device, bytes);
    ledger.leave(slot);
}

/// A running actor and its output lines.
struct Actor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Actor {
    fn start(role: &str, dir: &Path) -> Actor {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ACTOR_VAR, role)
            .env(ACTOR_DIR_VAR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Actor { child, lines }
    }

    fn expect(&self, wanted: &str) {
        let line = self.lines.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!("hang guard: no `{wanted}` from the actor within {DEADLINE:?}")
        });
        assert_eq!(line, wanted);
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Closes stdin (the actor releases and leaves) and waits for it.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < DEADLINE,
                "hang guard: the actor did not finish within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(dir: &Path, args: &[&str]) -> String {
    let out = run_with_deadline(
        Command::new(vramguard())
            .arg("status")
            .args(args)
            .env("VRAMGUARD_DIR", dir),
        DEADLINE,
    );
    assert!(out.status.success(), "status {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&status(dir, &["--json"])).expect("status --json prints JSON")
}

fn process(report: &serde_json::Value, pid: i32) -> &serde_json::Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in {report}"))
}

#[test]
fn status_without_a_ledger_says_so() {
    let dir = TempDir::new("no-ledger");
    let missing = dir.join("never-created");
    assert!(status(&missing, &[]).contains("no guarded process has run yet"));
    let report = json(&missing);
    assert_eq!(report["devices"], serde_json::json!([]));
    assert_eq!(report["processes"], serde_json::json!([]));
    assert!(!missing.exists(), "status created the ledger directory");
    assert!(status(&missing, &["--prometheus"]).contains("vramguard_processes 0"));
}

#[test]
fn status_shows_holders_waiters_and_reclaims_the_dead() {
    let dir = TempDir::new("ledger");
    let ledger_dir = dir.join("ledger");
    let uuid = CuUuid(UUID).to_string();

    let holder = Actor::start("holder", &ledger_dir);
    holder.expect("holding");
    let dead = Actor::start("dead", &ledger_dir);
    dead.expect("holding");
    let dead_pid = dead.pid();
    let waiter = Actor::start("waiter", &ledger_dir);
    waiter.expect("waiting");
    // It dies after everybody joined (a joining process would take over its slot at once).
    dead.finish();

    // The ledger's own view, taken by the test (read-only use: no reclaim here).
    let truth = Ledger::open_existing(&ledger_dir).unwrap().snapshot();
    let device = truth
        .devices
        .iter()
        .find(|d| d.uuid == UUID)
        .expect("the card is registered");
    assert_eq!(device.waiting, 1);
    assert!(
        truth
            .processes
            .iter()
            .any(|p| p.pid == dead_pid && !p.alive),
        "the dead member is gone already"
    );

    let report = json(&ledger_dir);
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let d = devices
        .iter()
        .find(|d| d["uuid"] == uuid)
        .expect("the card in the report");
    assert_eq!(d["name"], "Test GPU \"4G\"");
    assert_eq!(d["capacity_bytes"], 4 * GIB);
    assert_eq!(d["budget_bytes"], 3 * GIB);
    assert_eq!(d["capacity_bytes"], device.capacity);
    assert_eq!(d["budget_bytes"], device.budget);
    assert_eq!(d["waiting"], 1);
    assert_eq!(d["used_bytes"], 2 * GIB);
    assert_eq!(d["used_bytes"], device.used);
    assert_eq!(d["reserved_bytes"], 0);
    // The dead member's 512 MiB were given back by this very call.
    assert_eq!(report["reclaimed_bytes"], 512 * MIB);
    let other = devices
        .iter()
        .find(|d| d["uuid"] == CuUuid(OTHER_UUID).to_string())
        .expect("the other card");
    assert_eq!(other["used_bytes"], 0);

    let h = process(&report, holder.pid());
    assert_eq!(h["state"], "running");
    assert_eq!(h["command"], "actor-holder --model big");
    assert_eq!(h["devices"][0]["uuid"], uuid);
    assert_eq!(h["devices"][0]["used_bytes"], 2 * GIB);
    assert!(h["waiting_for"].is_null());
    let w = process(&report, waiter.pid());
    assert_eq!(w["state"], "waiting");
    assert_eq!(w["waiting_for"]["uuid"], uuid);
    assert_eq!(w["waiting_for"]["bytes"], 2 * GIB);
    let x = process(&report, dead_pid);
    assert_eq!(x["state"], "reclaimed");

    // Every live process in the ledger's snapshot is in the report with the same charges.
    for p in truth.processes.iter().filter(|p| p.alive) {
        let shown = process(&report, p.pid);
        assert_eq!(shown["command"], p.command);
        for pd in &p.devices {
            let shown_device = shown["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["uuid"] == CuUuid(pd.uuid).to_string())
                .expect("device of the process");
            assert_eq!(shown_device["used_bytes"], pd.charged);
        }
    }

    // The reclaimed entry is gone afterwards; the live ones stay.
    let again = json(&ledger_dir);
    assert_eq!(again["reclaimed_bytes"], 0);
    assert!(
        again["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != dead_pid)
    );
    assert_eq!(again["processes"].as_array().unwrap().len(), 2);

    // For people.
    let human = status(&ledger_dir, &[]);
    for wanted in [
        uuid.as_str(),
        "Test GPU",
        "Other GPU",
        "4.00 GiB",
        "3.00 GiB",
        "2.00 GiB",
        "waiting",
        "running",
        "actor-holder --model big",
    ] {
        assert!(human.contains(wanted), "`{wanted}` missing from:\n{human}");
    }
    assert!(
        human.contains(&holder.pid().to_string()) && human.contains(&waiter.pid().to_string()),
        "{human}"
    );

    // Prometheus text format.
    let metrics = status(&ledger_dir, &["--prometheus"]);
    check_prometheus_syntax(&metrics);
    let device_labels = format!("{{uuid=\"{uuid}\",name=\"Test GPU \\\"4G\\\"\"}}");
    for wanted in [
        format!("vramguard_device_capacity_bytes{device_labels} {}", 4 * GIB),
        format!("vramguard_device_budget_bytes{device_labels} {}", 3 * GIB),
        format!("vramguard_device_used_bytes{device_labels} {}", 2 * GIB),
        format!("vramguard_device_waiting{device_labels} 1"),
        format!(
            "vramguard_process_used_bytes{{pid=\"{}\",command=\"actor-holder --model big\",uuid=\"{uuid}\"}} {}",
            holder.pid(),
            2 * GIB
        ),
        format!(
            "vramguard_process_waiting_bytes{{pid=\"{}\",command=\"actor-waiter --model big\"}} {}",
            waiter.pid(),
            2 * GIB
        ),
        "vramguard_processes 2".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == wanted),
            "`{wanted}` missing from:\n{metrics}"
        );
    }

    // The holder leaves: the waiter gets its memory and runs.
    let waiter_pid = waiter.pid();
    holder.finish();
    waiter.expect("holding");
    let after = json(&ledger_dir);
    let w = process(&after, waiter_pid);
    assert_eq!(w["state"], "running");
    assert_eq!(w["devices"][0]["used_bytes"], 2 * GIB);
    let card = after["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uuid"] == uuid)
        .unwrap()
        .clone();
    assert_eq!(card["waiting"], 0);
    waiter.finish();
    let empty = json(&ledger_dir);
    assert_eq!(empty["processes"], serde_json::json!([]));
    assert!(
        empty["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["used_bytes"] == 0),
        "{empty}"
    );
}

/// Every line is a comment (`# HELP name text`, `# TYPE name gauge`) or a sample
/// `name{label="value",...} number` whose family was declared.
fn check_prometheus_syntax(text: &str) {
    let mut declared = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            declared.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            assert!(rest.ends_with(" gauge"), "{line}");
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        assert!(
            declared.iter().any(|d| d == name),
            "undeclared family: {line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels: {line}"
            );
        }
    }
}

/// Runs `status --watch 0.2` (`command`, with stdout piped) against a ledger with a holder until
/// `reports` counts three reports in its output, then interrupts it with `signal` and returns
/// everything it wrote.
fn watch_output(
    mut command: Command,
    ledger_dir: &Path,
    reports: fn(&str) -> usize,
    signal: i32,
) -> String {
    let holder = Actor::start("holder", ledger_dir);
    holder.expect("holding");
    let mut child = command
        .env("VRAMGUARD_DIR", ledger_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its output as it comes, until it closes.
    let mut out = child.stdout.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut out, &mut chunk) {
                text.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let seen = || reports(&String::from_utf8_lossy(&text.lock().unwrap()));
    // Three reports, however long the machine takes to draw them (the deadline is a hang guard).
    let started = Instant::now();
    while seen() < 3 {
        assert!(
            started.elapsed() < DEADLINE,
            "hang guard: {} reports within {DEADLINE:?}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) with the pid of our own child and a signal that ends it (SIGINT, as
    // Ctrl-C would send).
    unsafe { libc::kill(child.id() as i32, signal) };
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < DEADLINE,
            "hang guard: status --watch ignored signal {signal} for {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap();
    holder.finish();
    String::from_utf8_lossy(&text.lock().unwrap()).into_owned()
}

#[test]
fn watch_into_a_pipe_writes_report_after_report_without_control_codes() {
    let dir = TempDir::new("watch");
    let mut command = Command::new(vramguard());
    command.args(["status", "--watch", "0.2"]);
    let reports = |text: &str| text.matches("ledger: ").count();
    let text = watch_output(command, &dir.join("ledger"), reports, libc::SIGINT);
    assert!(text.contains("actor-holder"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "control codes written into a pipe: {text:?}"
    );
    // One blank line between two reports.
    assert!(text.contains("\n\nledger: "), "{text:?}");

    // JSON: the objects one after another, a stream that JSON readers (jq) take as it is.
    let mut command = Command::new(vramguard());
    command.args(["status", "--json", "--watch", "0.2"]);
    let objects = |text: &str| text.matches("\n}\n").count();
    let text = watch_output(command, &dir.join("ledger-json"), objects, libc::SIGINT);
    assert!(!text.contains('\x1b'), "{text:?}");
    let reports: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .collect();
    assert!(reports.len() >= 3, "{text}");
    assert!(reports.iter().all(|r| r["processes"].is_array()), "{text}");
}

#[test]
fn watch_on_a_terminal_redraws_the_screen() {
    // A terminal of its own: script(1) runs the command on a new pseudo-terminal.
    let script = Path::new("/usr/bin/script");
    if !script.is_file() {
        skip(
            "watch_on_a_terminal_redraws_the_screen",
            "no /usr/bin/script (util-linux) for a pseudo-terminal",
        );
        return;
    }
    let dir = TempDir::new("watch-tty");
    let mut command = Command::new(script);
    command.args(["-qfec"]).arg(format!(
        "exec '{}' status --watch 0.2",
        vramguard().display()
    ));
    command.arg("/dev/null").stderr(Stdio::null());
    let redraws = |text: &str| text.matches("\x1b[H\x1b[2J").count();
    let text = watch_output(command, &dir.join("ledger"), redraws, libc::SIGTERM);
    assert!(text.contains("actor-holder"), "{text}");
}

#[test]
fn a_damaged_ledger_is_an_error_that_names_the_file() {
    let dir = TempDir::new("damaged");
    let ledger_dir = dir.join("ledger");
    let path = Ledger::open(&ledger_dir).unwrap().path().to_path_buf();
    std::fs::write(&path, b"not a ledger").unwrap();
    let out = run_with_deadline(
        Command::new(vramguard())
            .args(["status", "--json"])
            .env("VRAMGUARD_DIR", &ledger_dir),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&*path.to_string_lossy()),
        "{}",
        stderr(&out)
    );
}

/// Polls `status --json` until `condition` holds, or panics at the deadline.
fn wait_for_report(
    dir: &Path,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let report = json(dir);
        if condition(&report) {
            return report;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "hang guard: never saw {what} within {DEADLINE:?}; last report: {report}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_shows_real_guarded_programs_holding_and_waiting() {
    let card = SimCard::new("size=4GiB,name=Simulated Status GPU");
    // The holder holds until the waiter has been seen waiting; the waiter holds a moment.
    let release = card.dir.join("release");
    let load = |name: &str, policy: &str| {
        let hold: [&std::ffi::OsStr; 2] = if name == "holder" {
            ["--hold-until".as_ref(), release.as_os_str()]
        } else {
            ["--hold-ms".as_ref(), "10".as_ref()]
        };
        card.command(vramguard())
            .args(["run", "--policy", policy, "--expect", "3GiB", "--"])
            .arg(vramguard())
            .args(["__demo-load", "--name", name])
            .args(hold)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut holder = load("holder", "deny");
    let ledger_dir = card.ledger_dir();
    let gib3 = 3 * GIB;
    wait_for_report(&ledger_dir, "the holder's reservation", |r| {
        r["processes"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["pid"] == holder.id() && p["devices"][0]["used_bytes"].as_u64() >= Some(gib3)
            })
        })
    });
    let mut waiter = load("waiter", "wait");
    let report = wait_for_report(&ledger_dir, "the waiter", |r| {
        r["devices"][0]["waiting"] == 1
    });
    let device = &report["devices"][0];
    assert_eq!(device["name"], "Simulated Status GPU");
    assert_eq!(device["capacity_bytes"], 4 * GIB);
    assert!(device["used_bytes"].as_u64().unwrap() <= device["budget_bytes"].as_u64().unwrap());
    let w = process(&report, waiter.id() as i32);
    assert_eq!(w["state"], "waiting");
    assert!(w["waiting_for"]["bytes"].as_u64().unwrap() >= gib3, "{w}");
    assert_eq!(w["waiting_for"]["uuid"], device["uuid"]);
    let h = process(&report, holder.id() as i32);
    assert_eq!(h["state"], "running");
    // The ledger keeps the start of the command line (64 bytes at most): where the checkout's
    // path is long, the arguments are cut.
    let command_line = format!("{} __demo-load --name holder", vramguard().display());
    let shown = h["command"].as_str().unwrap();
    assert!(!shown.is_empty() && command_line.starts_with(shown), "{h}");

    // Both finish: the waiter after the holder.
    std::fs::write(&release, b"").unwrap();
    for child in [&mut holder, &mut waiter] {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "hang guard: a guarded load did not finish within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }
    let done = json(&ledger_dir);
    assert_eq!(done["processes"], serde_json::json!([]), "{done}");
}
