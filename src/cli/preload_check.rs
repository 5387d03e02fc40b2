//! Whether `libvramguard.so` can be loaded here, checked before a tool puts it into `LD_PRELOAD`.
//!
//! The dynamic loader stops every program whose preloaded library it cannot load: one built
//! against a newer glibc than this system's ("version `GLIBC_2.34' not found"), one whose
//! dependencies are missing. `vramguard run` and the systemd drop-in's start check
//! (`vramguard preload-check --env-file`) therefore load the library first in a short child (this
//! executable, `--version`, with only that library in `LD_PRELOAD` and the guard disabled): it
//! can be loaded when the child exits 0 and the loader said nothing. When it cannot, they say so
//! once and the program starts unguarded. The shell scripts and the virtualenv hook make the same
//! check with their own means (`scripts/vramguard-run`, `scripts/venv_hook.py`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::atomic_file;
use super::library;

/// How long the child may take before it counts as a library that cannot load (a hang guard:
/// the child normally exits within milliseconds).
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// Checks that `library` can be loaded into programs started from here; the error is the
/// loader's first line, or what became of the child.
pub fn check(library: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("--version")
        .env("LD_PRELOAD", library)
        .env("VRAMGUARD_DISABLE", "1")
        .env("VRAMGUARD_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the check: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_DEADLINE => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "a program with it preloaded did not finish within {}s",
                    PROBE_DEADLINE.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for the check: {e}")),
        }
    };
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let first_line = said.lines().map(str::trim).find(|l| !l.is_empty());
    match (status.success(), first_line) {
        (true, None) => Ok(()),
        (_, Some(line)) => Err(line.to_string()),
        (false, None) => Err(format!("a program with it preloaded failed ({status})")),
    }
}

/// The warning for a library that cannot load: `who` says which program starts unguarded.
pub fn warning(tool: &str, library: &Path, reason: &str, who: &str) -> String {
    let hint = if reason.contains("GLIBC_") {
        ". It was built for a newer glibc than this system's: install the wheel or \
         scripts/install.sh's build (glibc 2.28)"
    } else {
        ""
    };
    format!(
        "{tool}: {} cannot be loaded here ({reason}); {who} starts unguarded{hint}",
        library.display()
    )
}

/// `vramguard preload-check [LIBRARY] [--env-file FILE]`: the library given, else the one found.
pub fn preload_check_command(library: Option<PathBuf>, env_file: Option<&Path>) -> i32 {
    let library = match library {
        Some(path) => path,
        None => match library::locate() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("vramguard preload-check: {e}");
                return 1;
            }
        },
    };
    preload_check(&library, env_file)
}

/// `vramguard preload-check LIBRARY [--env-file FILE]`: exits 0 when the library can be loaded
/// here, else says why and exits 1. With `--env-file` (the systemd drop-in's start check), writes
/// `LD_PRELOAD=...` (the library first, then the unit's own `LD_PRELOAD`) to FILE when it can, an
/// empty FILE when it cannot, and exits 0 either way: the service always starts.
fn preload_check(library: &Path, env_file: Option<&Path>) -> i32 {
    let checked = check(library);
    let Some(env_file) = env_file else {
        return match checked {
            Ok(()) => {
                println!("vramguard: {} can be loaded here", library.display());
                0
            }
            Err(reason) => {
                eprintln!(
                    "{}",
                    warning(
                        "vramguard",
                        library,
                        &reason,
                        "a program it is preloaded into"
                    )
                );
                1
            }
        };
    };
    let text = match &checked {
        Ok(()) => {
            let existing = std::env::var("LD_PRELOAD").ok();
            let preload = library::compose_preload(library, existing.as_deref());
            format!("LD_PRELOAD={}\n", environment_file_value(&preload))
        }
        Err(reason) => {
            eprintln!("{}", warning("vramguard", library, reason, "the service"));
            String::new()
        }
    };
    let written = env_file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| atomic_file::write(env_file, text.as_bytes(), 0o644));
    if let Err(e) = written {
        // A file left from an earlier start must not preload what was not checked now.
        let _ = std::fs::remove_file(env_file);
        eprintln!(
            "vramguard preload-check: cannot write {}: {e}; the service starts without the guard",
            env_file.display()
        );
    }
    0
}

/// A value for a systemd `EnvironmentFile=` line: double-quoted, with the characters that are
/// special inside double quotes escaped.
fn environment_file_value(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_file_values_are_quoted() {
        assert_eq!(environment_file_value("/a b/x.so"), "\"/a b/x.so\"");
        assert_eq!(environment_file_value("/a\"$`\\"), "\"/a\\\"\\$\\`\\\\\"");
    }
}
