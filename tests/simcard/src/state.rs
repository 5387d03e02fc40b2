//! The card's state shared by every process on the machine: a fixed-layout `#[repr(C)]` file of
//! atomics mapped from `SIMCUDA_STATE`, a cross-process lock around every update (an OFD lock on
//! one byte of the file), and per-process slots whose liveness is a kernel-held OFD lock on the
//! slot's own byte. A process that dies, however it dies, loses its lock; the next look at its slot
//! gives its memory and contexts back to the card.
//!
//! Everything read from the mapping is checked before use: another process may have written it.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::config::{CardSpec, ConfigError};

/// "SIMCUDA1" in little-endian bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SIMCUDA1");
/// Bumped whenever the layout below changes.
pub const LAYOUT_VERSION: u32 = 1;
/// Devices a card state can hold.
pub const MAX_DEVICES: usize = 16;
/// Processes that can be attached (live or remembered after exit) at once.
pub const MAX_SLOTS: usize = 512;
/// Entry points whose calls are counted per process.
pub const MAX_ENTRIES: usize = 192;
/// The last call counter of each process counts calls made through internal `cuGetProcAddress`
/// answers (`SIMCUDA_PROCADDR=internal`), whatever the entry point.
pub const INTERNAL_CALLS_COUNTER: usize = MAX_ENTRIES - 1;
/// Refusals remembered per device (the total count is kept separately).
pub const REFUSAL_HISTORY: usize = 64;
/// Bytes of a device name, NUL-padded.
pub const NAME_BYTES: usize = 96;

/// File offset of the byte whose lock serialises every update (beyond the end of the file:
/// POSIX locks may cover bytes that do not exist).
const UPDATE_LOCK_BYTE: i64 = 1 << 40;
/// File offset of slot 0's liveness byte; slot `i` uses `SLOT_LOCK_BASE + i`.
const SLOT_LOCK_BASE: i64 = (1 << 40) + 4096;

/// Slot states.
pub const SLOT_FREE: u32 = 0;
/// A process holds the slot (if its lock is still held).
pub const SLOT_LIVE: u32 = 1;
/// The process is gone; its memory went back to the card; kept for its call counts.
pub const SLOT_EXITED: u32 = 2;

/// The file header.
#[repr(C)]
pub struct Header {
    /// [`MAGIC`], written last when the file is initialised.
    pub magic: AtomicU64,
    /// The [`LAYOUT_VERSION`] the file was written with.
    pub layout_version: AtomicU32,
    /// How many of [`Layout::devices`] the card has.
    pub device_count: AtomicU32,
    /// Bytes of the whole file (`size_of::<Layout>()`).
    pub total_size: AtomicU64,
    /// Bytes each context takes on its device.
    pub context_cost: AtomicU64,
    /// 1 if the card was created fragile: any refusal poisons its device.
    pub fragile: AtomicU32,
    _reserved: AtomicU32,
    /// Bumped by `simcuda reset`: processes attached before it lose their allocations.
    pub epoch: AtomicU64,
    /// Bumped whenever a slot is taken, so exited slots are reused oldest first.
    pub slot_clock: AtomicU64,
}

/// One refused request.
#[repr(C)]
pub struct RefusalRecord {
    /// The process refused.
    pub pid: AtomicI32,
    _pad: AtomicU32,
    /// The bytes it asked for.
    pub bytes: AtomicU64,
}

/// One device of the card.
#[repr(C)]
pub struct DeviceRecord {
    /// Bytes of device memory.
    pub capacity: AtomicU64,
    /// Bytes charged now, by every process.
    pub used: AtomicU64,
    /// The most bytes charged at once since the card was created or reset.
    pub peak: AtomicU64,
    /// Requests refused since the card was created or reset.
    pub refused_total: AtomicU64,
    /// 1 once a fragile refusal poisoned the device: `cuInit` fails until a reset.
    pub poisoned: AtomicU32,
    /// PCI domain number.
    pub pci_domain: AtomicU32,
    /// PCI bus number.
    pub pci_bus: AtomicU32,
    /// PCI device number.
    pub pci_device: AtomicU32,
    /// `cuDeviceGetUuid`'s bytes.
    pub uuid: [AtomicU8; 16],
    /// `cuDeviceGetName`'s name, NUL-padded (the last byte is always NUL).
    pub name: [AtomicU8; NAME_BYTES],
    /// The latest refusals, a ring: refusal `n` (counting from 0) is at `n % REFUSAL_HISTORY`.
    pub refusals: [RefusalRecord; REFUSAL_HISTORY],
}

/// One process's record.
#[repr(C)]
pub struct SlotRecord {
    /// [`SLOT_FREE`], [`SLOT_LIVE`] or [`SLOT_EXITED`].
    pub state: AtomicU32,
    /// The process's pid.
    pub pid: AtomicI32,
    /// [`Header::slot_clock`] when the slot was taken.
    pub taken_at: AtomicU64,
    /// Bytes the process holds on each device.
    pub used: [AtomicU64; MAX_DEVICES],
    /// Contexts the process holds on each device.
    pub contexts: [AtomicU32; MAX_DEVICES],
    /// Calls the process made to each counted entry point (the last counter is
    /// [`INTERNAL_CALLS_COUNTER`]).
    pub calls: [AtomicU64; MAX_ENTRIES],
}

/// The whole file.
#[repr(C)]
pub struct Layout {
    /// The header.
    pub header: Header,
    /// The devices; the first [`Header::device_count`] are the card's.
    pub devices: [DeviceRecord; MAX_DEVICES],
    /// One per process attached now or remembered after its exit.
    pub slots: [SlotRecord; MAX_SLOTS],
}

const _: () = assert!(size_of::<Header>() == 56);
const _: () = assert!(size_of::<RefusalRecord>() == 16);
const _: () = assert!(size_of::<DeviceRecord>() == 48 + 16 + NAME_BYTES + 16 * REFUSAL_HISTORY);
const _: () =
    assert!(size_of::<SlotRecord>() == 16 + 8 * MAX_DEVICES + 4 * MAX_DEVICES + 8 * MAX_ENTRIES);
const _: () = assert!(
    size_of::<Layout>()
        == 56 + MAX_DEVICES * size_of::<DeviceRecord>() + MAX_SLOTS * size_of::<SlotRecord>()
);

/// Why the state could not be used.
#[derive(Debug)]
pub enum StateError {
    /// The file could not be opened, created, sized or mapped.
    Io {
        /// The state file.
        path: PathBuf,
        /// What was being done to it (`open`, `map`...).
        action: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The file is not a card state of this layout.
    Foreign {
        /// The state file.
        path: PathBuf,
    },
    /// The card had to be created, but its configuration is invalid.
    Config(ConfigError),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StateError::Foreign { path } => {
                write!(
                    f,
                    "{} is not a simcuda state of layout {LAYOUT_VERSION}; run `simcuda init`",
                    path.display()
                )
            }
            StateError::Config(error) => write!(f, "cannot create the card: {error}"),
        }
    }
}

impl std::error::Error for StateError {}

impl StateError {
    /// Makes [`StateError::Io`]s about `path`: `io_at(path)("open", error)`.
    fn io_at(path: &Path) -> impl Fn(&'static str, io::Error) -> StateError + '_ {
        move |action, source| StateError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// An open, mapped card state.
pub struct CardState {
    path: PathBuf,
    file: File,
    layout: NonNull<Layout>,
}

// SAFETY: the mapping holds only atomics and stays mapped for the life of the value; the file
// descriptor is usable from any thread.
unsafe impl Send for CardState {}
// SAFETY: as above; every access through `layout()` is an atomic operation.
unsafe impl Sync for CardState {}

impl Drop for CardState {
    fn drop(&mut self) {
        // SAFETY: `layout` came from a successful mmap of exactly this size and is not used again.
        unsafe {
            libc::munmap(self.layout.as_ptr().cast(), size_of::<Layout>());
        }
    }
}

/// A held update lock; released on drop.
pub struct UpdateGuard<'a> {
    state: &'a CardState,
}

impl Drop for UpdateGuard<'_> {
    fn drop(&mut self) {
        let _ = ofd_lock(&self.state.file, UPDATE_LOCK_BYTE, libc::F_UNLCK, false);
    }
}

fn ofd_lock(file: &File, byte: i64, kind: i32, wait: bool) -> io::Result<bool> {
    let mut lock = flock_for(byte, kind);
    let command = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: `lock` is a valid, initialised `struct flock` that outlives the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut lock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn flock_for(byte: i64, kind: i32) -> libc::flock {
    // SAFETY: `struct flock` is plain old data; all-zero is a valid value (l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

/// Whether some open file description other than `file`'s holds the lock on `byte`.
fn held_by_other(file: &File, byte: i64) -> bool {
    let mut lock = flock_for(byte, libc::F_WRLCK);
    // SAFETY: `lock` is a valid `struct flock` that outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    // When the query fails, count the holder as alive: never take memory from a live process.
    rc != 0 || lock.l_type != libc::F_UNLCK as i16
}

impl CardState {
    /// Opens the state at `path`, creating it from `spec()` when missing or empty (the
    /// configuration is only read, and only needs to be valid, when the card is created).
    pub fn open(
        path: &Path,
        spec: impl FnOnce() -> Result<CardSpec, ConfigError>,
    ) -> Result<CardState, StateError> {
        Self::open_with(path, spec, false)
    }

    /// Creates (or overwrites) the state at `path` from `spec`.
    pub fn create(path: &Path, spec: CardSpec) -> Result<CardState, StateError> {
        Self::open_with(path, || Ok(spec), true)
    }

    fn open_with(
        path: &Path,
        spec: impl FnOnce() -> Result<CardSpec, ConfigError>,
        overwrite: bool,
    ) -> Result<CardState, StateError> {
        let io_err = StateError::io_at(path);
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| io_err("create the directory of", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(path)
            .map_err(|e| io_err("open", e))?;
        ofd_lock(&file, UPDATE_LOCK_BYTE, libc::F_WRLCK, true).map_err(|e| io_err("lock", e))?;
        let result = Self::map_locked(path, file, spec, overwrite);
        if let Ok(state) = &result {
            let _ = ofd_lock(&state.file, UPDATE_LOCK_BYTE, libc::F_UNLCK, false);
        }
        result
    }

    /// Maps the file (the update lock is held); initialises it when new, empty or `overwrite`.
    fn map_locked(
        path: &Path,
        file: File,
        spec: impl FnOnce() -> Result<CardSpec, ConfigError>,
        overwrite: bool,
    ) -> Result<CardState, StateError> {
        let io_err = StateError::io_at(path);
        let size = size_of::<Layout>() as u64;
        let current = file.metadata().map_err(|e| io_err("inspect", e))?.len();
        let fresh = overwrite || current == 0;
        // Processes attached to an overwritten card must notice: the new card's epoch follows the old one's.
        let previous_epoch = if fresh && current >= size {
            let mut bytes = [0u8; 8];
            file.read_exact_at(&mut bytes, std::mem::offset_of!(Header, epoch) as u64)
                .map(|_| u64::from_ne_bytes(bytes))
                .unwrap_or(0)
        } else {
            0
        };
        let spec = if fresh {
            Some(spec().map_err(StateError::Config)?)
        } else {
            None
        };
        if fresh {
            file.set_len(0).map_err(|e| io_err("truncate", e))?;
            file.set_len(size).map_err(|e| io_err("size", e))?;
        } else if current < size {
            return Err(StateError::Foreign {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: mapping `size` bytes of a file at least that long, shared, read-write; the
        // result is checked against MAP_FAILED before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io_err("map", io::Error::last_os_error()));
        }
        let layout = NonNull::new(address.cast::<Layout>())
            .ok_or_else(|| io_err("map", io::Error::other("null mapping")))?;
        let state = CardState {
            path: path.to_path_buf(),
            file,
            layout,
        };
        if let Some(spec) = spec {
            state
                .layout()
                .header
                .epoch
                .store(previous_epoch.wrapping_add(1), Ordering::Relaxed);
            state.initialise(&spec);
        } else {
            let header = &state.layout().header;
            if header.magic.load(Ordering::Acquire) != MAGIC
                || header.layout_version.load(Ordering::Acquire) != LAYOUT_VERSION
            {
                return Err(StateError::Foreign {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(state)
    }

    fn initialise(&self, spec: &CardSpec) {
        let layout = self.layout();
        let header = &layout.header;
        let count = spec.devices.len().min(MAX_DEVICES);
        for (record, device) in layout.devices.iter().zip(&spec.devices) {
            record.capacity.store(device.capacity, Ordering::Relaxed);
            record.pci_domain.store(device.pci.0, Ordering::Relaxed);
            record.pci_bus.store(device.pci.1, Ordering::Relaxed);
            record.pci_device.store(device.pci.2, Ordering::Relaxed);
            for (cell, byte) in record.uuid.iter().zip(device.uuid) {
                cell.store(byte, Ordering::Relaxed);
            }
            let name = device.name.as_bytes();
            for (i, cell) in record.name.iter().enumerate() {
                cell.store(
                    if i + 1 < NAME_BYTES {
                        name.get(i).copied().unwrap_or(0)
                    } else {
                        0
                    },
                    Ordering::Relaxed,
                );
            }
        }
        header.device_count.store(count as u32, Ordering::Relaxed);
        header
            .total_size
            .store(size_of::<Layout>() as u64, Ordering::Relaxed);
        header
            .context_cost
            .store(spec.context_cost, Ordering::Relaxed);
        header
            .fragile
            .store(u32::from(spec.fragile), Ordering::Relaxed);
        header
            .layout_version
            .store(LAYOUT_VERSION, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
    }

    /// The mapped layout.
    pub fn layout(&self) -> &Layout {
        // SAFETY: the mapping is `size_of::<Layout>()` bytes, page-aligned, lives as long as
        // `self`, and holds only atomics (valid for every bit pattern, shared mutation allowed).
        unsafe { self.layout.as_ref() }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the cross-process update lock (the caller serialises its own threads).
    pub fn lock(&self) -> UpdateGuard<'_> {
        // A failing lock call (EINTR is retried) leaves nothing sensible to do but proceed: the
        // simulator must not hang its host.
        let _ = ofd_lock(&self.file, UPDATE_LOCK_BYTE, libc::F_WRLCK, true);
        UpdateGuard { state: self }
    }

    /// Devices in the file (bounded by `MAX_DEVICES` whatever the file says).
    pub fn device_count(&self) -> usize {
        (self.layout().header.device_count.load(Ordering::Acquire) as usize).min(MAX_DEVICES)
    }

    /// Device record `index`, if it exists.
    pub fn device(&self, index: usize) -> Option<&DeviceRecord> {
        (index < self.device_count()).then(|| &self.layout().devices[index])
    }

    /// UUIDs of all devices, in machine order.
    pub fn uuids(&self) -> Vec<[u8; 16]> {
        (0..self.device_count())
            .map(|i| read_uuid(&self.layout().devices[i]))
            .collect()
    }

    /// Current epoch (bumped by reset).
    pub fn epoch(&self) -> u64 {
        self.layout().header.epoch.load(Ordering::Acquire)
    }

    /// Bytes each context costs.
    pub fn context_cost(&self) -> u64 {
        self.layout().header.context_cost.load(Ordering::Relaxed)
    }

    /// Whether the card was created fragile.
    pub fn fragile(&self) -> bool {
        self.layout().header.fragile.load(Ordering::Relaxed) != 0
    }

    /// Takes a slot for process `pid` and its liveness lock. Needs the update lock.
    pub fn join(&self, _guard: &UpdateGuard<'_>, pid: i32) -> Option<usize> {
        self.reclaim_dead_locked(None);
        let slots = &self.layout().slots;
        let free = (0..MAX_SLOTS).filter(|&i| slots[i].state.load(Ordering::Acquire) == SLOT_FREE);
        let mut exited: Vec<usize> = (0..MAX_SLOTS)
            .filter(|&i| slots[i].state.load(Ordering::Acquire) == SLOT_EXITED)
            .collect();
        exited.sort_by_key(|&i| slots[i].taken_at.load(Ordering::Relaxed));
        for index in free.chain(exited) {
            if !matches!(
                ofd_lock(
                    &self.file,
                    SLOT_LOCK_BASE + index as i64,
                    libc::F_WRLCK,
                    false
                ),
                Ok(true)
            ) {
                continue;
            }
            let slot = &slots[index];
            for cell in slot.used.iter().chain(slot.calls.iter()) {
                cell.store(0, Ordering::Relaxed);
            }
            for cell in &slot.contexts {
                cell.store(0, Ordering::Relaxed);
            }
            slot.pid.store(pid, Ordering::Relaxed);
            let clock = self
                .layout()
                .header
                .slot_clock
                .fetch_add(1, Ordering::Relaxed);
            slot.taken_at.store(clock, Ordering::Relaxed);
            slot.state.store(SLOT_LIVE, Ordering::Release);
            return Some(index);
        }
        None
    }

    /// Gives up a slot's liveness lock (after a reset made the slot meaningless).
    pub fn unlock_slot(&self, index: usize) {
        let _ = ofd_lock(
            &self.file,
            SLOT_LOCK_BASE + index as i64,
            libc::F_UNLCK,
            false,
        );
    }

    /// Whether the process in slot `index` is alive (someone holds its liveness lock).
    pub fn slot_alive(&self, index: usize) -> bool {
        index < MAX_SLOTS
            && self.layout().slots[index].state.load(Ordering::Acquire) == SLOT_LIVE
            && held_by_other(&self.file, SLOT_LOCK_BASE + index as i64)
    }

    /// Returns the memory and contexts of every dead process to the card; `own` is the caller's
    /// slot (its lock is held through this very file, so the query cannot see it). Returns the
    /// bytes given back. Needs the update lock.
    pub fn reclaim_dead_locked(&self, own: Option<usize>) -> u64 {
        let layout = self.layout();
        let mut returned = 0;
        for (index, slot) in layout.slots.iter().enumerate() {
            if Some(index) == own || slot.state.load(Ordering::Acquire) != SLOT_LIVE {
                continue;
            }
            if held_by_other(&self.file, SLOT_LOCK_BASE + index as i64) {
                continue;
            }
            for (device, used) in layout.devices.iter().zip(&slot.used) {
                let bytes = used.swap(0, Ordering::Relaxed);
                sub_saturating(&device.used, bytes);
                returned += bytes;
            }
            for contexts in &slot.contexts {
                contexts.store(0, Ordering::Relaxed);
            }
            slot.state.store(SLOT_EXITED, Ordering::Release);
        }
        returned
    }

    /// Returns the memory and contexts of every dead process to the card, taking the update lock:
    /// what a reader does before it reports the card (the real driver frees a dead process's
    /// memory at once). Returns the bytes given back.
    pub fn settle(&self) -> u64 {
        let _guard = self.lock();
        self.reclaim_dead_locked(None)
    }

    /// The live processes with memory or a context on `device`, in slot order: (pid, bytes
    /// held, contexts included).
    pub fn holders(&self, device: usize) -> Vec<(i32, u64)> {
        if device >= self.device_count() {
            return Vec::new();
        }
        let slots = &self.layout().slots;
        (0..MAX_SLOTS)
            .filter(|&i| {
                let slot = &slots[i];
                (slot.used[device].load(Ordering::Relaxed) > 0
                    || slot.contexts[device].load(Ordering::Relaxed) > 0)
                    && self.slot_alive(i)
            })
            .map(|i| {
                let slot = &slots[i];
                (
                    slot.pid.load(Ordering::Relaxed),
                    slot.used[device].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Charges `bytes` on `device` to slot `slot`, or records a refusal. Needs the update lock.
    pub fn charge_locked(
        &self,
        own: usize,
        device: usize,
        bytes: u64,
        pid: i32,
        fragile: bool,
    ) -> bool {
        let Some(record) = self.device(device) else {
            return false;
        };
        let Some(slot) = self.layout().slots.get(own) else {
            return false;
        };
        let fits = |record: &DeviceRecord| {
            let used = record.used.load(Ordering::Relaxed);
            used.checked_add(bytes)
                .is_some_and(|total| total <= record.capacity.load(Ordering::Relaxed))
        };
        if !fits(record) {
            self.reclaim_dead_locked(Some(own));
        }
        if !fits(record) {
            let total = record.refused_total.fetch_add(1, Ordering::Relaxed);
            let entry = &record.refusals[(total % REFUSAL_HISTORY as u64) as usize];
            entry.pid.store(pid, Ordering::Relaxed);
            entry.bytes.store(bytes, Ordering::Relaxed);
            if fragile || self.fragile() {
                record.poisoned.store(1, Ordering::Release);
            }
            return false;
        }
        let used = record.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        record.peak.fetch_max(used, Ordering::Relaxed);
        if let Some(cell) = slot.used.get(device) {
            cell.fetch_add(bytes, Ordering::Relaxed);
        }
        true
    }

    /// Returns `bytes` on `device` from slot `own` to the card. Needs the update lock.
    pub fn uncharge_locked(&self, own: usize, device: usize, bytes: u64) {
        let (Some(record), Some(slot)) = (self.device(device), self.layout().slots.get(own)) else {
            return;
        };
        if let Some(cell) = slot.used.get(device) {
            sub_saturating(cell, bytes);
        }
        sub_saturating(&record.used, bytes);
    }

    /// Adds `delta` to slot `own`'s context count on `device`. Needs the update lock.
    pub fn count_contexts_locked(&self, own: usize, device: usize, delta: i32) {
        let (Some(slot), true) = (self.layout().slots.get(own), device < MAX_DEVICES) else {
            return;
        };
        let _ = slot.contexts[device].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_add_signed(delta))
        });
    }

    /// Adds one to slot `own`'s call count of entry `entry` (no lock needed).
    pub fn count_call(&self, own: usize, entry: usize) {
        if let Some(cell) = self
            .layout()
            .slots
            .get(own)
            .and_then(|slot| slot.calls.get(entry))
        {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether any device is poisoned (fragile mode).
    pub fn poisoned(&self) -> bool {
        (0..self.device_count())
            .any(|i| self.layout().devices[i].poisoned.load(Ordering::Acquire) != 0)
    }

    /// "Reboots" the card: clears poison, peaks, refusals, every allocation, context and slot.
    pub fn reset(&self) {
        let _guard = self.lock();
        let layout = self.layout();
        for device in &layout.devices {
            for cell in [&device.used, &device.peak, &device.refused_total] {
                cell.store(0, Ordering::Relaxed);
            }
            device.poisoned.store(0, Ordering::Relaxed);
        }
        for slot in &layout.slots {
            slot.state.store(SLOT_FREE, Ordering::Relaxed);
            for cell in &slot.used {
                cell.store(0, Ordering::Relaxed);
            }
            for cell in &slot.contexts {
                cell.store(0, Ordering::Relaxed);
            }
        }
        layout.header.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

fn sub_saturating(cell: &AtomicU64, bytes: u64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(bytes))
    });
}

/// A device's UUID.
pub fn read_uuid(record: &DeviceRecord) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    for (byte, cell) in uuid.iter_mut().zip(&record.uuid) {
        *byte = cell.load(Ordering::Relaxed);
    }
    uuid
}

/// A device's name (up to the first NUL; invalid UTF-8 replaced).
pub fn read_name(record: &DeviceRecord) -> String {
    let bytes: Vec<u8> = record
        .name
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .take_while(|b| *b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_devices;

    /// A card whose state file is created, with its directory (`card/`), in a temporary
    /// directory (removed when the returned one is dropped).
    fn card(name: &str, capacity: &str) -> (CardState, tempfile::TempDir) {
        let root = tempfile::Builder::new()
            .prefix(&format!("simcuda-state-test-{name}-"))
            .tempdir()
            .unwrap();
        let path = root.path().join("card").join("state");
        let spec = CardSpec {
            devices: parse_devices(capacity, "t").unwrap(),
            context_cost: 7,
            fragile: false,
        };
        (CardState::create(&path, spec).unwrap(), root)
    }

    #[test]
    fn charges_are_bounded_and_refusals_recorded() {
        let (state, _root) = card("bounded", "1000");
        let slot = {
            let guard = state.lock();
            state.join(&guard, 42).unwrap()
        };
        let _guard = state.lock();
        assert!(state.charge_locked(slot, 0, 600, 42, false));
        assert!(!state.charge_locked(slot, 0, 500, 42, false));
        assert!(state.charge_locked(slot, 0, 400, 42, false));
        let device = state.device(0).unwrap();
        assert_eq!(device.used.load(Ordering::Relaxed), 1000);
        assert_eq!(device.peak.load(Ordering::Relaxed), 1000);
        assert_eq!(device.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(device.refusals[0].bytes.load(Ordering::Relaxed), 500);
        assert_eq!(device.poisoned.load(Ordering::Relaxed), 0);
        assert!(!state.charge_locked(slot, 0, 1, 42, true), "full");
        assert!(state.poisoned(), "a fragile refusal poisons the device");
        state.uncharge_locked(slot, 0, 5000);
        assert_eq!(
            device.used.load(Ordering::Relaxed),
            0,
            "saturating, never wraps"
        );
        assert!(
            !state.charge_locked(slot, 3, 1, 42, false),
            "no such device"
        );
        drop(_guard);
        let epoch = state.epoch();
        state.reset();
        assert_eq!(state.epoch(), epoch + 1);
        assert!(!state.poisoned());
        assert_eq!(device.peak.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_second_open_attaches_to_the_same_card() {
        let (state, root) = card("attach", "4GiB;2GiB");
        let dir = root.path();
        let again = CardState::open(state.path(), || panic!("must not re-create")).unwrap();
        assert_eq!(again.device_count(), 2);
        assert_eq!(again.context_cost(), 7);
        assert_eq!(again.uuids(), state.uuids());
        std::fs::write(dir.join("foreign"), vec![1u8; size_of::<Layout>()]).unwrap();
        assert!(matches!(
            CardState::open(&dir.join("foreign"), || panic!()),
            Err(StateError::Foreign { .. })
        ));
    }
}
