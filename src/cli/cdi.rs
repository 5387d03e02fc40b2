//! `vramguard cdi`: a Container Device Interface spec (kind `vramguard.dev/guard`, one device
//! `all`) that puts the guard into a container: the library mounted read-only, `LD_PRELOAD`
//! naming it, and the host's ledger directory mounted at the same place with `VRAMGUARD_DIR`
//! naming it. Docker (25+, CDI enabled), Podman and containerd/CRI-O read such specs from
//! `/etc/cdi` and `/var/run/cdi`; `--device vramguard.dev/guard=all` then guards a container.
//!
//! The edits sit in the device (not at the spec's top level) so that the CDI schema checks them
//! all (`tests/cli_cdi.rs` validates the output against the vendored schema).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vramguard_core::settings::Config;

use super::atomic_file;
use super::glibc;
use super::library;

/// The spec's kind (`vramguard.dev/guard`) and its one device (`all`), shared with the device
/// plugin.
pub use vramguard_core::container::{CDI_DEVICE as DEVICE, CDI_KIND as KIND, CONTAINER_LIBRARY};
/// The oldest CDI version with every field the spec uses (env, mounts with options), so that
/// older runtimes accept it too.
pub const CDI_VERSION: &str = "0.3.0";

/// How the spec is written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdiFormat {
    /// YAML (`.yaml` spec files)
    Yaml,
    /// JSON (`.json` spec files)
    Json,
}

/// `vramguard cdi`'s options.
#[derive(clap::Args, Debug)]
pub struct CdiArgs {
    /// Host path of libvramguard.so to mount into containers (default: the library this command
    /// finds). Taken as given, so a DaemonSet can name the node's path from inside its container
    #[arg(long, value_name = "PATH")]
    pub library: Option<PathBuf>,
    /// Host ledger directory the containers share, mounted at the same path (default:
    /// VRAMGUARD_DIR, else /dev/shm/vramguard)
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,
    /// yaml or json (default: json for an --output ending in .json, else yaml)
    #[arg(long, value_enum)]
    pub format: Option<CdiFormat>,
    /// Write the spec to FILE (atomically) instead of stdout, e.g. /etc/cdi/vramguard.yaml
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Put the guard into containers through their /etc/ld.so.preload (this host FILE, written
    /// here, mounted read-only there) instead of LD_PRELOAD, so that the image's and the user's
    /// own LD_PRELOAD still apply, e.g. /etc/cdi/vramguard.ld.so.preload
    #[arg(long, value_name = "FILE")]
    pub preload_list: Option<PathBuf>,
    /// The oldest glibc of the images the spec serves: a library that needs a newer one is
    /// refused, since preloaded it would stop every program of such a container
    #[arg(long, value_name = "X.Y", default_value = "2.28")]
    pub oldest_glibc: String,
}

/// Where a preload list is mounted in the container.
pub const CONTAINER_PRELOAD_LIST: &str = "/etc/ld.so.preload";

/// The preload list's text: the library's path in the container.
pub fn preload_list_text() -> String {
    format!("{CONTAINER_LIBRARY}\n")
}

/// The spec for a host library at `library` and a host ledger directory `ledger_dir`; with
/// `preload_list` (a host file holding [`preload_list_text`]) the guard reaches the container's
/// programs through their `/etc/ld.so.preload`, else through `LD_PRELOAD` (which replaces the
/// image's and the user's own).
pub fn spec(library: &Path, ledger_dir: &Path, preload_list: Option<&Path>) -> Value {
    let ledger = ledger_dir.to_string_lossy();
    let mut env = vec![format!("VRAMGUARD_DIR={ledger}")];
    let mut mounts = vec![
        json!({
            "hostPath": library.to_string_lossy(),
            "containerPath": CONTAINER_LIBRARY,
            "options": ["ro", "nosuid", "nodev", "bind"],
        }),
        json!({
            "hostPath": ledger,
            "containerPath": ledger,
            "options": ["rw", "nosuid", "nodev", "bind"],
        }),
    ];
    match preload_list {
        Some(list) => mounts.push(json!({
            "hostPath": list.to_string_lossy(),
            "containerPath": CONTAINER_PRELOAD_LIST,
            "options": ["ro", "nosuid", "nodev", "bind"],
        })),
        None => env.insert(0, format!("LD_PRELOAD={CONTAINER_LIBRARY}")),
    }
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [{
            "name": DEVICE,
            "containerEdits": {
                "env": env,
                "mounts": mounts,
            },
        }],
    })
}

/// Refuses a library that needs a newer glibc than `oldest`; one that cannot be read here (a
/// DaemonSet names the node's path from inside its container) is taken as given.
fn check_glibc(library: &Path, oldest: &str) -> Result<(), String> {
    let oldest = glibc::parse_version(oldest).map_err(|e| format!("--oldest-glibc: {e}"))?;
    if !library.is_file() {
        return Ok(());
    }
    match glibc::highest_needed(library)? {
        Some(needed) if needed > oldest => Err(format!(
            "{} needs glibc {}.{}, newer than the oldest glibc of the images it is for ({}.{}): \
             preloaded into such a container it stops every program. Install the wheel or use \
             scripts/install.sh (both build for glibc {}.{}), or pass --oldest-glibc {}.{} when \
             every image has that glibc",
            library.display(),
            needed.0,
            needed.1,
            oldest.0,
            oldest.1,
            glibc::OLDEST_SUPPORTED.0,
            glibc::OLDEST_SUPPORTED.1,
            needed.0,
            needed.1,
        )),
        _ => Ok(()),
    }
}

/// `value` as YAML: mappings and sequences in block style, every string double-quoted (a JSON
/// string is a valid YAML double-quoted scalar), so no value can change type or meaning.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    out
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                out.push_str(&format!("{pad}{key}:"));
                write_yaml_child(item, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        // The first line after the dash, the rest aligned with it.
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    scalar => out.push_str(&format!(" {scalar}\n")),
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{scalar}\n")),
    }
}

fn write_yaml_child(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(map) if map.is_empty() => out.push_str(" {}\n"),
        Value::Array(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Object(_) | Value::Array(_) => {
            out.push('\n');
            write_yaml(item, indent + 2, out);
        }
        scalar => out.push_str(&format!(" {scalar}\n")),
    }
}

/// The spec's text in `format`.
fn render(spec: &Value, format: CdiFormat) -> String {
    match format {
        CdiFormat::Json => {
            serde_json::to_string_pretty(spec).expect("a JSON value serialises") + "\n"
        }
        CdiFormat::Yaml => format!(
            "# Container Device Interface spec written by `vramguard cdi`: --device {KIND}={DEVICE}\n\
             # preloads the vramguard guard and shares the host's ledger.\n{}",
            to_yaml(spec)
        ),
    }
}

fn absolute(what: &str, path: &Path) -> Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "{what} {} must be an absolute path",
            path.display()
        ))
    }
}

/// `vramguard cdi [--library PATH] [--ledger-dir DIR] [--format yaml|json] [--output FILE]`.
pub fn cdi(args: &CdiArgs) -> i32 {
    let library = match &args.library {
        Some(path) => path.clone(),
        None => match library::locate() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("vramguard cdi: {e}");
                return 1;
            }
        },
    };
    let ledger_dir = args
        .ledger_dir
        .clone()
        .unwrap_or_else(|| Config::from_env().0.dir);
    let checked = absolute("--library", &library)
        .and_then(|()| absolute("the ledger directory", &ledger_dir))
        .and_then(|()| match &args.preload_list {
            Some(list) => absolute("--preload-list", list),
            None => Ok(()),
        })
        .and_then(|()| check_glibc(&library, &args.oldest_glibc));
    if let Err(e) = checked {
        eprintln!("vramguard cdi: {e}");
        return 1;
    }
    let format =
        args.format
            .unwrap_or_else(|| match args.output.as_deref().and_then(Path::extension) {
                Some(ext) if ext == "json" => CdiFormat::Json,
                _ => CdiFormat::Yaml,
            });
    if let Some(list) = &args.preload_list
        && let Err(e) = atomic_file::write(list, preload_list_text().as_bytes(), 0o644)
    {
        eprintln!("vramguard cdi: cannot write {}: {e}", list.display());
        return 1;
    }
    let text = render(
        &spec(&library, &ledger_dir, args.preload_list.as_deref()),
        format,
    );
    match &args.output {
        Some(path) => match atomic_file::write(path, text.as_bytes(), 0o644) {
            Ok(()) => {
                println!("vramguard: wrote {} ({KIND}={DEVICE})", path.display());
                0
            }
            Err(e) => {
                eprintln!("vramguard cdi: cannot write {}: {e}", path.display());
                1
            }
        },
        None => {
            print!("{text}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_nests_sequences_of_mappings() {
        let value =
            json!({"a": "x", "b": [{"c": "1", "d": ["p", "q"]}, "e"], "f": {}, "g": {"h": true}});
        assert_eq!(
            to_yaml(&value),
            "a: \"x\"\nb:\n  - c: \"1\"\n    d:\n      - \"p\"\n      - \"q\"\n  - \"e\"\nf: {}\ng:\n  h: true\n"
        );
    }
}
