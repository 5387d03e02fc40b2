//! `vramguard env --venv PATH [--remove]`: puts the guard into a virtualenv, or takes it out
//! again completely.
//!
//! Two pieces, both marked as vramguard's:
//! - a start-up hook in the virtualenv's `site-packages` (`_vramguard.pth`, which imports
//!   `_vramguard_hook.py`, written from `scripts/venv_hook.py`): every interpreter of the
//!   virtualenv, however it is started (`bin/python` directly, `python -m`, a Jupyter kernel,
//!   `subprocess`, multiprocessing workers), restarts itself once with the library preloaded when
//!   it is not loaded yet;
//! - a block at the end of `bin/activate` (and `bin/activate.fish`) that preloads the library in
//!   the activated shell, so that the programs it starts that are not Python are guarded too;
//!   `deactivate` restores `LD_PRELOAD`.
//!
//! A conda environment (a prefix with `conda-meta/` and no `pyvenv.cfg`) gets the same hook, and
//! conda's activation hooks instead of the activate blocks (`conda.rs`).
//!
//! The hook is compiled to bytecode at install with the virtualenv's interpreter. Removal deletes
//! the hook, its bytecode, and the blocks with the blank line installed before them, so every
//! file is as it was before the first install.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::ShellArg;
use super::conda;
use super::env::quote;
use super::library;

/// The virtualenv snippet for bash and zsh (`bin/activate`), with `@VRAMGUARD_LIBRARY@` to fill.
const ACTIVATE_SH: &str = include_str!("../../scripts/activate.sh");
/// The virtualenv snippet for fish (`bin/activate.fish`).
const ACTIVATE_FISH: &str = include_str!("../../scripts/activate.fish");
/// The start-up hook's module, with `"@VRAMGUARD_LIBRARY@"` to fill.
const HOOK_TEMPLATE: &str = include_str!("../../scripts/venv_hook.py");
const PLACEHOLDER: &str = "@VRAMGUARD_LIBRARY@";
/// The markers around the installed block.
const BEGIN_MARKER: &str = "# >>> vramguard >>>";
const END_MARKER: &str = "# <<< vramguard <<<";
/// The `.pth` file that imports the hook (site.py runs its `import` line at every start; the
/// leading underscore sorts it before almost every other `.pth` file, so little runs before it).
pub const HOOK_PTH: &str = "_vramguard.pth";
/// The hook's module name, and its file.
pub const HOOK_MODULE: &str = "_vramguard_hook";
const HOOK_PTH_LINE: &str = "import _vramguard_hook\n";

/// The activate snippet `template` with the library's path filled in.
fn snippet(template: &str, library: &Path, shell: ShellArg) -> String {
    let quoted = quote(&library.to_string_lossy(), shell);
    template.replace(&format!("'{PLACEHOLDER}'"), &quoted)
}

/// The hook's module with the library's path filled in (a JSON string is a Python literal).
fn hook_module(library: &str) -> String {
    let literal = serde_json::to_string(library).expect("a string serialises");
    HOOK_TEMPLATE.replace(&format!("\"{PLACEHOLDER}\""), &literal)
}

/// `script` without any vramguard block (nor the blank line installed before it).
fn without_block(script: &str) -> String {
    let mut kept = String::new();
    let mut inside = false;
    for line in script.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == BEGIN_MARKER {
            inside = true;
            if kept.ends_with("\n\n") {
                kept.pop();
            }
        } else if trimmed == END_MARKER && inside {
            inside = false;
        } else if !inside {
            kept.push_str(line);
        }
    }
    kept
}

/// `script` without any vramguard block, then a blank line and `block`.
fn with_block(script: &str, block: &str) -> String {
    let mut out = without_block(script);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(block);
    out
}

/// Replaces `path`'s text with `edit(text)`; whether it changed.
fn edit_file(path: &Path, edit: impl Fn(&str) -> String) -> io::Result<bool> {
    let old = fs::read_to_string(path)?;
    let new = edit(&old);
    if new == old {
        return Ok(false);
    }
    fs::write(path, new)?;
    Ok(true)
}

/// The virtualenv's `site-packages` directories (`lib/python3.X/site-packages`).
pub fn site_packages(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}

/// The activate scripts and the snippet each gets.
fn activate_scripts(venv: &Path) -> [(PathBuf, &'static str, ShellArg); 2] {
    [
        (venv.join("bin").join("activate"), ACTIVATE_SH, ShellArg::Sh),
        (
            venv.join("bin").join("activate.fish"),
            ACTIVATE_FISH,
            ShellArg::Fish,
        ),
    ]
}

/// The virtualenv or conda environment at `venv`, or the message saying why it is neither.
fn check_venv(venv: &Path) -> Result<Vec<PathBuf>, String> {
    let packages = site_packages(venv);
    let environment = venv.join("pyvenv.cfg").is_file() || conda::is_conda(venv);
    if !environment || packages.is_empty() {
        return Err(format!(
            "{} is neither a virtualenv nor a conda environment (no pyvenv.cfg or conda-meta/, \
             and lib/python*/site-packages); create one with `python3 -m venv {}`",
            venv.display(),
            venv.display()
        ));
    }
    Ok(packages)
}

/// Writes the hook into one `site-packages`; whether anything changed.
fn install_hook(packages: &Path, module: &str) -> io::Result<bool> {
    let module_path = packages.join(format!("{HOOK_MODULE}.py"));
    let pth_path = packages.join(HOOK_PTH);
    let unchanged = fs::read_to_string(&module_path).is_ok_and(|m| m == module)
        && fs::read_to_string(&pth_path).is_ok_and(|p| p == HOOK_PTH_LINE);
    if unchanged {
        return Ok(false);
    }
    // The module first: a .pth whose module is missing would make every start print an error.
    fs::write(&module_path, module)?;
    remove_bytecode(packages)?;
    // A new hook says anew why it stands aside, if it does.
    remove_notices(packages)?;
    compile_hook(venv_python(packages), &module_path);
    fs::write(&pth_path, HOOK_PTH_LINE)?;
    Ok(true)
}

/// The interpreter of the virtualenv whose `site-packages` is `packages`
/// (`<venv>/lib/python3.X/site-packages` -> `<venv>/bin/python`).
fn venv_python(packages: &Path) -> PathBuf {
    let venv = packages.ancestors().nth(3).unwrap_or(packages);
    venv.join("bin").join("python")
}

/// Compiles the hook's module to bytecode with the virtualenv's own interpreter, so that every
/// start loads it compiled, even where Python writes no bytecode itself
/// (`PYTHONDONTWRITEBYTECODE`, common in container images, or a read-only virtualenv). Without
/// it the hook still works, compiled at each start (a few milliseconds).
fn compile_hook(python: PathBuf, module: &Path) {
    let compiled = std::process::Command::new(&python)
        .args([
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
        ])
        .arg(module)
        .env("VRAMGUARD_DISABLE", "1")
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .output();
    match compiled {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "vramguard env: could not compile the hook with {} (it is compiled at each start \
             instead): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => eprintln!(
            "vramguard env: could not run {} to compile the hook (it is compiled at each start \
             instead): {e}",
            python.display()
        ),
    }
}

/// Removes what Python compiled from the hook (`__pycache__/_vramguard_hook.*.pyc`).
fn remove_bytecode(packages: &Path) -> io::Result<()> {
    let cache = packages.join("__pycache__");
    let Ok(entries) = fs::read_dir(&cache) else {
        return Ok(());
    };
    let prefix = format!("{HOOK_MODULE}.");
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path())?;
        }
    }
    // Python created the directory for us when it was empty before: leave nothing behind.
    if fs::read_dir(&cache).is_ok_and(|mut rest| rest.next().is_none()) {
        let _ = fs::remove_dir(&cache);
    }
    Ok(())
}

/// Removes the notices the hook left to say only once why it stands aside
/// (`_vramguard_hook.*.notice`, written by `scripts/venv_hook.py`).
fn remove_notices(packages: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(packages) else {
        return Ok(());
    };
    let prefix = format!("{HOOK_MODULE}.");
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".notice") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Removes the hook from one `site-packages`; whether anything was there.
fn remove_hook(packages: &Path) -> io::Result<bool> {
    let mut removed = false;
    for name in [HOOK_PTH.to_string(), format!("{HOOK_MODULE}.py")] {
        match fs::remove_file(packages.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    remove_bytecode(packages)?;
    remove_notices(packages)?;
    Ok(removed)
}

/// `vramguard env --venv PATH`.
pub fn install(venv: &Path) -> i32 {
    let library = match library::locate() {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("vramguard env: {e}");
            return 1;
        }
    };
    let Some(library_text) = library.to_str() else {
        eprintln!(
            "vramguard env: the library's path {} is not UTF-8, which the hook cannot name",
            library.display()
        );
        return 1;
    };
    let packages = match check_venv(venv) {
        Ok(packages) => packages,
        Err(message) => {
            eprintln!("vramguard env: {message}");
            return 1;
        }
    };
    let module = hook_module(library_text);
    for dir in &packages {
        match install_hook(dir, &module) {
            Ok(true) => println!(
                "vramguard: installed the start-up hook into {}",
                dir.join(HOOK_PTH).display()
            ),
            Ok(false) => println!("vramguard: {} already has the hook", dir.display()),
            Err(e) => {
                eprintln!(
                    "vramguard env: cannot write the hook into {}: {e}",
                    dir.display()
                );
                return 1;
            }
        }
    }
    // A conda environment's bin/activate (in its base environment) is conda's own script:
    // conda's activation hooks take the block's place there.
    let activate = if conda::is_conda(venv) {
        Vec::new()
    } else {
        activate_scripts(venv).to_vec()
    };
    for (script, template, shell) in activate {
        if !script.is_file() {
            continue;
        }
        let block = snippet(template, &library, shell);
        match edit_file(&script, |old| with_block(old, &block)) {
            Ok(true) => println!("vramguard: installed the guard into {}", script.display()),
            Ok(false) => println!("vramguard: {} already has the guard", script.display()),
            Err(e) => {
                eprintln!("vramguard env: cannot update {}: {e}", script.display());
                return 1;
            }
        }
    }
    if conda::is_conda(venv) {
        match conda::install(venv, &library, snippet) {
            Ok(changed) => {
                for path in changed {
                    println!("vramguard: installed the guard into {}", path.display());
                }
            }
            Err(e) => {
                eprintln!("vramguard env: cannot write conda's activation hooks: {e}");
                return 1;
            }
        }
    }
    println!(
        "vramguard: every interpreter of {} now starts with {} preloaded, however it is started; \
         `vramguard env --venv {} --remove` undoes it",
        venv.display(),
        library.display(),
        venv.display()
    );
    0
}

/// `vramguard env --venv PATH --remove`.
pub fn remove(venv: &Path) -> i32 {
    let packages = match check_venv(venv) {
        Ok(packages) => packages,
        Err(message) => {
            eprintln!("vramguard env: {message}");
            return 1;
        }
    };
    let mut removed_any = false;
    for dir in &packages {
        match remove_hook(dir) {
            Ok(removed) => {
                if removed {
                    println!(
                        "vramguard: removed the start-up hook from {}",
                        dir.display()
                    );
                }
                removed_any |= removed;
            }
            Err(e) => {
                eprintln!(
                    "vramguard env: cannot remove the hook from {}: {e}",
                    dir.display()
                );
                return 1;
            }
        }
    }
    for (script, _, _) in activate_scripts(venv) {
        if !script.is_file() {
            continue;
        }
        match edit_file(&script, without_block) {
            Ok(true) => {
                println!("vramguard: removed the guard from {}", script.display());
                removed_any = true;
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("vramguard env: cannot update {}: {e}", script.display());
                return 1;
            }
        }
    }
    if conda::is_conda(venv) {
        match conda::remove(venv) {
            Ok(removed) => {
                for path in &removed {
                    println!("vramguard: removed the guard from {}", path.display());
                }
                removed_any |= !removed.is_empty();
            }
            Err(e) => {
                eprintln!("vramguard env: cannot remove conda's activation hooks: {e}");
                return 1;
            }
        }
    }
    if !removed_any {
        println!("vramguard: {} had no guard to remove", venv.display());
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_changes_nothing_and_removing_restores_the_script() {
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
        assert_eq!(without_block(&updated), script);
        assert_eq!(without_block(script), script);
    }

    #[test]
    fn the_hook_names_the_library_as_a_python_string() {
        let module = hook_module("/opt/it's \"here\"/libvramguard.so");
        assert!(
            module.contains(r#"LIBRARY = "/opt/it's \"here\"/libvramguard.so""#),
            "{module}"
        );
        assert!(!module.contains(PLACEHOLDER));
    }
}
