//! `vramguard env`: the shell lines that put the guard in place and the table of `VRAMGUARD_*`
//! settings (plain, or as the Markdown section of `docs/usage.md`, which a test keeps identical to
//! this output). Installing the guard into a virtualenv is `venv.rs`, into a systemd service
//! `systemd.rs`.

use std::path::Path;

use vramguard_core::settings::SETTINGS;

use super::library;
use super::preload_check;
use super::{GuardOptions, ShellArg};

/// Quotes `text` for `shell` in single quotes: an embedded quote is closed, escaped and reopened
/// for sh; quotes and backslashes are backslash-escaped for fish.
pub(super) fn quote(text: &str, shell: ShellArg) -> String {
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

/// `vramguard env [--shell sh|fish] [options]`. A library that cannot be loaded here is left
/// out of the lines (one warning on stderr): the shell that runs them must keep starting
/// programs.
pub fn print_lines(shell: ShellArg, guard: &GuardOptions) -> i32 {
    match library::locate() {
        Ok(lib) => match preload_check::check(&lib) {
            Ok(()) => {
                print!("{}", lines(shell, &lib, guard));
                0
            }
            Err(reason) => {
                eprintln!(
                    "{}",
                    preload_check::warning(
                        "vramguard env",
                        &lib,
                        &reason,
                        "every program of the shell that runs these lines"
                    )
                );
                0
            }
        },
        Err(e) => {
            eprintln!("vramguard env: {e}");
            1
        }
    }
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
    fn quotes_survive_both_shells() {
        assert_eq!(quote("it's", ShellArg::Sh), r"'it'\''s'");
        assert_eq!(quote("it's", ShellArg::Fish), r"'it\'s'");
    }
}
