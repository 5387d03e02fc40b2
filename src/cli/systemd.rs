//! `vramguard env --systemd UNIT [--install | --remove] [--root DIR]`: the drop-in that preloads
//! the guard into a systemd service (an inference server that holds a model all day, a batch
//! worker), printed, written to `/etc/systemd/system/UNIT.d/vramguard.conf`, or removed again.
//!
//! systemd reads a unit's drop-ins after the unit itself, so the service starts with the guard
//! options as `VRAMGUARD_*` variables, and with `LD_PRELOAD` naming the library first when a start
//! check (`ExecStartPre=`, `vramguard preload-check`) could load it: a library that cannot load
//! here never stops the service, which then starts unguarded with one line in its journal. Nothing happens until `systemctl daemon-reload` and a restart of the service,
//! which the output names.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::GuardOptions;
use super::atomic_file;
use super::library;

/// The drop-in's file name inside `UNIT.d/`.
const DROP_IN_NAME: &str = "vramguard.conf";
/// Where system units' drop-ins live, relative to the root.
const SYSTEM_UNITS: &str = "etc/systemd/system";
/// Unit types that are not services: they start no program the guard could be preloaded into.
const OTHER_UNIT_TYPES: &[&str] = &[
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// The full unit name for `name` (`ollama` -> `ollama.service`), or why it is not a service.
pub fn unit_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
        && !name.starts_with('.');
    if !valid {
        return Err(format!(
            "{name:?} is not a unit name (letters, digits and :-_.\\@ only)"
        ));
    }
    if let Some((_, suffix)) = name.rsplit_once('.') {
        if suffix == "service" {
            return Ok(name.to_string());
        }
        if OTHER_UNIT_TYPES.contains(&suffix) {
            return Err(format!(
                "{name} is a .{suffix} unit, which starts no program: name the .service it \
                 activates"
            ));
        }
    }
    Ok(format!("{name}.service"))
}

/// A value for `Environment="NAME=VALUE"`: backslashes and quotes escaped, `%` doubled (systemd
/// expands `%` specifiers there, never `$`).
fn environment_value(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
}

/// The drop-in's path under `root`.
pub fn drop_in_path(root: &Path, unit: &str) -> PathBuf {
    root.join(SYSTEM_UNITS)
        .join(format!("{unit}.d"))
        .join(DROP_IN_NAME)
}

/// The commands that make systemd apply a changed drop-in to `unit`.
fn reload_command(unit: &str) -> String {
    format!("systemctl daemon-reload && systemctl restart {unit}")
}

/// Where the start check writes the unit's `LD_PRELOAD` (a directory systemd itself creates
/// empty at every start and removes at every stop, `RuntimeDirectory=`, so no file of an earlier
/// start is ever read).
const PRELOAD_RUNTIME_DIRECTORY: &str = "vramguard-preload/%n";

/// An argument of a systemd command line (`ExecStartPre=`): double-quoted with `\\` and `"`
/// escaped, `%` and `$` doubled (systemd expands specifiers and variables there).
fn exec_argument(text: &str) -> String {
    let escaped = text
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The drop-in's text for `unit`: the guard options as variables, and a start check that puts
/// the library into `LD_PRELOAD` only when it can be loaded (`vramguard preload-check`, run by
/// `vramguard` at `command` as root before every start; its failure never stops the service).
pub fn drop_in(unit: &str, library: &Path, command: &Path, guard: &GuardOptions) -> String {
    let path = drop_in_path(Path::new("/"), unit);
    let short = unit.strip_suffix(".service").unwrap_or(unit);
    let env_file = format!("/run/{PRELOAD_RUNTIME_DIRECTORY}/env");
    let mut text = format!(
        "# vramguard: preloads the guard into {unit}. Written by `vramguard env --systemd {short}`.\n\
         # Install it as {path} (`vramguard env --systemd {short} --install`), then run:\n\
         #   {reload}\n\
         # Undo: `vramguard env --systemd {short} --remove` (or delete the file), then the same command.\n\
         # Before every start, `vramguard preload-check` loads the library once: when it can be loaded,\n\
         # LD_PRELOAD is the library followed by the unit's own LD_PRELOAD; when it cannot, it says why\n\
         # in the unit's journal and the service starts unguarded. The service's user must be able to\n\
         # read the library and write the ledger directory (VRAMGUARD_DIR, /dev/shm/vramguard by\n\
         # default); a unit with PrivateDevices=yes or PrivateIPC=yes gets a /dev/shm of its own, hence\n\
         # a ledger of its own: set VRAMGUARD_DIR to a shared directory there.\n\
         [Service]\n\
         RuntimeDirectory={PRELOAD_RUNTIME_DIRECTORY}\n\
         ExecStartPre=-+{command} preload-check {library} --env-file {env_file}\n\
         EnvironmentFile=-{env_file}\n",
        path = path.display(),
        reload = reload_command(unit),
        command = exec_argument(&command.to_string_lossy()),
        library = exec_argument(&library.to_string_lossy()),
    );
    for (name, value) in guard.variables() {
        text.push_str(&format!(
            "Environment=\"{name}={}\"\n",
            environment_value(&value)
        ));
    }
    text
}

/// The `vramguard` executable the drop-in's start check runs: this one.
fn this_command() -> Result<PathBuf, String> {
    std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .map_err(|e| format!("cannot find the vramguard executable: {e}"))
}

/// Prints the error for `vramguard env --systemd` and returns the exit code.
fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("vramguard env: {message}");
    1
}

/// `vramguard env --systemd UNIT [options]`: prints the drop-in.
pub fn print(unit: &str, guard: &GuardOptions) -> i32 {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(e) => return fail(e),
    };
    let command = match this_command() {
        Ok(command) => command,
        Err(e) => return fail(e),
    };
    match library::locate() {
        Ok(library) => {
            print!("{}", drop_in(&unit, &library, &command, guard));
            0
        }
        Err(e) => fail(e),
    }
}

/// `vramguard env --systemd UNIT --install [--root DIR] [options]`: writes the drop-in.
pub fn install(unit: &str, guard: &GuardOptions, root: &Path) -> i32 {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(e) => return fail(e),
    };
    let library = match library::locate() {
        Ok(library) => library,
        Err(e) => return fail(e),
    };
    let command = match this_command() {
        Ok(command) => command,
        Err(e) => return fail(e),
    };
    let path = drop_in_path(root, &unit);
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| {
            atomic_file::write(
                &path,
                drop_in(&unit, &library, &command, guard).as_bytes(),
                0o644,
            )
        });
    if let Err(e) = written {
        return fail(format!("cannot write {}: {e}", path.display()));
    }
    println!("vramguard: wrote {}", path.display());
    println!(
        "vramguard: {} starts with the guard after: {}",
        unit,
        reload_command(&unit)
    );
    0
}

/// `vramguard env --systemd UNIT --remove [--root DIR]`: deletes the drop-in (and its directory
/// when nothing else is in it).
pub fn remove(unit: &str, root: &Path) -> i32 {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(e) => return fail(e),
    };
    let path = drop_in_path(root, &unit);
    match fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = fs::remove_dir(dir); // only succeeds when empty
            }
            println!("vramguard: removed {}", path.display());
            println!(
                "vramguard: {} starts without the guard after: {}",
                unit,
                reload_command(&unit)
            );
            0
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("vramguard: {} has no vramguard drop-in", unit);
            0
        }
        Err(e) => fail(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_become_services_or_are_refused() {
        assert_eq!(unit_name("ollama").unwrap(), "ollama.service");
        assert_eq!(unit_name("vllm@gpu0").unwrap(), "vllm@gpu0.service");
        assert_eq!(unit_name("a.b.service").unwrap(), "a.b.service");
        assert_eq!(unit_name("tgi-1.5").unwrap(), "tgi-1.5.service");
        assert!(unit_name("nightly.timer").unwrap_err().contains(".service"));
        for bad in ["", "../etc", "a b", "x/y", ".hidden"] {
            assert!(unit_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_are_escaped_for_systemd() {
        assert_eq!(environment_value(r#"/a b/"q"\%"#), r#"/a b/\"q\"\\%%"#);
    }
}
