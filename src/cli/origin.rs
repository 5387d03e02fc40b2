//! Which host process a ledger slot belongs to, and which container it runs in, for `status`.
//!
//! A member records its pid as it sees it: inside a container that is the pid of the
//! container's own namespace (often 1), a number that means nothing on the host. What the host
//! can see is the member's liveness lock: an OFD write lock on byte `LOCK_BASE + slot` of the
//! ledger file, which the kernel lists in `/proc/PID/fdinfo/FD` (`lock: ... OFDLCK ... MAJ:MIN:INO
//! START END`) of every process that has that open file description. A forked child inherits
//! it, so among several holders the one whose innermost pid (`NSpid` in `/proc/PID/status`)
//! is the recorded one is taken. The container comes from `/proc/PID/cgroup` (podman's
//! `libpod-ID`, docker's `docker-ID`, containerd's `cri-containerd-ID`, CRI-O's `crio-ID`).
//! Only processes this user may inspect are found; for the others `status` shows what the
//! ledger recorded.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vramguard_core::ledger::layout::{LOCK_BASE, MAX_PROCESSES};

/// A process on this host that holds a slot's liveness lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid in this (the reader's) pid namespace.
    pub pid: u32,
    /// Its pid in its own innermost pid namespace (`NSpid`'s last field).
    pub namespace_pid: Option<i32>,
    /// The container it runs in, e.g. `podman 0123456789ab`.
    pub container: Option<String>,
}

/// The holder of each slot of the ledger file at `ledger` that this user can see.
pub fn holders(ledger: &Path) -> HashMap<u32, Vec<Holder>> {
    let mut found: HashMap<u32, Vec<Holder>> = HashMap::new();
    let Ok(meta) = fs::metadata(ledger) else {
        return found;
    };
    let device = lock_device(meta.dev(), meta.ino());
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let slots = slots_held(pid, &device);
        if slots.is_empty() {
            continue;
        }
        let holder = Holder {
            pid,
            namespace_pid: namespace_pid(pid),
            container: fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| container(&text)),
        };
        for slot in slots {
            found.entry(slot).or_default().push(holder.clone());
        }
    }
    found
}

/// Of a slot's holders, the member itself: the one whose own pid is the recorded one, else the
/// only one.
pub fn member(holders: &[Holder], recorded_pid: i32) -> Option<&Holder> {
    holders
        .iter()
        .find(|h| h.namespace_pid == Some(recorded_pid))
        .or(match holders {
            [only] => Some(only),
            _ => None,
        })
}

/// The `MAJ:MIN:INO` of a lock line for a file on device `dev` with inode `ino` (the kernel
/// prints the device numbers in hex, the inode in decimal).
fn lock_device(dev: u64, ino: u64) -> String {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// The slots whose liveness lock one of `pid`'s descriptors holds. Only `/proc` is read (the
/// lock lines name the locked file's device and inode): no descriptor's file is touched, so a
/// process with a file on a hung network mount cannot stall `status`.
fn slots_held(pid: u32, device: &str) -> Vec<u32> {
    let mut slots = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return slots;
    };
    for fd in fds.filter_map(Result::ok) {
        if let Ok(text) = fs::read_to_string(fd.path()) {
            slots.extend(
                text.lines()
                    .filter_map(|line| slot_of_lock_line(line, device)),
            );
        }
    }
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// The slot of one fdinfo `lock:` line when it is a granted OFD lock on one liveness byte of
/// the file `device`.
fn slot_of_lock_line(line: &str, device: &str) -> Option<u32> {
    let words: Vec<&str> = line.strip_prefix("lock:")?.split_whitespace().collect();
    // `1: OFDLCK ADVISORY WRITE -1 00:1a:123 START END`; a waiter's line has `->` after the id.
    let [_, "OFDLCK", _, "WRITE", _, dev, start, end] = words.as_slice() else {
        return None;
    };
    let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
    let slot = start.checked_sub(LOCK_BASE)?;
    (*dev == device && start == end && slot < MAX_PROCESSES as u64).then_some(slot as u32)
}

/// The last field of `NSpid:` in `/proc/PID/status`.
fn namespace_pid(pid: u32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The container named by a `/proc/PID/cgroup` text, as `ENGINE ID12`.
fn container(cgroup: &str) -> Option<String> {
    const ENGINES: [(&str, &str); 4] = [
        ("libpod-", "podman"),
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
    ];
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let named = ENGINES
                .iter()
                .find_map(|(prefix, engine)| part.strip_prefix(prefix).map(|id| (*engine, id)));
            let (engine, id) = match named {
                Some(found) => found,
                // cgroupfs layouts: `/docker/ID`, `/kubepods/.../ID`.
                None if i > 0 && parts[i - 1] == "docker" => ("docker", part),
                None => continue,
            };
            if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(format!("{engine} {}", &id[..12]));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines_name_their_slot() {
        let device = lock_device(0x1a, 123);
        assert_eq!(device, "00:1a:123");
        let base = LOCK_BASE;
        let line = format!(
            "lock:\t1: OFDLCK ADVISORY  WRITE -1 00:1a:123 {} {}",
            base + 7,
            base + 7
        );
        assert_eq!(slot_of_lock_line(&line, &device), Some(7));
        // Another file, a range, a waiter, a POSIX lock, a byte outside the slots.
        for other in [
            format!("lock:\t1: OFDLCK ADVISORY  WRITE -1 00:1a:124 {base} {base}"),
            format!(
                "lock:\t1: OFDLCK ADVISORY  WRITE -1 00:1a:123 {base} {}",
                base + 1
            ),
            format!("lock:\t1: -> OFDLCK ADVISORY  WRITE -1 00:1a:123 {base} {base}"),
            format!("lock:\t1: POSIX  ADVISORY  WRITE 77 00:1a:123 {base} {base}"),
            "lock:\t1: OFDLCK ADVISORY  WRITE -1 00:1a:123 0 0".to_string(),
        ] {
            assert_eq!(slot_of_lock_line(&other, &device), None, "{other}");
        }
    }

    #[test]
    fn containers_are_named_from_their_cgroup() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for (text, engine) in [
            (format!("0::/libpod_parent/libpod-{id}\n"), "podman"),
            (
                format!("0::/machine.slice/libpod-{id}.scope/container\n"),
                "podman",
            ),
            (format!("0::/system.slice/docker-{id}.scope\n"), "docker"),
            (format!("12:memory:/docker/{id}\n"), "docker"),
            (
                format!("0::/kubepods.slice/cri-containerd-{id}.scope\n"),
                "containerd",
            ),
        ] {
            assert_eq!(
                container(&text),
                Some(format!("{engine} 0123456789ab")),
                "{text}"
            );
        }
        assert_eq!(container("0::/user.slice/session-1.scope\n"), None);
        assert_eq!(
            container(&format!("0::/libpod_parent/libpod-conmon-{id}\n")),
            None
        );
    }
}
