//! `vramguard env`: the shell lines that put the guard in place, their installation into a
//! virtualenv, and the table of `VRAMGUARD_*` settings (plain, or as the Markdown section of
//! `docs/usage.md`, which a test keeps identical to this output).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use vramguard_core::settings::SETTINGS;

use super::library;
use super::{GuardOptions, ShellArg};

/// The virtualenv snippet for bash and zsh (`bin/activate`), with `@VRAMGUARD_LIBRARY@` to fill.
const ACTIVATE_SH: &str = include_str!("../../scripts/activate.sh");
/// The virtualenv snippet for fish (`bin/activate.fish`).
const ACTIVATE_FISH: &str = include_str!("../../scripts/activate.fish");
const PLACEHOLDER: &str = "@VRAMGUARD_LIBRARY@";
/// The markers around the installed block.
const BEGIN_MARKER: &str = "# >>> vramguard >>>";
const END_MARKER: &str = "# <<< vramguard <<<";

/// Quotes `text` for `shell` in single quotes: an embedded quote is closed, escaped and reopened
/// for sh; quotes and backslashes are backslash-escaped for fish.
fn quote(text: &str, shell: ShellArg) -> String {
    match shell {
        ShellArg::Sh => format!("'{}'", text.replace('\'', r"'\''")),
        ShellArg::Fish => format!("'{}'", text.replace('\\', r"\\").replace('\'', r"\'")),
    }
}

/// The lines for `shell`: prepend the library to `LD_PRELOAD` unless it is there, then export the
/// options given.
pub fn lines(shell: ShellArg, library: &Path, guard: &GuardOptions) -> String {
    let lib = library.to_string_lossy();
    let mut out = String::new();
    match shell {
        ShellArg::Sh => {
            let q = quote(&lib, shell);
            out.push_str(&format!(
                "case \":${{LD_PRELOAD:-}}:\" in *:{q}:*) ;; *) LD_PRELOAD={q}\"${{LD_PRELOAD:+:$LD_PRELOAD}}\"; export LD_PRELOAD ;; esac\n"
            ));
            for (name, value) in guard.variables() {
                out.push_str(&format!("export {name}={}\n", quote(&value, shell)));
            }
        }
        ShellArg::Fish => {
            let q = quote(&lib, shell);
            out.push_str(&format!(
                "if not contains -- {q} (string split -n ':' -- \"$LD_PRELOAD\"); set -gx LD_PRELOAD (string join ':' -- {q} (string split -n ':' -- \"$LD_PRELOAD\")); end\n"
            ));
            for (name, value) in guard.variables() {
                out.push_str(&format!("set -gx {name} {}\n", quote(&value, shell)));
            }
        }
    }
    out
}

/// `vramguard env [--shell sh|fish] [options]`.
pub fn print_lines(shell: ShellArg, guard: &GuardOptions) -> i32 {
    match library::locate() {
        Ok(lib) => {
            print!("{}", lines(shell, &lib, guard));
            0
        }
        Err(e) => {
            eprintln!("vramguard env: {e}");
            1
        }
    }
}

/// The snippet `template` with the library's path filled in.
fn snippet(template: &str, library: &Path, shell: ShellArg) -> String {
    let quoted = quote(&library.to_string_lossy(), shell);
    template.replace(&format!("'{PLACEHOLDER}'"), &quoted)
}

/// `script` without any vramguard block, then `block` appended.
fn with_block(script: &str, block: &str) -> String {
    let mut kept = String::new();
    let mut inside = false;
    for line in script.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == BEGIN_MARKER {
            inside = true;
        } else if trimmed == END_MARKER && inside {
            inside = false;
        } else if !inside {
            kept.push_str(line);
        }
    }
    let mut out = kept.trim_end_matches('\n').to_string();
    out.push_str("\n\n");
    out.push_str(block);
    out
}

/// Installs (or updates) the block in one activate script.
fn install_into(script: &Path, block: &str) -> io::Result<bool> {
    let old = fs::read_to_string(script)?;
    let new = with_block(&old, block);
    if new == old {
        return Ok(false);
    }
    fs::write(script, new)?;
    Ok(true)
}

/// `vramguard env --venv PATH`.
pub fn install_venv(venv: &Path) -> i32 {
    let library = match library::locate() {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("vramguard env: {e}");
            return 1;
        }
    };
    let activate = venv.join("bin").join("activate");
    if !activate.is_file() {
        eprintln!(
            "vramguard env: {} is not a virtualenv (no bin/activate); create one with `python3 -m venv {}`",
            venv.display(),
            venv.display()
        );
        return 1;
    }
    let targets: [(PathBuf, &str, ShellArg); 2] = [
        (activate, ACTIVATE_SH, ShellArg::Sh),
        (
            venv.join("bin").join("activate.fish"),
            ACTIVATE_FISH,
            ShellArg::Fish,
        ),
    ];
    for (script, template, shell) in targets {
        if !script.is_file() {
            continue;
        }
        match install_into(&script, &snippet(template, &library, shell)) {
            Ok(true) => println!("vramguard: installed the guard into {}", script.display()),
            Ok(false) => println!("vramguard: {} already has the guard", script.display()),
            Err(e) => {
                eprintln!("vramguard env: cannot update {}: {e}", script.display());
                return 1;
            }
        }
    }
    println!(
        "vramguard: {} is preloaded while the virtualenv is active; `deactivate` removes it",
        library.display()
    );
    0
}

/// `vramguard env --list`: every setting, its default, what it accepts and does.
pub fn print_settings() -> i32 {
    for setting in SETTINGS {
        let default = if setting.default.is_empty() {
            "(unset)"
        } else {
            setting.default
        };
        println!(
            "{}  [default: {}]  accepts: {}",
            setting.name, default, setting.accepts
        );
        println!("    {}", setting.doc);
    }
    0
}

/// The settings section of `docs/usage.md`.
pub fn settings_markdown() -> String {
    let mut out = String::from(
        "| Variable | Default | Accepts | What it does |\n| --- | --- | --- | --- |\n",
    );
    for setting in SETTINGS {
        let default = if setting.default.is_empty() {
            "(unset)".to_string()
        } else {
            format!("`{}`", setting.default)
        };
        let cell = |text: &str| text.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            setting.name,
            default,
            cell(setting.accepts),
            cell(setting.doc)
        ));
    }
    out
}

/// `vramguard env --markdown`.
pub fn print_settings_markdown() -> i32 {
    print!("{}", settings_markdown());
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_changes_nothing_and_keeps_the_script() {
        let script = "deactivate () {\n  :\n}\nexport VIRTUAL_ENV=/v\n";
        let block = snippet(
            ACTIVATE_SH,
            Path::new("/opt/lib/libvramguard.so"),
            ShellArg::Sh,
        );
        let once = with_block(script, &block);
        assert_eq!(with_block(&once, &block), once);
        assert!(once.starts_with(script));
        assert_eq!(once.matches(BEGIN_MARKER).count(), 1);
        assert!(once.contains("_VRAMGUARD_LIBRARY='/opt/lib/libvramguard.so'"));
        assert!(!once.contains(PLACEHOLDER));
        let moved = snippet(ACTIVATE_SH, Path::new("/new/libvramguard.so"), ShellArg::Sh);
        let updated = with_block(&once, &moved);
        assert!(updated.contains("/new/libvramguard.so") && !updated.contains("/opt/lib/"));
    }

    #[test]
    fn quotes_survive_both_shells() {
        assert_eq!(quote("it's", ShellArg::Sh), r"'it'\''s'");
        assert_eq!(quote("it's", ShellArg::Fish), r"'it\'s'");
    }
}
