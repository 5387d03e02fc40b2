//! Writing a file so that a reader never sees it half-written: the text goes to a temporary file
//! in the same directory, which is then renamed over the target (a rename within one file system
//! is atomic). Used for `status --output` (read by a node exporter's textfile collector at any
//! moment), `cdi --output` and the systemd drop-in.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The temporary name for `target`: hidden, in the same directory, and not ending in the
/// target's extension (a textfile collector reads only `*.prom`).
fn temporary_for(target: &Path) -> io::Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", target.display()),
        )
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".tmp-{}", std::process::id()));
    Ok(target.with_file_name(temporary))
}

/// Replaces `target` with `contents`, readable by everyone (`mode`, e.g. `0o644`): written to a
/// temporary file beside it, flushed to disk, then renamed over it. On an error the target is
/// untouched and the temporary file removed.
pub fn write(target: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let temporary = temporary_for(target)?;
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        // The mode asked for, whatever the umask took away.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("vramguard-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("metrics.prom");
        fs::write(&target, "old\n").unwrap();
        write(&target, b"new\n", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("metrics.prom")]);
        // A directory that does not exist: an error, nothing created.
        assert!(write(&dir.join("missing/metrics.prom"), b"x", 0o644).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_temporary_is_hidden_and_not_a_prom_file() {
        let temporary = temporary_for(Path::new("/var/lib/node_exporter/vramguard.prom")).unwrap();
        let name = temporary
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".vramguard.prom.tmp-"), "{name}");
        assert_eq!(
            temporary.parent(),
            Some(Path::new("/var/lib/node_exporter"))
        );
    }
}
