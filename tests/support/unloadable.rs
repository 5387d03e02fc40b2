//! A `libvramguard.so` the dynamic loader cannot load: built from `tests/clients/unloadable.c`
//! against a stub `libc.so.6` that defines the symbol version `GLIBC_2.99`, so loading it fails
//! with "version `GLIBC_2.99' not found", as a library built against a newer glibc than the
//! system's does. Every tool that preloads the guard must then start the program unguarded.
//! Built once per test binary into `<target>/unloadable/<binary>/`. Included with
//! `#[path = "support/unloadable.rs"] mod unloadable;`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds (once) and returns the unloadable library; `target` is the cargo target directory.
pub fn unloadable_library(target: &Path, repo: &Path) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
            let dir = target.join("unloadable").join(name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("stub")).unwrap();
            let map = dir.join("stub.map");
            std::fs::write(
                &map,
                "GLIBC_2.99 { global: vramguard_test_future_symbol; local: *; };\n",
            )
            .unwrap();
            let clients = repo.join("tests/clients");
            let stub = dir.join("stub/libc.so.6");
            cc(Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(&stub)
                .arg(clients.join("unloadable_stub.c"))
                .arg(format!("-Wl,--version-script={}", map.display()))
                .arg("-Wl,-soname,libc.so.6"));
            let library = dir.join("libvramguard.so");
            cc(Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(&library)
                .arg(clients.join("unloadable.c"))
                .arg(&stub));
            // The loader must refuse it here, or the tests that use it prove nothing.
            let out = Command::new("/bin/sh")
                .args(["-c", ":"])
                .env("LD_PRELOAD", &library)
                .output()
                .unwrap();
            assert!(
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains("GLIBC_2.99"),
                "the loader loaded {}: {out:?}",
                library.display()
            );
            library
        })
        .clone()
}

fn cc(command: &mut Command) {
    let out = command.output().expect("cc runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
