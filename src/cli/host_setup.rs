//! `vramguard host-setup`: the hardened ledger directory of a shared machine, made by root for one
//! group (`vramguard_core::ledger::host_setup`), and the `tmpfiles.d` entry that makes the same
//! directory at every boot (`deploy/tmpfiles.d/vramguard.conf` is this output for the defaults).

use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use vramguard_core::ledger::{directory, host_setup};
use vramguard_core::settings::Config;

use super::atomic_file;

/// Where `--tmpfiles --install` writes the entry, under `--root`.
const TMPFILES_PATH: &str = "etc/tmpfiles.d/vramguard.conf";

/// `vramguard host-setup` options.
#[derive(Args, Debug)]
pub struct HostSetupArgs {
    /// The group whose members share the ledger (a name or a number; default: VRAMGUARD_GROUP,
    /// else `video`)
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// The ledger directory (default: VRAMGUARD_DIR, else /dev/shm/vramguard)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print the systemd-tmpfiles entry that makes the same directory at every boot, instead of
    /// making it now
    #[arg(long)]
    pub tmpfiles: bool,
    /// With --tmpfiles: write it to ROOT/etc/tmpfiles.d/vramguard.conf
    #[arg(long, requires = "tmpfiles")]
    pub install: bool,
    /// With --tmpfiles --install: the file system root it is written under
    #[arg(long, value_name = "DIR", requires = "install", default_value = "/")]
    pub root: PathBuf,
}

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("vramguard host-setup: {message}");
    1
}

/// The `tmpfiles.d` entry for `dir` and `group`.
pub fn tmpfiles_entry(dir: &Path, group: &str) -> String {
    format!(
        "# vramguard's ledger directory: root's, for the members of group {group} only (mode 3770:\n\
         # nobody else can read, write, plant or remove anything in it; members cannot remove each\n\
         # other's files). Made at every boot by systemd-tmpfiles; `sudo vramguard host-setup`\n\
         # makes the same now. See docs/ledger.md, \"Who can do what\".\n\
         d {} {:04o} root {group} -\n",
        dir.display(),
        directory::GROUP_DIR_MODE
    )
}

/// `vramguard host-setup [--group G] [--dir DIR] [--tmpfiles [--install [--root R]]]`.
pub fn host_setup(args: &HostSetupArgs) -> i32 {
    let (config, errors) = Config::from_env();
    for error in errors
        .iter()
        .filter(|e| matches!(e.var, "VRAMGUARD_GROUP" | "VRAMGUARD_DIR"))
    {
        eprintln!("vramguard host-setup: {error}");
    }
    let group = args.group.clone().unwrap_or(config.group);
    let dir = args.dir.clone().unwrap_or(config.dir);
    if !dir.is_absolute() {
        return fail(format!(
            "the ledger directory {:?} must be an absolute path",
            dir.display().to_string()
        ));
    }
    if group.trim().is_empty() || group.contains(char::is_whitespace) {
        return fail(format!("{group:?} is not a group name"));
    }
    if args.tmpfiles {
        let entry = tmpfiles_entry(&dir, &group);
        if !args.install {
            print!("{entry}");
            return 0;
        }
        let path = args.root.join(TMPFILES_PATH);
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| atomic_file::write(&path, entry.as_bytes(), 0o644));
        return match written {
            Ok(()) => {
                println!("vramguard host-setup: wrote {}", path.display());
                println!(
                    "vramguard host-setup: the directory is made at every boot; now: \
                     `sudo systemd-tmpfiles --create {}`",
                    Path::new("/").join(TMPFILES_PATH).display()
                );
                0
            }
            Err(e) => fail(format!("cannot write {}: {e}", path.display())),
        };
    }
    if directory::effective_uid() != 0 {
        return fail(
            "only root can make the ledger directory root's: run `sudo vramguard host-setup`",
        );
    }
    let Some(gid) = directory::group_id(&group) else {
        return fail(format!(
            "there is no group {group:?} in /etc/group; create it (`sudo groupadd {group}`) and \
             add the GPU's users to it (`sudo usermod -aG {group} USER`), or name another with \
             --group"
        ));
    };
    match host_setup::set_up(&dir, gid) {
        Ok(done) => {
            for line in &done {
                println!("vramguard host-setup: {line}");
            }
            if done.is_empty() {
                println!(
                    "vramguard host-setup: {} is already set up; nothing changed",
                    dir.display()
                );
            }
            let name = directory::group_name(gid);
            println!(
                "vramguard host-setup: {} is root's, for group {name} (mode {:04o}): members of \
                 {name} share the ledger, nobody else can read, write, plant or remove anything \
                 in it, and their guarded programs say so and follow VRAMGUARD_ON_ERROR",
                dir.display(),
                directory::GROUP_DIR_MODE
            );
            0
        }
        Err(e) => fail(e),
    }
}
