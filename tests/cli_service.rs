//! `vramguard env --systemd UNIT`: the drop-in that preloads the guard into a service, printed,
//! written under a root of the test's own with `--install`, read by systemd's own parser
//! (`systemd-analyze verify`, no running systemd needed) with the values it was given, and removed
//! again with `--remove`, leaving the root as it was.

#[path = "support/cli.rs"]
mod cli_support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cli_support::*;

/// How long a child may take: only catches a hang.
const DEADLINE: Duration = HANG_GUARD;

fn env_systemd(library: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(vramguard());
    command
        .arg("env")
        .args(args)
        .env("VRAMGUARD_LIBRARY", library);
    run_with_deadline(&mut command, DEADLINE)
}

/// The values of `Environment=` lines of a drop-in, unquoted as systemd does for these (a quoted
/// word, `\"` and `\\` escapes, `%%` for `%`).
fn environment(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Environment=\"")?.strip_suffix('"'))
        .map(|v| {
            let mut out = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '%' => {
                        chars.next();
                        out.push('%');
                    }
                    c => out.push(c),
                }
            }
            out
        })
        .collect()
}

#[test]
fn the_drop_in_is_printed_installed_read_by_systemd_and_removed() {
    let dir = TempDir::new("systemd");
    // A library whose path needs quoting and a `%`, which systemd would expand.
    let library = dir.join("opt/vram guard 100%/libvramguard.so");
    fs::create_dir_all(library.parent().unwrap()).unwrap();
    fs::copy(self::library(), &library).unwrap();
    let root = dir.join("root");
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).unwrap();
    let unit_text = "[Unit]\nDescription=an inference server\n[Service]\nExecStart=/bin/true\n";
    fs::write(units.join("vgserve.service"), unit_text).unwrap();

    let options = [
        "--systemd",
        "vgserve",
        "--policy",
        "wait",
        "--expect",
        "6GiB",
    ];
    let printed = env_systemd(&library, &options);
    assert!(printed.status.success(), "{}", stderr(&printed));
    let text = stdout(&printed);
    assert!(text.contains("\n[Service]\n"), "{text}");
    assert!(
        text.contains("systemctl daemon-reload && systemctl restart vgserve.service"),
        "{text}"
    );
    assert_eq!(
        environment(&text),
        vec![
            "VRAMGUARD_POLICY=wait".to_string(),
            "VRAMGUARD_EXPECT=6GiB".to_string(),
        ]
    );

    // The library joins LD_PRELOAD through the start check (tests/preload_check.rs runs it).
    assert!(
        text.contains("ExecStartPre=-+")
            && text.contains(&format!(
                "preload-check \"{}\"",
                library.display().to_string().replace('%', "%%")
            )),
        "{text}"
    );

    let root_arg = root.to_str().unwrap();
    let installed = env_systemd(
        &library,
        &[&options[..], &["--install", "--root", root_arg]].concat(),
    );
    assert!(installed.status.success(), "{}", stderr(&installed));
    assert!(
        stdout(&installed).contains("systemctl daemon-reload && systemctl restart vgserve.service"),
        "{}",
        stdout(&installed)
    );
    let drop_in = units.join("vgserve.service.d/vramguard.conf");
    assert_eq!(fs::read_to_string(&drop_in).unwrap(), text);

    // systemd's own parser reads the unit with its drop-in and finds nothing wrong in it.
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(units.join("vgserve.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()));
    let checked = run_with_deadline(&mut verify, DEADLINE);
    let complaints = stderr(&checked);
    assert!(
        !complaints.contains("vramguard.conf"),
        "systemd-analyze objects to the drop-in: {complaints}"
    );

    let removed = env_systemd(
        &library,
        &["--systemd", "vgserve", "--remove", "--root", root_arg],
    );
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(
        stdout(&removed).contains("daemon-reload"),
        "{}",
        stdout(&removed)
    );
    assert!(!units.join("vgserve.service.d").exists());
    assert_eq!(
        fs::read_dir(&units).unwrap().count(),
        1,
        "only the unit itself is left"
    );
    assert_eq!(
        fs::read_to_string(units.join("vgserve.service")).unwrap(),
        unit_text
    );
    let again = env_systemd(
        &library,
        &["--systemd", "vgserve", "--remove", "--root", root_arg],
    );
    assert!(
        stdout(&again).contains("has no vramguard drop-in"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn units_that_start_no_program_and_bad_names_are_refused() {
    let library = library();
    for args in [
        ["--systemd", "nightly.timer"],
        ["--systemd", "../etc/passwd"],
    ] {
        let out = env_systemd(&library, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(stdout(&out).is_empty());
    }
    // --install and --remove need --systemd (or --venv for --remove): a usage error.
    let out = env_systemd(&library, &["--install"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env_systemd(&library, &["--remove"]);
    assert_eq!(out.status.code(), Some(2));
}
