//! The byte layout of the ledger file: `#[repr(C)]` records made only of fixed-width atomics,
//! the constants that size them, and compile-time asserts that pin every offset.
//!
//! Everything here lives in memory that other processes (possibly of other users) write at any
//! moment, so every field is an atomic and every value read from it is untrusted: callers check
//! indices and clamp sizes before use. `docs/ledger.md` is the human-readable form of this file:
//! `tests/docs_ledger_layout.rs` checks its tables against these records and constants, and the
//! test `layout_offsets_are_pinned` checks the bytes of a real file against the same offsets.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How many processes can be members of one ledger at once.
pub const MAX_PROCESSES: usize = 1024;
/// How many devices (by UUID) one ledger can track.
pub const MAX_DEVICES: usize = 64;
/// The first eight bytes of every ledger file: `VRAMGRD` and a NUL, read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VRAMGRD\0");
/// What replaces [`MAGIC`] once a member found the file truncated under it (`VRAMCUT` and a NUL):
/// the file was given its size back, but its content is gone, and nobody may use it any more.
pub const TRUNCATED_MAGIC: u64 = u64::from_le_bytes(*b"VRAMCUT\0");
/// Bumped whenever the layout changes in any way; a process never maps a file of another version.
pub const LAYOUT_VERSION: u32 = 1;
/// The ledger file's name inside its directory (the version is part of the name, so a future
/// layout lives beside this one instead of misreading it).
pub const FILE_NAME: &str = "ledger.v1";
/// Bytes of a device name or command line kept in the ledger (longer ones are cut).
pub const TEXT_BYTES: usize = 64;
/// Number of u64 words holding a text field.
pub const TEXT_WORDS: usize = TEXT_BYTES / 8;

/// [`DeviceRecord::state`]: the record is unused.
pub const DEVICE_EMPTY: u32 = 0;
/// [`DeviceRecord::state`]: a process is filling the record in (under the registration lock).
pub const DEVICE_INITIALISING: u32 = 1;
/// [`DeviceRecord::state`]: the record describes a device.
pub const DEVICE_READY: u32 = 2;

/// [`SlotRecord::state`]: no member uses the slot.
pub const SLOT_FREE: u32 = 0;
/// [`SlotRecord::state`]: a member owns the slot (it holds the slot's liveness lock).
pub const SLOT_ACTIVE: u32 = 1;
/// [`SlotRecord::state`]: a process that found the slot's member dead is returning its bytes.
pub const SLOT_RECLAIMING: u32 = 2;

/// The file header, at offset 0. Written once by the creator before the file is published;
/// the fields marked "hint" change later and are clamped by every reader.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// `size_of::<Header>()`.
    pub header_size: AtomicU32,
    /// The whole file's size in bytes, `size_of::<LedgerLayout>()`.
    pub file_size: AtomicU64,
    /// [`MAX_PROCESSES`].
    pub max_processes: AtomicU32,
    /// [`MAX_DEVICES`].
    pub max_devices: AtomicU32,
    /// `size_of::<DeviceRecord>()`.
    pub device_record_size: AtomicU32,
    /// `size_of::<SlotRecord>()`.
    pub slot_record_size: AtomicU32,
    /// Offset of the device table.
    pub devices_offset: AtomicU64,
    /// Offset of the slot table.
    pub slots_offset: AtomicU64,
    /// Offset of the first liveness-lock byte (slot `i` locks byte `lock_base + i`); past the end
    /// of the file, so the locks never touch mapped data.
    pub lock_base: AtomicU64,
    /// Hint: one more than the highest slot index ever used (scans stop there).
    pub slot_high_water: AtomicU32,
    /// Hint: one more than the highest device index ever registered.
    pub device_high_water: AtomicU32,
    /// Unix time in milliseconds when the file was created.
    pub created_unix_ms: AtomicU64,
}

/// One device, keyed by UUID. Totals are written only by the holder of [`DeviceRecord::lock`].
#[repr(C, align(64))]
pub struct DeviceRecord {
    /// The device UUID, 16 bytes as two little-endian words.
    pub uuid: [AtomicU64; 2],
    /// [`DEVICE_EMPTY`], [`DEVICE_INITIALISING`] or [`DEVICE_READY`].
    pub state: AtomicU32,
    /// Number of queued waiters (slots with a wait ticket on this device).
    pub waiters: AtomicU32,
    /// Total memory of the card in bytes.
    pub capacity: AtomicU64,
    /// Bytes that may be handed out (capacity less the reserve).
    pub budget: AtomicU64,
    /// Sum over members of `max(held + in_flight, claim)`; never above `budget`.
    pub charged: AtomicU64,
    /// Sum over members of bytes held.
    pub held: AtomicU64,
    /// Sum over members of bytes reserved by requests in flight.
    pub in_flight: AtomicU64,
    /// Owner token of the device lock: 0 when free, else `(generation << 32) | (slot + 1)`.
    pub lock: AtomicU64,
    /// Futex word: bumped (and waiters woken) whenever room may have appeared.
    pub wake_seq: AtomicU32,
    /// Number of times a lock was taken over from a dead holder and the totals repaired.
    pub repairs: AtomicU32,
    /// The next FIFO ticket to hand out (tickets start at 1).
    pub next_ticket: AtomicU64,
    /// The device name, NUL-padded.
    pub name: [AtomicU64; TEXT_WORDS],
    /// What the last context measured on this device took on the card, in bytes (meaningful
    /// once [`DeviceRecord::context_measured_unix_ms`] is not 0). Hint: clamped by readers.
    pub context_bytes: AtomicU64,
    /// Unix time in milliseconds of that measurement; 0: no context was measured yet.
    pub context_measured_unix_ms: AtomicU64,
    /// The card's used bytes (`total - free` of `cuMemGetInfo_v2`) as a guarded process last
    /// learned them from the driver. Written without the lock by whoever asked (see
    /// `driver_figure`); 0 until [`DeviceRecord::driver_seen_unix_ms`] is set.
    pub driver_used: AtomicU64,
    /// Of [`DeviceRecord::driver_used`], what the ledger did not hold at that moment (used less
    /// the held total, never below zero): memory outside the guard, as of then.
    pub driver_unaccounted: AtomicU64,
    /// Unix time in milliseconds of that figure; 0 when no guarded process has asked yet.
    pub driver_seen_unix_ms: AtomicU64,
}

/// One member's standing on one device. Each word is written only under the device's lock.
#[repr(C)]
pub struct SlotDevice {
    /// Bytes the member holds (allocations the driver granted).
    pub held: AtomicU64,
    /// Bytes reserved by the member's requests in flight.
    pub in_flight: AtomicU64,
    /// Bytes claimed up front (`VRAMGUARD_EXPECT`): the charge is at least this.
    pub claim: AtomicU64,
    /// The member's FIFO ticket while it waits on this device, else 0.
    pub wait_ticket: AtomicU64,
    /// Bytes the waiting request asks for.
    pub wait_bytes: AtomicU64,
    /// Unix time in milliseconds when the wait started.
    pub wait_since_unix_ms: AtomicU64,
}

/// One member process. Owned by whoever holds the slot's liveness lock.
#[repr(C, align(64))]
pub struct SlotRecord {
    /// [`SLOT_FREE`], [`SLOT_ACTIVE`] or [`SLOT_RECLAIMING`].
    pub state: AtomicU32,
    /// The member's pid as its own namespace sees it (for display only; never for liveness).
    pub pid: AtomicU32,
    /// Incremented every time the slot changes hands; part of every lock owner token.
    pub generation: AtomicU64,
    /// Inode of the member's pid namespace (`/proc/self/ns/pid`), for display.
    pub pid_namespace: AtomicU64,
    /// Unix time in milliseconds when the member joined.
    pub started_unix_ms: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 4],
    /// The member's command line, NUL-padded.
    pub command: [AtomicU64; TEXT_WORDS],
    /// The member's standing on each device, indexed like the device table.
    pub devices: [SlotDevice; MAX_DEVICES],
}

/// The whole file.
#[repr(C)]
pub struct LedgerLayout {
    /// At offset 0.
    pub header: Header,
    /// At [`DEVICES_OFFSET`].
    pub devices: [DeviceRecord; MAX_DEVICES],
    /// At [`SLOTS_OFFSET`].
    pub slots: [SlotRecord; MAX_PROCESSES],
}

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = size_of::<Header>();
/// Size of one device record.
pub const DEVICE_RECORD_SIZE: usize = size_of::<DeviceRecord>();
/// Size of one slot record.
pub const SLOT_RECORD_SIZE: usize = size_of::<SlotRecord>();
/// Offset of the device table.
pub const DEVICES_OFFSET: usize = offset_of!(LedgerLayout, devices);
/// Offset of the slot table.
pub const SLOTS_OFFSET: usize = offset_of!(LedgerLayout, slots);
/// Size of the file in bytes.
pub const FILE_SIZE: usize = size_of::<LedgerLayout>();
/// The first liveness-lock byte (just past the end of the file).
pub const LOCK_BASE: u64 = FILE_SIZE as u64;
/// The byte locked while a device is being registered.
pub const REGISTRATION_LOCK_BYTE: u64 = LOCK_BASE + MAX_PROCESSES as u64;
/// The first context-creation lock byte: device record `i` locks byte `CONTEXT_LOCK_BASE + i`
/// while a member creates a context on it and measures what it took.
pub const CONTEXT_LOCK_BASE: u64 = REGISTRATION_LOCK_BYTE + 1;
/// The byte locked while a member replaces this file with a rebuilt ledger (see
/// `docs/ledger.md`, "Rebuilding"): the members of one file rebuild one at a time.
pub const REBUILD_LOCK_BYTE: u64 = CONTEXT_LOCK_BASE + MAX_DEVICES as u64;

// The layout is a wire format shared by processes built from different builds: pin every offset.
const _: () = {
    assert!(HEADER_SIZE == 128);
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, layout_version) == 8);
    assert!(offset_of!(Header, header_size) == 12);
    assert!(offset_of!(Header, file_size) == 16);
    assert!(offset_of!(Header, max_processes) == 24);
    assert!(offset_of!(Header, max_devices) == 28);
    assert!(offset_of!(Header, device_record_size) == 32);
    assert!(offset_of!(Header, slot_record_size) == 36);
    assert!(offset_of!(Header, devices_offset) == 40);
    assert!(offset_of!(Header, slots_offset) == 48);
    assert!(offset_of!(Header, lock_base) == 56);
    assert!(offset_of!(Header, slot_high_water) == 64);
    assert!(offset_of!(Header, device_high_water) == 68);
    assert!(offset_of!(Header, created_unix_ms) == 72);

    assert!(DEVICE_RECORD_SIZE == 192);
    assert!(offset_of!(DeviceRecord, uuid) == 0);
    assert!(offset_of!(DeviceRecord, state) == 16);
    assert!(offset_of!(DeviceRecord, waiters) == 20);
    assert!(offset_of!(DeviceRecord, capacity) == 24);
    assert!(offset_of!(DeviceRecord, budget) == 32);
    assert!(offset_of!(DeviceRecord, charged) == 40);
    assert!(offset_of!(DeviceRecord, held) == 48);
    assert!(offset_of!(DeviceRecord, in_flight) == 56);
    assert!(offset_of!(DeviceRecord, lock) == 64);
    assert!(offset_of!(DeviceRecord, wake_seq) == 72);
    assert!(offset_of!(DeviceRecord, repairs) == 76);
    assert!(offset_of!(DeviceRecord, next_ticket) == 80);
    assert!(offset_of!(DeviceRecord, name) == 88);
    assert!(offset_of!(DeviceRecord, context_bytes) == 152);
    assert!(offset_of!(DeviceRecord, context_measured_unix_ms) == 160);
    assert!(offset_of!(DeviceRecord, driver_used) == 168);
    assert!(offset_of!(DeviceRecord, driver_unaccounted) == 176);
    assert!(offset_of!(DeviceRecord, driver_seen_unix_ms) == 184);

    assert!(size_of::<SlotDevice>() == 48);
    assert!(offset_of!(SlotDevice, held) == 0);
    assert!(offset_of!(SlotDevice, in_flight) == 8);
    assert!(offset_of!(SlotDevice, claim) == 16);
    assert!(offset_of!(SlotDevice, wait_ticket) == 24);
    assert!(offset_of!(SlotDevice, wait_bytes) == 32);
    assert!(offset_of!(SlotDevice, wait_since_unix_ms) == 40);

    assert!(SLOT_RECORD_SIZE == 3200);
    assert!(offset_of!(SlotRecord, state) == 0);
    assert!(offset_of!(SlotRecord, pid) == 4);
    assert!(offset_of!(SlotRecord, generation) == 8);
    assert!(offset_of!(SlotRecord, pid_namespace) == 16);
    assert!(offset_of!(SlotRecord, started_unix_ms) == 24);
    assert!(offset_of!(SlotRecord, reserved) == 32);
    assert!(offset_of!(SlotRecord, command) == 64);
    assert!(offset_of!(SlotRecord, devices) == 128);

    assert!(DEVICES_OFFSET == 128);
    assert!(SLOTS_OFFSET == 128 + 64 * 192);
    assert!(FILE_SIZE == 128 + 64 * 192 + 1024 * 3200);
    // Only atomics of these two widths appear in shared memory.
    assert!(size_of::<AtomicU64>() == 8 && size_of::<AtomicU32>() == 4);
};

/// Stores `text` (cut to [`TEXT_BYTES`], at a character boundary, NUL-padded) into `words`.
pub fn store_text(words: &[AtomicU64; TEXT_WORDS], text: &str) {
    let mut bytes = [0u8; TEXT_BYTES];
    let mut end = text.len().min(TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
    for (word, chunk) in words.iter().zip(bytes.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        word.store(u64::from_le_bytes(le), Ordering::Relaxed);
    }
}

/// Reads a text field: bytes up to the first NUL, invalid UTF-8 replaced.
pub fn load_text(words: &[AtomicU64; TEXT_WORDS]) -> String {
    let mut bytes = [0u8; TEXT_BYTES];
    for (word, chunk) in words.iter().zip(bytes.chunks_exact_mut(8)) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(TEXT_BYTES);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Stores a device UUID.
pub fn store_uuid(words: &[AtomicU64; 2], uuid: [u8; 16]) {
    let (low, high) = uuid.split_at(8);
    words[0].store(
        u64::from_le_bytes(low.try_into().unwrap_or([0; 8])),
        Ordering::Relaxed,
    );
    words[1].store(
        u64::from_le_bytes(high.try_into().unwrap_or([0; 8])),
        Ordering::Relaxed,
    );
}

/// Reads a device UUID.
pub fn load_uuid(words: &[AtomicU64; 2]) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&words[0].load(Ordering::Relaxed).to_le_bytes());
    uuid[8..].copy_from_slice(&words[1].load(Ordering::Relaxed).to_le_bytes());
    uuid
}

/// Hands `$then!` the header fields whose value this layout fixes, each as
/// `field: width = value`, in the order they are checked at attach: the one list from which the
/// creator writes them and every attaching process checks them.
macro_rules! fixed_header_fields {
    ($then:ident) => {
        $then! {
            header_size: u32 = HEADER_SIZE,
            file_size: u64 = FILE_SIZE,
            max_processes: u32 = MAX_PROCESSES,
            max_devices: u32 = MAX_DEVICES,
            device_record_size: u32 = DEVICE_RECORD_SIZE,
            slot_record_size: u32 = SLOT_RECORD_SIZE,
            devices_offset: u64 = DEVICES_OFFSET,
            slots_offset: u64 = SLOTS_OFFSET,
            lock_base: u64 = LOCK_BASE,
            layout_version: u32 = LAYOUT_VERSION,
        }
    };
}

/// Writes the header of a freshly created (zero-filled) file. The magic is written last, with
/// release ordering, although the file is published only after this returns.
pub fn initialise_header(header: &Header, now_unix_ms: u64) {
    macro_rules! store {
        ($($field:ident: $width:ty = $value:expr),+ $(,)?) => {
            $(header.$field.store($value as $width, Ordering::Relaxed);)+
        };
    }
    fixed_header_fields!(store);
    header.created_unix_ms.store(now_unix_ms, Ordering::Relaxed);
    header.magic.store(MAGIC, Ordering::Release);
}

/// The first header field that differs from what this build expects, as (field, found, expected).
pub fn header_mismatch(header: &Header) -> Option<(&'static str, u64, u64)> {
    macro_rules! checks {
        ($($field:ident: $width:ty = $value:expr),+ $(,)?) => {
            [$((
                stringify!($field),
                u64::from(header.$field.load(Ordering::Relaxed)),
                $value as u64,
            )),+]
        };
    }
    fixed_header_fields!(checks)
        .into_iter()
        .find(|(_, found, expected)| found != expected)
}

/// Clamps a high-water hint read from the file to `max`.
pub fn clamp_count(hint: u32, max: usize) -> usize {
    (hint as usize).min(max)
}
