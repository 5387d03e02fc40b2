//! Whether the guard can be given on this node: the library is there (a file: a runtime asked to
//! mount a missing host path may make an empty directory there, and the container would start
//! unguarded), the ledger directory is there, and in CDI mode the spec the runtime reads is there.
//! The plugin sees the node's paths at the same place (the DaemonSet mounts them so). Units are
//! advertised unhealthy while a check fails, so the kubelet admits no pod that asks for the guard
//! on a node that cannot give it, and `Allocate` refuses, saying why.

use std::path::PathBuf;

/// What a unit's health depends on.
#[derive(Debug, Clone)]
pub struct Check {
    /// The node's `libvramguard.so`.
    pub library: PathBuf,
    /// The node's ledger directory.
    pub ledger_dir: PathBuf,
    /// The CDI spec naming the guard (CDI mode only).
    pub cdi_spec: Option<PathBuf>,
}

/// The outcome of a [`Check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The guard can be given.
    Healthy,
    /// It cannot, and why.
    Unhealthy(String),
}

impl Health {
    /// Whether the units may be handed out.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

impl Check {
    /// Looks at the node's paths now.
    pub fn run(&self) -> Health {
        let mut problems = Vec::new();
        match std::fs::metadata(&self.library) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => problems.push(format!(
                "the library {} is not a file",
                self.library.display()
            )),
            Err(e) => problems.push(format!("the library {}: {e}", self.library.display())),
        }
        match std::fs::metadata(&self.ledger_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => problems.push(format!(
                "the ledger directory {} is not a directory",
                self.ledger_dir.display()
            )),
            Err(e) => problems.push(format!(
                "the ledger directory {}: {e}",
                self.ledger_dir.display()
            )),
        }
        if let Some(spec) = &self.cdi_spec {
            match std::fs::metadata(spec) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => problems.push(format!("the CDI spec {} is not a file", spec.display())),
                Err(e) => problems.push(format!("the CDI spec {}: {e}", spec.display())),
            }
        }
        if problems.is_empty() {
            Health::Healthy
        } else {
            Health::Unhealthy(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("libvramguard.so");
        let spec = dir.path().join("vramguard.yaml");
        let check = Check {
            library: library.clone(),
            ledger_dir: dir.path().join("ledger"),
            cdi_spec: Some(spec.clone()),
        };
        let Health::Unhealthy(why) = check.run() else {
            panic!("healthy without its paths")
        };
        assert!(why.contains("libvramguard.so") && why.contains("ledger") && why.contains("CDI"));
        std::fs::write(&library, b"").unwrap();
        std::fs::create_dir(dir.path().join("ledger")).unwrap();
        std::fs::create_dir(&spec).unwrap();
        assert_eq!(
            check.run(),
            Health::Unhealthy(format!("the CDI spec {} is not a file", spec.display()))
        );
        std::fs::remove_dir(&spec).unwrap();
        std::fs::write(&spec, b"").unwrap();
        assert_eq!(check.run(), Health::Healthy);
    }
}
