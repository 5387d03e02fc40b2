//! `vramguard status --prometheus --output FILE`, as a node exporter's textfile collector reads
//! it: the file holds the figures of a guarded program holding memory on the simulated card, is
//! replaced by a rename (a reader holding the old file keeps a complete old report, the new file
//! is a new inode), is rewritten under `--watch` when the figures change, and an unwritable
//! target is exit code 1.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{ClientPath, Sandbox};

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = support::HANG_GUARD;

fn status_to(sandbox: &Sandbox, file: &Path, extra: &[&str]) -> support::Running {
    let mut command = sandbox.program(support::artifacts().cli);
    command
        .args(["status", "--prometheus", "--output"])
        .arg(file)
        .args(extra);
    support::spawn(command)
}

/// The value of the sample `name` with `label` in its label set.
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_textfile_is_replaced_atomically_and_rewritten_while_watching() {
    let mut sandbox = Sandbox::new("4GiB");
    sandbox.set_env("SIMCUDA_CONTEXT_COST", "64MiB");
    sandbox.init();
    let holder = sandbox.start_holding(
        ClientPath::Python,
        true,
        &["--chunk", "1GiB", "--hold-until", sandbox.until_killed()],
        DEADLINE,
    );
    let pid = holder.pid();
    let dir = sandbox.root().join("textfile");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vramguard.prom");

    let once = status_to(&sandbox, &file, &[]).finish(DEADLINE);
    assert!(once.status.success(), "{once:?}");
    assert!(
        once.stdout.trim().is_empty(),
        "the report went to stdout: {once:?}"
    );
    let text = fs::read_to_string(&file).unwrap();
    let used = sample(
        &text,
        "vramguard_process_used_bytes",
        &format!("pid=\"{pid}\""),
    );
    assert!(
        used.is_some_and(|bytes| bytes >= (1u64 << 30) as f64),
        "{text}"
    );
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o644);

    // A reader that opened the file keeps reading the complete old report after a rewrite.
    let mut old = fs::File::open(&file).unwrap();
    let old_inode = old.metadata().unwrap().ino();
    let watch = status_to(&sandbox, &file, &["--watch", "0.2"]);
    drop(holder.kill());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = fs::read_to_string(&file).unwrap();
        if sample(
            &now,
            "vramguard_process_used_bytes",
            &format!("pid=\"{pid}\""),
        )
        .is_none()
            && now.contains("vramguard_processes")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file was never rewritten: {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(
        fs::metadata(&file).unwrap().ino(),
        old_inode,
        "rewritten in place"
    );
    let mut kept = String::new();
    old.read_to_string(&mut kept).unwrap();
    assert_eq!(kept, text, "the old reader saw a changed file");
    // SIGKILLed, perhaps in the middle of a rewrite: the most it leaves is a hidden temporary,
    // which a textfile collector ignores (it reads only *.prom files).
    drop(watch.kill());
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"vramguard.prom".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n == "vramguard.prom" || n.starts_with(".vramguard.prom.tmp-")),
        "{names:?}"
    );
}

#[test]
fn an_unwritable_output_is_an_error() {
    let sandbox = Sandbox::new("4GiB");
    let missing = sandbox.root().join("no/such/dir/vramguard.prom");
    let finished = status_to(&sandbox, &missing, &[]).finish(DEADLINE);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(finished.stderr.contains("cannot write"), "{finished:?}");
}

/// Waits (hang guard only) until the file at `file` satisfies `done`; returns its text.
fn wait_for_file(file: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = fs::read_to_string(file).unwrap_or_default();
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_watch_writes_ledger_down_while_the_ledger_cannot_be_read_and_recovers() {
    let sandbox = Sandbox::new("4GiB");
    let holder = sandbox.hold(true, "256MiB");
    let pid = holder.pid();
    let dir = sandbox.root().join("textfile");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vramguard.prom");
    let watch = status_to(&sandbox, &file, &["--watch", "0.2"]);
    let holding = format!("pid=\"{pid}\"");
    let up = |text: &str| sample(text, "vramguard_ledger_up", "");
    wait_for_file(&file, "never up with the holder's figures", |text| {
        up(text) == Some(1.0) && sample(text, "vramguard_process_used_bytes", &holding).is_some()
    });

    // The ledger directory becomes a plain file: no ledger can be opened there.
    let away = sandbox.root().join("ledger-away");
    fs::rename(&sandbox.ledger_dir, &away).unwrap();
    fs::write(&sandbox.ledger_dir, b"not a directory").unwrap();
    let down = wait_for_file(&file, "never said the ledger is down", |text| {
        up(text) == Some(0.0)
    });
    for stale in [
        "vramguard_process_used_bytes{",
        "vramguard_device_capacity_bytes{",
        "vramguard_processes ",
    ] {
        assert!(!down.contains(stale), "a stale figure stayed: {down}");
    }

    // The ledger comes back: so do the figures.
    fs::remove_file(&sandbox.ledger_dir).unwrap();
    fs::rename(&away, &sandbox.ledger_dir).unwrap();
    wait_for_file(&file, "never recovered", |text| {
        up(text) == Some(1.0) && sample(text, "vramguard_process_used_bytes", &holding).is_some()
    });
    let watched = watch.kill();
    drop(holder.kill());
    let said: Vec<&str> = watched
        .stderr
        .lines()
        .filter(|l| l.starts_with("vramguard status: "))
        .collect();
    assert_eq!(
        said.len(),
        2,
        "the trouble and the recovery, once each: {watched:?}"
    );
    assert!(said[1].contains("can be read again"), "{said:?}");
}
