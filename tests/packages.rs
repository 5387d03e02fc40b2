//! The packages keep to their roles: the preload library depends on the core only, never on what
//! the command line needs (argument parsing, serialisation), and the core defines no C symbol.

mod support;

use std::process::Command;

/// The names of the packages `package` depends on when built (normal dependencies, no dev or
/// build ones), from `cargo tree`.
fn dependencies_of(package: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(support::repo())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_preload_library_depends_on_the_core_and_no_command_line_crate() {
    let dependencies = dependencies_of("vramguard-preload");
    assert!(
        dependencies.iter().any(|d| d == "vramguard-core"),
        "{dependencies:?}"
    );
    for cli_only in ["vramguard", "clap", "serde", "serde_json"] {
        assert!(
            !dependencies.iter().any(|d| d == cli_only),
            "libvramguard.so must not build {cli_only}: {dependencies:?}"
        );
    }
}

#[test]
fn the_core_needs_nothing_of_the_command_line() {
    let dependencies = dependencies_of("vramguard-core");
    for cli_only in ["clap", "serde", "serde_json"] {
        assert!(
            !dependencies.iter().any(|d| d == cli_only),
            "the core must not build {cli_only}: {dependencies:?}"
        );
    }
}

#[test]
fn the_grpc_stack_stays_in_the_device_plugin() {
    assert!(
        dependencies_of("vramguard-device-plugin")
            .iter()
            .any(|d| d == "tonic")
    );
    for package in ["vramguard-preload", "vramguard-core", "vramguard"] {
        let dependencies = dependencies_of(package);
        for grpc in [
            "tonic",
            "prost",
            "tokio",
            "hyper",
            "vramguard-device-plugin",
        ] {
            assert!(
                !dependencies.iter().any(|d| d == grpc),
                "{package} must not build {grpc}: {dependencies:?}"
            );
        }
    }
}
