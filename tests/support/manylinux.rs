//! What a binary we ship may need of the system it lands on: no glibc symbol version newer than
//! 2.28 (`objdump -T`) and no library outside manylinux_2_28's list (`objdump -p`'s NEEDED), so
//! that it loads wherever the wheel's tag promises (glibc 2.28 or later). Checked on the wheel's
//! binaries (`tests/install_wheel.rs`) and on what `scripts/install.sh` installs
//! (`tests/cli_scripts.rs`). Included with `#[path = "support/manylinux.rs"] mod manylinux;`.

use std::path::Path;
use std::process::Command;

/// The libraries a manylinux_2_28 binary may need (PEP 600's policy for x86_64).
pub const MANYLINUX_LIBRARIES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
];

fn objdump(flag: &str, path: &Path) -> String {
    let output = Command::new("objdump")
        .arg(flag)
        .arg(path)
        .output()
        .expect("objdump runs (binutils; scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "objdump {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The highest `GLIBC_x.y` version an ELF file asks for (`objdump -T`).
pub fn highest_glibc(path: &Path) -> (u32, u32) {
    objdump("-T", path)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or_else(|| panic!("{} asks for no glibc version", path.display()))
}

/// The libraries an ELF file needs (`objdump -p`'s NEEDED lines).
pub fn needed(path: &Path) -> Vec<String> {
    objdump("-p", path)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("NEEDED"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// Asserts that the binary at `path` asks for glibc 2.28 at most and needs only manylinux's
/// libraries.
pub fn assert_manylinux_2_28(path: &Path) {
    let highest = highest_glibc(path);
    assert!(
        highest <= (2, 28),
        "{} needs GLIBC_{}.{}",
        path.display(),
        highest.0,
        highest.1
    );
    for library in needed(path) {
        assert!(
            MANYLINUX_LIBRARIES.contains(&library.as_str()),
            "{} needs {library}, which manylinux_2_28 does not allow",
            path.display()
        );
    }
}
