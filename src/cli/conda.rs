//! The shell side of `vramguard env --venv PREFIX` for a conda environment: conda's own
//! activation hooks. `conda activate` sources every `etc/conda/activate.d/*.sh` (`*.fish` in
//! fish) of the environment, `conda deactivate` every `etc/conda/deactivate.d/*.sh`; vramguard
//! puts one file into each: the activated shell preloads the library, the deactivated one gets
//! its `LD_PRELOAD` back. (The interpreters themselves are guarded by the same start-up hook as
//! a virtualenv's, `venv.rs`.)
//!
//! The directories that did not exist before are made and recorded in the first line of the
//! activation script, so that `--remove` takes them away again and leaves the environment as it
//! was, byte for byte.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::ShellArg;

/// The venv's activate snippets serve as conda's activation scripts too (conda defines no
/// `deactivate` function for them to wrap).
const ACTIVATE_SH: &str = include_str!("../../scripts/activate.sh");
const ACTIVATE_FISH: &str = include_str!("../../scripts/activate.fish");
const DEACTIVATE_SH: &str = include_str!("../../scripts/conda-deactivate.sh");
const DEACTIVATE_FISH: &str = include_str!("../../scripts/conda-deactivate.fish");
/// The environment's metadata directory, which makes a prefix a conda environment.
pub const CONDA_META: &str = "conda-meta";
/// conda's activation and deactivation hook directories.
const ACTIVATE_D: &str = "etc/conda/activate.d";
const DEACTIVATE_D: &str = "etc/conda/deactivate.d";
/// The first line of the activation script: the directories vramguard made, relative to the
/// prefix, separated by spaces.
const MADE_PREFIX: &str = "# vramguard made these directories: ";

/// Whether `prefix` is a conda environment (it has `conda-meta/`).
pub fn is_conda(prefix: &Path) -> bool {
    prefix.join(CONDA_META).is_dir()
}

/// One hook file: where it goes (relative to the prefix), its template, and its shell.
struct Hook {
    path: String,
    template: &'static str,
    shell: ShellArg,
}

fn hooks() -> [Hook; 4] {
    [
        Hook {
            path: format!("{ACTIVATE_D}/vramguard.sh"),
            template: ACTIVATE_SH,
            shell: ShellArg::Sh,
        },
        Hook {
            path: format!("{ACTIVATE_D}/vramguard.fish"),
            template: ACTIVATE_FISH,
            shell: ShellArg::Fish,
        },
        Hook {
            path: format!("{DEACTIVATE_D}/vramguard.sh"),
            template: DEACTIVATE_SH,
            shell: ShellArg::Sh,
        },
        Hook {
            path: format!("{DEACTIVATE_D}/vramguard.fish"),
            template: DEACTIVATE_FISH,
            shell: ShellArg::Fish,
        },
    ]
}

/// The directories vramguard recorded as made by it, from the activation script's first line.
fn recorded(prefix: &Path) -> Vec<String> {
    let script = prefix.join(ACTIVATE_D).join("vramguard.sh");
    fs::read_to_string(script)
        .ok()
        .and_then(|text| {
            let first = text.lines().next()?;
            Some(
                first
                    .strip_prefix(MADE_PREFIX)?
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// The directories of the hooks that are missing under `prefix`, outermost first.
fn missing_directories(prefix: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for dir in [ACTIVATE_D, DEACTIVATE_D] {
        let mut partial = PathBuf::new();
        for part in Path::new(dir).components() {
            partial.push(part);
            let text = partial.to_string_lossy().into_owned();
            if !prefix.join(&partial).is_dir() && !missing.contains(&text) {
                missing.push(text);
            }
        }
    }
    missing
}

/// Writes conda's activation and deactivation hooks for `library`; the files written or updated.
pub fn install(
    prefix: &Path,
    library: &Path,
    fill: fn(&str, &Path, ShellArg) -> String,
) -> io::Result<Vec<PathBuf>> {
    let mut made = recorded(prefix);
    for dir in missing_directories(prefix) {
        if !made.contains(&dir) {
            made.push(dir);
        }
    }
    fs::create_dir_all(prefix.join(ACTIVATE_D))?;
    fs::create_dir_all(prefix.join(DEACTIVATE_D))?;
    let mut changed = Vec::new();
    for (index, hook) in hooks().iter().enumerate() {
        let mut text = fill(hook.template, library, hook.shell);
        if index == 0 && !made.is_empty() {
            text = format!("{MADE_PREFIX}{}\n{text}", made.join(" "));
        }
        let path = prefix.join(&hook.path);
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        fs::write(&path, text)?;
        changed.push(path);
    }
    Ok(changed)
}

/// Removes conda's hooks and the directories vramguard made for them (when nothing else has
/// been put there since); the files removed.
pub fn remove(prefix: &Path) -> io::Result<Vec<PathBuf>> {
    let made = recorded(prefix);
    let mut removed = Vec::new();
    for hook in hooks() {
        let path = prefix.join(&hook.path);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // Innermost first; a directory that is not empty stays.
    for dir in made.iter().rev() {
        let _ = fs::remove_dir(prefix.join(dir));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(template: &str, _library: &Path, _shell: ShellArg) -> String {
        template.to_string()
    }

    #[test]
    fn removing_takes_away_only_the_directories_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        fs::create_dir_all(prefix.join("etc/conda/activate.d")).unwrap();
        fs::write(prefix.join("etc/conda/activate.d/other.sh"), "x\n").unwrap();
        install(prefix, Path::new("/l/libvramguard.so"), fill).unwrap();
        // Twice changes nothing and keeps the record.
        assert!(
            install(prefix, Path::new("/l/libvramguard.so"), fill)
                .unwrap()
                .is_empty()
        );
        assert_eq!(recorded(prefix), vec!["etc/conda/deactivate.d".to_string()]);
        assert_eq!(remove(prefix).unwrap().len(), 4);
        assert!(prefix.join("etc/conda/activate.d/other.sh").is_file());
        assert!(!prefix.join("etc/conda/deactivate.d").exists());

        let fresh = tempfile::tempdir().unwrap();
        install(fresh.path(), Path::new("/l/libvramguard.so"), fill).unwrap();
        remove(fresh.path()).unwrap();
        assert_eq!(fs::read_dir(fresh.path()).unwrap().count(), 0);
    }
}
