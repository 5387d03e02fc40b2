//! `vramguard env --slurm [--output FILE]`: the Slurm TaskProlog that guards every task of a job
//! and holds it to its share of the card (its `gres/shard` shards over the GPU's, times the
//! card's budget; the whole card with `gres/gpu`). The script is `scripts/slurm-task-prolog.sh`
//! with the library's path, the ledger directory and the guard options filled in; what it does
//! at each task start, and the `slurm.conf` lines that run it, are in `docs/slurm.md`.

use std::path::Path;

use vramguard_core::settings::Config;

use super::GuardOptions;
use super::ShellArg;
use super::atomic_file;
use super::env::quote;
use super::library;

/// The script, with `@VRAMGUARD_...@` placeholders.
const TEMPLATE: &str = include_str!("../../scripts/slurm-task-prolog.sh");
/// The line of the template that the guard options replace.
const OPTIONS_LINE: &str = "# @VRAMGUARD_OPTIONS@\n";

/// A path the script can export: absolute, and on one line (slurmd takes an exported value to
/// the end of its line).
fn checked_path(what: &str, path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{what} {} is not UTF-8", path.display()))?;
    if !path.is_absolute() {
        return Err(format!("{what} {text} must be an absolute path"));
    }
    if text.contains(['\n', '\r']) {
        return Err(format!("{what} {text:?} contains a line break"));
    }
    Ok(text.to_string())
}

/// The TaskProlog for the library at `library` and the node's ledger `ledger_dir`, exporting the
/// guard options too (`--limit` is the prolog's own business: it is not among them).
pub fn prolog(library: &Path, ledger_dir: &Path, guard: &GuardOptions) -> Result<String, String> {
    let library = checked_path("the library", library)?;
    let ledger_dir = checked_path("the ledger directory", ledger_dir)?;
    let mut options = String::new();
    for (name, value) in guard.variables() {
        if name == "VRAMGUARD_LIMIT" {
            continue;
        }
        let line = format!("export {name}={value}");
        options.push_str(&format!("printf '%s\\n' {}\n", quote(&line, ShellArg::Sh)));
    }
    if !TEMPLATE.contains(OPTIONS_LINE) {
        return Err("the TaskProlog template lost its options line".to_string());
    }
    Ok(TEMPLATE
        .replace("'@VRAMGUARD_LIBRARY@'", &quote(&library, ShellArg::Sh))
        .replace("'@VRAMGUARD_DIR@'", &quote(&ledger_dir, ShellArg::Sh))
        .replace(OPTIONS_LINE, &options))
}

/// `vramguard env --slurm [--output FILE] [options]`: prints the TaskProlog, or writes it (mode
/// 0755, atomically) and says which `slurm.conf` line runs it.
pub fn slurm(output: Option<&Path>, guard: &GuardOptions) -> i32 {
    let fail = |message: String| {
        eprintln!("vramguard env: {message}");
        1
    };
    let library = match library::locate() {
        Ok(library) => library,
        Err(e) => return fail(e.to_string()),
    };
    let ledger_dir = Config::from_env().0.dir;
    let text = match prolog(&library, &ledger_dir, guard) {
        Ok(text) => text,
        Err(e) => return fail(e),
    };
    let Some(path) = output else {
        print!("{text}");
        return 0;
    };
    if let Err(e) = atomic_file::write(path, text.as_bytes(), 0o755) {
        return fail(format!("cannot write {}: {e}", path.display()));
    }
    println!("vramguard: wrote {}", path.display());
    println!(
        "vramguard: on every node, slurm.conf needs TaskProlog={} (and GresTypes=gpu,shard for \
         shards; see docs/slurm.md)",
        path.display()
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let guard = GuardOptions {
            policy: Some(super::super::PolicyArg::Wait),
            limit: Some("1GiB".to_string()),
            ..GuardOptions::default()
        };
        let text = prolog(
            Path::new("/opt/it's/libvramguard.so"),
            Path::new("/dev/shm/vramguard"),
            &guard,
        )
        .unwrap();
        assert!(!text.contains("@VRAMGUARD"), "{text}");
        assert!(text.contains(r"_VRAMGUARD_LIBRARY='/opt/it'\''s/libvramguard.so'"));
        assert!(text.contains("printf '%s\\n' 'export VRAMGUARD_POLICY=wait'\n"));
        assert!(!text.contains("VRAMGUARD_LIMIT=1GiB"));
    }

    #[test]
    fn paths_the_script_cannot_export_are_refused() {
        let guard = GuardOptions::default();
        let dir = Path::new("/dev/shm/vramguard");
        assert!(prolog(Path::new("lib/libvramguard.so"), dir, &guard).is_err());
        assert!(prolog(Path::new("/a\nb/libvramguard.so"), dir, &guard).is_err());
    }
}
