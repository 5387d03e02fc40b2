//! Builds the C programs of `benches/c` with the system C compiler (`cc`), for the benchmark
//! harness (`benches/guard`) and the soak suite (`benches/soak`).
//!
//! Each program is built twice, the way the test clients are: linked with `-lcuda` against the
//! simulated driver (`-DVG_DIRECT`, the "direct" path) and plain, loading `libcuda.so.1` with
//! `dlopen` (the "dlsym" and "procaddr" paths). Every build goes to a fresh temporary name and is
//! renamed into place, so concurrent builds (a soak run beside a test) never see a half-written
//! binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The source directory of the C programs.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/c")
}

/// One C program, in its two builds.
#[derive(Debug, Clone)]
pub struct CProgram {
    /// Linked with `-lcuda`: only `--path direct`.
    pub direct: PathBuf,
    /// Loads the driver with `dlopen`: `--path dlsym` and `--path procaddr`.
    pub dynamic: PathBuf,
}

impl CProgram {
    /// The binary that serves driver path `path` ("direct", "dlsym" or "procaddr").
    pub fn for_path(&self, path: &str) -> &Path {
        if path == "direct" {
            &self.direct
        } else {
            &self.dynamic
        }
    }
}

/// Builds `benches/c/<source>.c` into `out_dir` as `<name>-direct` and `<name>`, linking the
/// direct build against the `libcuda.so` found in `libcuda_dir`. Panics with the compiler's
/// output when a build fails.
pub fn build(source: &str, name: &str, out_dir: &Path, libcuda_dir: &Path) -> CProgram {
    std::fs::create_dir_all(out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    let src = source_dir().join(format!("{source}.c"));
    let direct = out_dir.join(format!("{name}-direct"));
    let dynamic = out_dir.join(name);
    let lib_dir = format!("-L{}", libcuda_dir.display());
    compile(
        &[&src],
        &direct,
        &["-DVG_DIRECT", &lib_dir, "-lcuda", "-ldl"],
    );
    compile(&[&src], &dynamic, &["-ldl"]);
    CProgram { direct, dynamic }
}

/// Builds the test suite's workload client (`tests/clients/workload.c`) with the driver binding
/// `tests/clients/<binding>.c` (`bind_dlsym`, `bind_procaddr`: the bindings that `dlopen` the
/// driver) into `out_dir/<name>`, and returns its path.
pub fn build_test_client(binding: &str, name: &str, out_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let workload = clients.join("workload.c");
    let binding = clients.join(format!("{binding}.c"));
    let out = out_dir.join(name);
    compile(&[&workload, &binding], &out, &["-pthread", "-ldl"]);
    out
}

fn compile(sources: &[&Path], out: &Path, link: &[&str]) {
    let temp = out.with_extension(format!("tmp{}", std::process::id()));
    let src = sources.first().copied().unwrap_or(Path::new("?"));
    let output = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&temp)
        .args(sources)
        .args(link)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (install a C compiler: scripts/setup.sh): {e}"));
    if !output.status.success() {
        let _ = std::fs::remove_file(&temp);
        panic!(
            "cc failed to build {} from {}:\n{}",
            out.display(),
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&temp, out)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", temp.display(), out.display()));
}
