//! `vramguard demo`: the user's story on a simulated 4 GiB card, narrated for a person.
//!
//! Three "model loads" (each 3 GiB in 100 MiB chunks, plus its context) start at once:
//! 1. without the guard: they collide, the (fragile) card is poisoned, and a later start fails
//!    with "CUDA unknown error" until the card is reset;
//! 2. under the guard (`deny`): one loads, the others get a clean out-of-memory at once;
//! 3. under the guard with `--policy wait`: all three finish, one after another.
//!
//! Everything runs in a private temporary directory (card state, ledger, a `libcuda.so.1` link to
//! the simulated driver); the user's own GPU, ledger and environment are never touched. The
//! simulator (`libcuda.so`, `simcuda`) is found next to the `vramguard` executable.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::demo_load;
use super::format;
use super::library;
use super::status;

/// How long one act may take before its loads are killed.
const ACT_DEADLINE: Duration = Duration::from_secs(60);
/// How often the live view looks at the ledger.
const VIEW_INTERVAL: Duration = Duration::from_millis(100);
const CARD: &str = "size=4GiB,name=Simulated GeForce GTX 1650 (4 GiB)";
/// Each load holds its model for a second ("inference"), so that loads started together overlap
/// even on a busy machine.
const LOAD_ARGS: &[&str] = &["--chunks", "30", "--chunk", "100MiB", "--hold-ms", "1000"];
const NAMES: [&str; 3] = ["script 1", "script 2", "script 3"];

/// The demo's private directory, removed when dropped.
struct Workspace {
    dir: PathBuf,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the demo runs: the simulator, this executable, and the private directory.
struct Stage {
    exe: PathBuf,
    simcuda: PathBuf,
    workspace: Workspace,
}

/// How one load ended.
struct Outcome {
    name: &'static str,
    code: Option<i32>,
    output: String,
}

impl Stage {
    fn dir(&self) -> &Path {
        &self.workspace.dir
    }

    fn ledger_dir(&self) -> PathBuf {
        self.dir().join("ledger")
    }

    /// The environment every child gets: the simulated card and the private ledger, nothing of
    /// the user's guard or GPU settings.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("VRAMGUARD_") || key_text.starts_with("SIMCUDA_") {
                command.env_remove(&key);
            }
        }
        let mut library_path = OsString::from(self.dir().join("lib"));
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
            library_path.push(":");
            library_path.push(old);
        }
        command
            .env_remove("LD_PRELOAD")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env("LD_LIBRARY_PATH", library_path)
            .env("SIMCUDA_STATE", self.dir().join("card-state"))
            .env("SIMCUDA_DEVICES", CARD)
            .env("SIMCUDA_FRAGILE", "1")
            .env("VRAMGUARD_DIR", self.ledger_dir())
            .env(
                "VRAMGUARD_DRIVER",
                self.dir().join("lib").join("libcuda.so.1"),
            )
            .stdin(Stdio::null());
        command
    }

    /// Runs `simcuda ARGS`; returns its stdout.
    fn simcuda(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(&self.simcuda)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.simcuda.display()))?;
        if !output.status.success() {
            return Err(format!(
                "simcuda {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The simulated card as `simcuda report --json` shows it.
    fn card(&self) -> Result<serde_json::Value, String> {
        let text = self.simcuda(&["report", "--json"])?;
        let report: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("simcuda report: {e}"))?;
        Ok(report["devices"][0].clone())
    }

    /// Starts one load: unguarded, or through `vramguard run` with `guard_options`.
    fn start_load(&self, name: &str, guard_options: Option<&[&str]>) -> std::io::Result<Child> {
        let mut command = self.command(&self.exe);
        if let Some(options) = guard_options {
            command.arg("run").args(options).arg("--").arg(&self.exe);
        }
        command
            .arg("__demo-load")
            .arg("--name")
            .arg(name)
            .args(LOAD_ARGS);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Starts the three loads at once, narrates their output and the ledger as it changes, and
    /// waits for them (killing them past the deadline). Returns the outcomes and whether the
    /// live view ever saw a process waiting.
    fn run_loads(&self, guard_options: Option<&[&str]>) -> Result<(Vec<Outcome>, bool), String> {
        let (lines_tx, lines_rx) = mpsc::channel::<(usize, String)>();
        let mut children = Vec::new();
        for (index, name) in NAMES.iter().enumerate() {
            let mut child = self
                .start_load(name, guard_options)
                .map_err(|e| format!("cannot start a load: {e}"))?;
            // The load's own lines start with its name; the guard's (on stderr) get it too.
            let streams: [(Option<Box<dyn std::io::Read + Send>>, String); 2] = [
                (child.stdout.take().map(|s| Box::new(s) as _), String::new()),
                (
                    child.stderr.take().map(|s| Box::new(s) as _),
                    format!("{name}: "),
                ),
            ];
            for (stream, prefix) in streams {
                let Some(stream) = stream else { continue };
                let tx = lines_tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if tx.send((index, format!("{prefix}{line}"))).is_err() {
                            break;
                        }
                    }
                });
            }
            children.push(child);
        }
        drop(lines_tx);
        let mut outputs = vec![String::new(); NAMES.len()];
        let mut codes: Vec<Option<Option<i32>>> = vec![None; NAMES.len()];
        let mut last_view: Vec<String> = Vec::new();
        let mut saw_waiting = false;
        let started = Instant::now();
        loop {
            // Narrate the loads' lines until they pause for a moment.
            loop {
                match lines_rx.recv_timeout(VIEW_INTERVAL) {
                    Ok((index, line)) => {
                        println!("    {line}");
                        outputs[index].push_str(&line);
                        outputs[index].push('\n');
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // Every output is closed; the exits are about to be seen.
                        std::thread::sleep(VIEW_INTERVAL);
                        break;
                    }
                }
            }
            if guard_options.is_some()
                && let Ok(report) = status::collect(&self.ledger_dir(), None)
            {
                saw_waiting |= report.devices.iter().any(|d| d.waiting > 0);
                let view = format::summary_lines(&report, |pid| {
                    let index = children.iter().position(|c| c.id() as i32 == pid)?;
                    Some(NAMES[index].to_string())
                });
                if view != last_view && !view.is_empty() {
                    for line in &view {
                        println!("  [ledger] {line}");
                    }
                    last_view = view;
                }
            }
            for (child, code) in children.iter_mut().zip(codes.iter_mut()) {
                if code.is_none()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    *code = Some(status.code());
                }
            }
            if codes.iter().all(Option::is_some) {
                break;
            }
            if started.elapsed() > ACT_DEADLINE {
                for child in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(format!(
                    "the loads did not finish within {} s",
                    ACT_DEADLINE.as_secs()
                ));
            }
        }
        // The last lines of the reader threads.
        while let Ok((index, line)) = lines_rx.recv_timeout(Duration::from_millis(200)) {
            println!("    {line}");
            outputs[index].push_str(&line);
            outputs[index].push('\n');
        }
        let outcomes = NAMES
            .iter()
            .zip(codes)
            .zip(outputs)
            .map(|((name, code), output)| Outcome {
                name,
                code: code.flatten(),
                output,
            })
            .collect();
        Ok((outcomes, saw_waiting))
    }

    /// One more unguarded load after the act, "the next morning".
    fn later_start(&self) -> Result<Outcome, String> {
        let output = self
            .command(&self.exe)
            .arg("__demo-load")
            .arg("--name")
            .arg("a later start")
            .args(LOAD_ARGS)
            .output()
            .map_err(|e| format!("cannot start a load: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        for line in text.lines() {
            println!("    {line}");
        }
        Ok(Outcome {
            name: "a later start",
            code: output.status.code(),
            output: text,
        })
    }
}

fn prepare() -> Result<Stage, String> {
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .map_err(|e| format!("cannot find the vramguard executable: {e}"))?;
    let exe_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let simulator = exe_dir.join("libcuda.so");
    let simcuda = exe_dir.join("simcuda");
    if !simulator.is_file() || !simcuda.is_file() {
        return Err(format!(
            "the demo needs the simulated driver next to vramguard ({} and {}); build it with \
             ./scripts/setup.sh or cargo build --release --workspace",
            simulator.display(),
            simcuda.display()
        ));
    }
    library::locate().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("vramguard-demo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let workspace = Workspace { dir };
    fs::create_dir(workspace.dir.join("lib")).map_err(|e| e.to_string())?;
    symlink(&simulator, workspace.dir.join("lib").join("libcuda.so.1"))
        .map_err(|e| e.to_string())?;
    let stage = Stage {
        exe,
        simcuda,
        workspace,
    };
    stage.simcuda(&["init"])?;
    Ok(stage)
}

fn count(outcomes: &[Outcome], code: i32) -> usize {
    outcomes.iter().filter(|o| o.code == Some(code)).count()
}

fn verdict(ok: bool, text: &str) -> bool {
    println!("  {} {text}\n", if ok { "=>" } else { "=> UNEXPECTED:" });
    ok
}

fn act_one(stage: &Stage) -> Result<bool, String> {
    println!("Act 1 - without the guard");
    println!(
        "  Three scripts start at once. Each loads a model of about 3 GiB (30 pieces of 100 MiB) onto"
    );
    println!(
        "  the 4 GiB card. Nothing coordinates them: together they ask for 9 GiB plus their contexts.\n"
    );
    let (outcomes, _) = stage.run_loads(None)?;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.code != Some(0))
        .map(|o| o.name)
        .collect();
    let card = stage.card()?;
    let poisoned = card["poisoned"].as_bool().unwrap_or(false);
    println!(
        "\n  {} of 3 scripts died midway. The card reports poisoned={poisoned}: this simulated card, like",
        failed.len()
    );
    println!(
        "  the user's, does not recover from the collision. The next morning, a new script starts:\n"
    );
    let later = stage.later_start()?;
    let unknown =
        later.code == Some(demo_load::INIT_FAILED) && later.output.contains("CUDA_ERROR_UNKNOWN");
    println!(
        "\n  It fails before loading anything, like the user's \"CUDA initialization: CUDA unknown error\",\n  \
         and every CUDA program would, until a reboot. (Resetting the simulated card: `simcuda reset`.)"
    );
    stage.simcuda(&["reset"])?;
    let reset = !stage.card()?["poisoned"].as_bool().unwrap_or(true);
    Ok(verdict(
        !failed.is_empty() && poisoned && unknown && reset,
        "without the guard the collision wrecked the card for everyone",
    ))
}

fn act_two(stage: &Stage) -> Result<bool, String> {
    println!("Act 2 - under the guard, policy deny");
    println!(
        "  The same three scripts, each started as `vramguard run --policy deny --expect 3GiB -- ...`."
    );
    println!(
        "  The guard keeps a ledger that every guarded process shares; each script says up front how"
    );
    println!(
        "  much it will need (the guard adds its context), so the guard can answer before anything"
    );
    println!("  is loaded.\n");
    let (outcomes, _) = stage.run_loads(Some(&["--policy", "deny", "--expect", "3GiB"]))?;
    let loaded = count(&outcomes, demo_load::LOADED);
    let clean_oom = outcomes
        .iter()
        .filter(|o| {
            o.code == Some(demo_load::OUT_OF_MEMORY)
                && o.output.contains("CUDA_ERROR_OUT_OF_MEMORY")
        })
        .count();
    let card = stage.card()?;
    let poisoned = card["poisoned"].as_bool().unwrap_or(true);
    println!(
        "\n  {loaded} script loaded its model; {clean_oom} got CUDA_ERROR_OUT_OF_MEMORY at once (PyTorch raises it as"
    );
    println!(
        "  torch.cuda.OutOfMemoryError, a normal error a script can catch or retry). The card is"
    );
    println!(
        "  {}.",
        if poisoned {
            "POISONED"
        } else {
            "healthy: the next program starts normally"
        }
    );
    Ok(verdict(
        loaded == 1 && clean_oom == 2 && !poisoned,
        "one loads, the others get a clean out-of-memory, the card stays healthy",
    ))
}

fn act_three(stage: &Stage) -> Result<bool, String> {
    println!("Act 3 - under the guard, policy wait");
    println!(
        "  The same three scripts with `vramguard run --policy wait --expect 3GiB -- ...`. A script"
    );
    println!(
        "  that cannot get its whole share waits, first come first served, before it takes anything."
    );
    println!(
        "  (Without --expect, three loads that interleave their pieces would each hold part of the"
    );
    println!(
        "  card while waiting for the rest: the guard would break that deadlock by refusing one, so"
    );
    println!(
        "  plain waiting promises progress, not that all three finish. The up-front reservation does.)\n"
    );
    let (outcomes, saw_waiting) =
        stage.run_loads(Some(&["--policy", "wait", "--expect", "3GiB"]))?;
    let loaded = count(&outcomes, demo_load::LOADED);
    let card = stage.card()?;
    let poisoned = card["poisoned"].as_bool().unwrap_or(true);
    let capacity = card["capacity_bytes"].as_u64().unwrap_or(0);
    let peak = card["peak_bytes"].as_u64().unwrap_or(u64::MAX);
    println!(
        "\n  {loaded} of 3 scripts finished, one after another; the card's peak use was {} of {}.",
        vramguard_core::units::format_size(peak),
        vramguard_core::units::format_size(capacity)
    );
    Ok(verdict(
        loaded == 3 && saw_waiting && !poisoned && peak <= capacity,
        "all three finished in turn, and the card never ran out",
    ))
}

/// `vramguard demo`.
pub fn demo() -> i32 {
    println!(
        "vramguard demo: three scripts, one 4 GiB card (simulated: no GPU is used or needed)\n"
    );
    let stage = match prepare() {
        Ok(stage) => stage,
        Err(e) => {
            eprintln!("vramguard demo: {e}");
            return 1;
        }
    };
    let mut all_good = true;
    for act in [act_one, act_two, act_three] {
        match act(&stage) {
            Ok(good) => all_good &= good,
            Err(e) => {
                eprintln!("vramguard demo: {e}");
                all_good = false;
            }
        }
        // Each act starts from a fresh card and an empty ledger.
        if let Err(e) = stage.simcuda(&["reset"]) {
            eprintln!("vramguard demo: {e}");
            all_good = false;
        }
    }
    if all_good {
        println!(
            "Every act showed what it should. Next: `vramguard run -- your-program`, `vramguard status`."
        );
        0
    } else {
        println!("Some act did not show what it should (see UNEXPECTED above).");
        1
    }
}
