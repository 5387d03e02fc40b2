//! The hardened ledger directory of a shared machine (`vramguard host-setup`): root's, for one
//! group, mode 3770, so that users outside the group can neither read, write, plant nor remove
//! anything in it, and group members cannot remove each other's files (sticky) while every new
//! file gets the directory's group (set-group-ID).
//!
//! Idempotent: it creates the directory if missing (never its parents), then gives it root, the
//! group and the mode through its descriptor, and gives an existing ledger file root, the group
//! and mode 0660. What it finds in the ledger file's place that is not a ledger (a symbolic
//! link, an empty or foreign file planted before first use) is removed. Every change is reported
//! in words; a second run reports that nothing changed.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::directory::{self, Directory, GROUP_DIR_MODE, Owner};
use super::error::LedgerError;
use super::layout::{FILE_NAME, FILE_SIZE, MAGIC, TRUNCATED_MAGIC};

/// Mode of the ledger file in the hardened directory.
pub const GROUP_FILE_MODE: u32 = 0o660;

/// Makes `dir` the hardened ledger directory of group `gid` (the caller must be root) and
/// returns what was done, one line each.
pub fn set_up(dir: &Path, gid: u32) -> Result<Vec<String>, LedgerError> {
    let mut done = Vec::new();
    let mut created = false;
    let directory = match Directory::open(dir, false) {
        Ok(directory) => directory,
        Err(LedgerError::Missing { .. }) => {
            created = true;
            Directory::create_for_group(dir)?
        }
        // A directory another user made (or one writable without the sticky bit) is taken over:
        // opened through its descriptor like any other, then given to root below.
        Err(LedgerError::UnsafeDirectory { .. }) => Directory::open_to_take_over(dir)?,
        Err(error) => return Err(error),
    };
    let dir_error = |source: io::Error| LedgerError::Directory {
        dir: dir.to_owned(),
        source,
    };
    let before = directory.owner().map_err(dir_error)?;
    if (before.uid, before.gid, before.mode) != (0, gid, GROUP_DIR_MODE) {
        directory
            .set_owner_and_mode(0, gid, GROUP_DIR_MODE)
            .map_err(dir_error)?;
        let was = if created {
            String::new()
        } else {
            format!(
                " (was {}, {}, {:04o})",
                directory::user_name(before.uid),
                directory::group_name(before.gid),
                before.mode
            )
        };
        done.push(format!(
            "{} {}: owner {}, group {}, mode {:04o}{was}",
            if created { "created" } else { "changed" },
            dir.display(),
            directory::user_name(0),
            directory::group_name(gid),
            GROUP_DIR_MODE,
        ));
    } else if created {
        done.push(format!("created {}", dir.display()));
    }
    done.extend(set_up_ledger_file(&directory, gid)?);
    Ok(done)
}

/// Gives the ledger file root, the group and mode 0660; removes what is in its place and is not
/// a ledger.
fn set_up_ledger_file(directory: &Directory, gid: u32) -> Result<Vec<String>, LedgerError> {
    let path = directory.path().join(FILE_NAME);
    let io_error = |op: &'static str| {
        let path = path.clone();
        move |source: io::Error| LedgerError::from_io(&path, op, 0, source)
    };
    let entry = match directory.entry(FILE_NAME) {
        Ok(entry) => entry,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("stat")(error)),
    };
    if entry.kind != libc::S_IFREG {
        return remove_planted(directory, &entry, "not a regular file");
    }
    let file = directory
        .open_file(FILE_NAME, false)
        .map_err(io_error("open"))?;
    let meta = file.metadata().map_err(io_error("stat"))?;
    let mut magic = [0u8; 8];
    let magic = match file.read_exact_at(&mut magic, 0) {
        Ok(()) => u64::from_le_bytes(magic),
        Err(_) => 0,
    };
    if meta.len() != FILE_SIZE as u64 || (magic != MAGIC && magic != TRUNCATED_MAGIC) {
        return remove_planted(directory, &entry, "not a vramguard ledger");
    }
    let mut done = Vec::new();
    if (entry.uid, entry.gid, entry.mode) != (0, gid, GROUP_FILE_MODE) {
        use std::os::fd::AsRawFd;
        directory::fchown(file.as_raw_fd(), Some(0), Some(gid)).map_err(io_error("chown"))?;
        directory::set_mode(&file, GROUP_FILE_MODE).map_err(io_error("chmod"))?;
        done.push(format!(
            "changed {}: owner {}, group {}, mode {GROUP_FILE_MODE:04o} (was {}, {}, {:04o})",
            path.display(),
            directory::user_name(0),
            directory::group_name(gid),
            directory::user_name(entry.uid),
            directory::group_name(entry.gid),
            entry.mode
        ));
    }
    if magic == TRUNCATED_MAGIC {
        done.push(format!(
            "{}: marked truncated (its content was lost while in use); remove it once no guarded \
             program runs",
            path.display()
        ));
    }
    Ok(done)
}

fn remove_planted(
    directory: &Directory,
    entry: &Owner,
    what: &str,
) -> Result<Vec<String>, LedgerError> {
    let path = directory.path().join(FILE_NAME);
    directory
        .remove(FILE_NAME)
        .map_err(|source| LedgerError::from_io(&path, "remove", 0, source))?;
    Ok(vec![format!(
        "removed {} ({what}, made by {}): the next guarded program creates the ledger",
        path.display(),
        directory::user_name(entry.uid)
    )])
}
