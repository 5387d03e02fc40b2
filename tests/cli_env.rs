//! `vramguard env`: the lines for sh and fish evaluated in real shells, the virtualenv hook in a
//! real virtualenv activated and deactivated in real bash (and fish), and the settings table that
//! `docs/usage.md` must reproduce.

#[path = "support/cli.rs"]
mod cli_support;

use std::process::Command;
use std::time::Duration;

use cli_support::*;
use vramguard_core::settings::SETTINGS;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

fn vramguard_env(args: &[&str]) -> String {
    let out = run_with_deadline(
        Command::new(vramguard())
            .arg("env")
            .args(args)
            .env_remove("VRAMGUARD_LIBRARY"),
        DEADLINE,
    );
    assert!(out.status.success(), "env {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Runs `script` in `shell -c`, with a clean guard environment.
fn shell(shell: &str, script: &str) -> String {
    let mut command = Command::new(shell);
    command.arg("-c").arg(script).env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VRAMGUARD_") {
            command.env_remove(&key);
        }
    }
    let out = run_with_deadline(&mut command, DEADLINE);
    assert!(
        out.status.success(),
        "{shell} -c {script}: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn sh_lines_prepend_once_and_export_the_options() {
    let lib = library().to_string_lossy().to_string();
    let lines = vramguard_env(&["--policy", "wait", "--expect", "3GiB"]);
    let script = format!(
        "LD_PRELOAD=/opt/x/libx.so; export LD_PRELOAD\n{lines}\necho \"1=$LD_PRELOAD\"\n{lines}\necho \"2=$LD_PRELOAD\"\n\
         echo \"P=$VRAMGUARD_POLICY E=$VRAMGUARD_EXPECT\"\nsh -c 'echo \"child=$LD_PRELOAD\"'"
    );
    for sh in ["sh", "bash"] {
        let out = shell(sh, &script);
        assert!(
            out.contains(&format!("1={lib}:/opt/x/libx.so\n")),
            "{sh}: {out}"
        );
        assert!(
            out.contains(&format!("2={lib}:/opt/x/libx.so\n")),
            "{sh}: {out}"
        );
        assert!(out.contains("P=wait E=3GiB\n"), "{sh}: {out}");
        assert!(
            out.contains(&format!("child={lib}:/opt/x/libx.so\n")),
            "{sh}: the variable is not exported: {out}"
        );
    }
    let fresh = shell(
        "sh",
        &format!(
            "unset LD_PRELOAD\n{}\necho \"$LD_PRELOAD\"",
            vramguard_env(&[])
        ),
    );
    assert_eq!(fresh.trim(), lib);
}

#[test]
fn fish_lines_prepend_once_and_export_the_options() {
    let lib = library().to_string_lossy().to_string();
    let lines = vramguard_env(&["--shell", "fish", "--policy", "deny", "--limit", "2GiB"]);
    assert!(lines.contains("set -gx"), "{lines}");
    let script = format!(
        "set -gx LD_PRELOAD /opt/x/libx.so\n{lines}\necho \"1=$LD_PRELOAD\"\n{lines}\necho \"2=$LD_PRELOAD\"\n\
         echo \"P=$VRAMGUARD_POLICY L=$VRAMGUARD_LIMIT\"\nsh -c 'echo \"child=$LD_PRELOAD\"'\n\
         set -e LD_PRELOAD\n{lines}\necho \"3=$LD_PRELOAD\""
    );
    let out = shell("fish", &script);
    assert!(out.contains(&format!("1={lib}:/opt/x/libx.so\n")), "{out}");
    assert!(out.contains(&format!("2={lib}:/opt/x/libx.so\n")), "{out}");
    assert!(out.contains("P=deny L=2GiB\n"), "{out}");
    assert!(
        out.contains(&format!("child={lib}:/opt/x/libx.so\n")),
        "{out}"
    );
    assert!(out.contains(&format!("3={lib}\n")), "{out}");
}

/// A real virtualenv (without pip, for speed).
fn make_venv(dir: &TempDir) -> std::path::PathBuf {
    let venv = dir.join("venv");
    let out = run_with_deadline(
        Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv),
        DEADLINE,
    );
    assert!(out.status.success(), "python3 -m venv: {}", stderr(&out));
    venv
}

#[test]
fn venv_hook_is_idempotent_and_undone_by_deactivate() {
    let dir = TempDir::new("venv");
    let venv = make_venv(&dir);
    let activate = venv.join("bin/activate");
    let original = std::fs::read_to_string(&activate).unwrap();

    vramguard_env(&["--venv", venv.to_str().unwrap()]);
    let once = std::fs::read_to_string(&activate).unwrap();
    vramguard_env(&["--venv", venv.to_str().unwrap()]);
    let twice = std::fs::read_to_string(&activate).unwrap();
    assert_eq!(once, twice, "a second install changed the script");
    assert!(
        once.starts_with(original.trim_end()),
        "the virtualenv's own script was changed"
    );
    assert_eq!(once.matches("# >>> vramguard >>>").count(), 1);

    let lib = library().to_string_lossy().to_string();
    let activate = activate.display();
    // LD_PRELOAD set before: kept behind the guard while active, restored exactly after.
    let out = shell(
        "bash",
        &format!(
            "export LD_PRELOAD=/opt/x/libx.so\n. {activate}\necho \"in=$LD_PRELOAD\"\n\
             python -c 'import os; print(\"py=\" + os.environ[\"LD_PRELOAD\"])'\n\
             . {activate}\necho \"again=$LD_PRELOAD\"\n\
             deactivate\necho \"out=$LD_PRELOAD\"\nif declare -F deactivate || declare -F _vramguard_venv_deactivate; then echo still-defined; else echo gone; fi"
        ),
    );
    assert!(out.contains(&format!("in={lib}:/opt/x/libx.so\n")), "{out}");
    assert!(out.contains(&format!("py={lib}:/opt/x/libx.so\n")), "{out}");
    assert!(
        out.contains(&format!("again={lib}:/opt/x/libx.so\n")),
        "{out}"
    );
    assert!(out.contains("out=/opt/x/libx.so\n"), "{out}");
    assert!(out.contains("gone"), "deactivate is still defined: {out}");

    // LD_PRELOAD unset before: unset again after.
    let out = shell(
        "bash",
        &format!(
            "unset LD_PRELOAD\n. {activate}\necho \"in=$LD_PRELOAD\"\ndeactivate\necho \"out=${{LD_PRELOAD-unset}}\""
        ),
    );
    assert!(out.contains(&format!("in={lib}\n")), "{out}");
    assert!(out.contains("out=unset\n"), "{out}");
}

#[test]
fn venv_hook_works_in_fish() {
    let dir = TempDir::new("venv-fish");
    let venv = make_venv(&dir);
    let activate_fish = venv.join("bin/activate.fish");
    assert!(
        activate_fish.is_file(),
        "python3 -m venv made no activate.fish"
    );
    vramguard_env(&["--venv", venv.to_str().unwrap()]);
    let lib = library().to_string_lossy().to_string();
    let activate_fish = activate_fish.display();
    let out = shell(
        "fish",
        &format!(
            "set -gx LD_PRELOAD /opt/x/libx.so\nsource {activate_fish}\necho \"in=$LD_PRELOAD\"\n\
             deactivate\necho \"out=$LD_PRELOAD\"\nset -e LD_PRELOAD\nsource {activate_fish}\n\
             echo \"in2=$LD_PRELOAD\"\ndeactivate\nif set -q LD_PRELOAD; echo out2=set; else; echo out2=unset; end"
        ),
    );
    assert!(out.contains(&format!("in={lib}:/opt/x/libx.so\n")), "{out}");
    assert!(out.contains("out=/opt/x/libx.so\n"), "{out}");
    assert!(out.contains(&format!("in2={lib}\n")), "{out}");
    assert!(out.contains("out2=unset\n"), "{out}");
}

#[test]
fn venv_install_refuses_a_directory_that_is_no_virtualenv() {
    let dir = TempDir::new("not-venv");
    let out = run_with_deadline(
        Command::new(vramguard())
            .args(["env", "--venv"])
            .arg(dir.path()),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a virtualenv nor a conda environment"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_setting_is_listed() {
    let list = vramguard_env(&["--list"]);
    for setting in SETTINGS {
        assert!(
            list.contains(setting.name),
            "{} missing from env --list",
            setting.name
        );
        assert!(
            list.contains(setting.doc),
            "{}'s doc missing from env --list",
            setting.name
        );
    }
}

#[test]
fn usage_doc_holds_the_settings_table_exactly() {
    let markdown = vramguard_env(&["--markdown"]);
    for setting in SETTINGS {
        assert!(
            markdown.contains(&format!("| `{}` |", setting.name)),
            "{}",
            setting.name
        );
        if !setting.default.is_empty() {
            assert!(
                markdown.contains(&format!("`{}`", setting.default)),
                "{}",
                setting.name
            );
        }
        assert!(
            markdown.contains(&setting.doc.replace('|', "\\|")),
            "{}",
            setting.name
        );
    }
    let doc = std::fs::read_to_string(repo().join("docs/usage.md")).unwrap();
    let begin = doc
        .find("<!-- BEGIN settings")
        .expect("docs/usage.md has the settings markers");
    let body_start = begin + doc[begin..].find('\n').unwrap() + 1;
    let end = doc
        .find("<!-- END settings -->")
        .expect("docs/usage.md has the end marker");
    assert_eq!(
        &doc[body_start..end],
        markdown,
        "docs/usage.md's settings section is out of date: replace it with `vramguard env --markdown`"
    );
}
