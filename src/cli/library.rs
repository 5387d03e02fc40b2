//! Where `libvramguard.so` is, and how it joins a program's `LD_PRELOAD`.
//!
//! Without configuration the library is found, in this order: `$VRAMGUARD_LIBRARY`; next to the
//! `vramguard` executable (`target/release/` in a build); `<exe dir>/../lib/vramguard/` (the layout
//! `scripts/install.sh` creates); the `vramguard` Python package that the wheel installs beside the
//! executable (`<exe dir>/../lib/python3.X/site-packages/vramguard/`, `dist-packages` on Debian's
//! system Python). `scripts/vramguard-run` searches the first three.

use std::fmt;
use std::path::{Path, PathBuf};

/// The library's file name.
pub const LIBRARY_NAME: &str = "libvramguard.so";

/// The library could not be found; names every place searched.
#[derive(Debug)]
pub struct LibraryNotFound {
    searched: Vec<PathBuf>,
    from_variable: bool,
}

impl fmt::Display for LibraryNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_variable {
            write!(
                f,
                "VRAMGUARD_LIBRARY names {}, which is not a file",
                self.searched[0].display()
            )?;
            return Ok(());
        }
        write!(f, "{LIBRARY_NAME} not found; searched:")?;
        for place in &self.searched {
            write!(f, " {}", place.display())?;
        }
        write!(
            f,
            ". Install it (pip install of the vramguard wheel, or scripts/install.sh), build it (cargo \
             build --release --workspace), or set VRAMGUARD_LIBRARY to its path"
        )
    }
}

impl std::error::Error for LibraryNotFound {}

/// The places searched, in order, when `VRAMGUARD_LIBRARY` is not set.
fn default_places() -> Vec<PathBuf> {
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let prefix = exe_dir.parent().unwrap_or(&exe_dir);
    let mut places = vec![
        exe_dir.join(LIBRARY_NAME),
        prefix.join("lib").join("vramguard").join(LIBRARY_NAME),
    ];
    places.extend(python_package_places(&prefix.join("lib")));
    places
}

/// Where the wheel puts the library for an executable installed into `<prefix>/bin`: the package
/// directory in every `python*/{site,dist}-packages` under `<prefix>/lib`, in name order (a
/// virtualenv, `pip install --user` and a system `pip install` all use this layout).
fn python_package_places(lib: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return Vec::new();
    };
    let mut pythons: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python"))
        .map(|entry| entry.path())
        .collect();
    pythons.sort();
    pythons
        .iter()
        .flat_map(|python| {
            ["site-packages", "dist-packages"]
                .map(|packages| python.join(packages).join("vramguard").join(LIBRARY_NAME))
        })
        .collect()
}

/// Finds the library and returns its absolute, canonical path.
pub fn locate() -> Result<PathBuf, LibraryNotFound> {
    if let Some(value) = std::env::var_os("VRAMGUARD_LIBRARY").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return match path.canonicalize() {
            Ok(found) if found.is_file() => Ok(found),
            _ => Err(LibraryNotFound {
                searched: vec![path],
                from_variable: true,
            }),
        };
    }
    let places = default_places();
    for place in &places {
        if let Ok(found) = place.canonicalize()
            && found.is_file()
        {
            return Ok(found);
        }
    }
    Err(LibraryNotFound {
        searched: places,
        from_variable: false,
    })
}

/// `LD_PRELOAD` with `library` first and every other copy of the guard removed; the user's own
/// entries keep their order. The loader accepts spaces and colons as separators; the result uses
/// colons.
pub fn compose_preload(library: &Path, existing: Option<&str>) -> String {
    let ours = library.to_string_lossy();
    let mut entries = vec![ours.to_string()];
    let existing = existing.unwrap_or("");
    for entry in existing.split([':', ' ']).filter(|e| !e.is_empty()) {
        let is_guard = entry == ours
            || Path::new(entry)
                .file_name()
                .is_some_and(|n| n == LIBRARY_NAME);
        if !is_guard && !entries.iter().any(|e| e == entry) {
            entries.push(entry.to_string());
        }
    }
    entries.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_goes_first_and_only_once() {
        let lib = Path::new("/opt/vg/libvramguard.so");
        assert_eq!(compose_preload(lib, None), "/opt/vg/libvramguard.so");
        assert_eq!(compose_preload(lib, Some("")), "/opt/vg/libvramguard.so");
        assert_eq!(
            compose_preload(lib, Some("/a.so")),
            "/opt/vg/libvramguard.so:/a.so"
        );
        assert_eq!(
            compose_preload(
                lib,
                Some("/a.so /b.so:/opt/vg/libvramguard.so:/old/libvramguard.so")
            ),
            "/opt/vg/libvramguard.so:/a.so:/b.so"
        );
        assert_eq!(
            compose_preload(lib, Some("/a.so:/a.so")),
            "/opt/vg/libvramguard.so:/a.so"
        );
    }
}
