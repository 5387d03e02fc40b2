//! The per-process side of the simulated driver: initialisation, the devices this process sees,
//! contexts and each thread's current-context stack, and the tables of live allocations (plain,
//! pitched, managed, pool, virtual-memory handles and mappings, arrays) that make frees, pools
//! and the virtual memory API behave like the real driver. Physical memory is charged on the
//! shared card state ([`crate::state`]).
//!
//! Pools: memory is charged when a pool grows to serve an allocation; `cuMemFreeAsync` gives the
//! block back to its pool, which keeps it reserved on the card until the next stream or context
//! synchronisation (release threshold 0, the driver's default), `cuMemPoolTrimTo`, or
//! `cuMemPoolDestroy`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::{self, CardSpec};
use crate::result::CuResult;
use crate::state::{self, CardState};

mod array;
mod context;
mod linear;
mod pool;
mod vmm;

pub use array::ArrayShape;

/// What a driver call returns on the Rust side.
pub type CuOutcome<T = ()> = Result<T, CuResult>;

/// Allocation granularity of the virtual memory API (minimum and recommended).
pub const GRANULARITY: u64 = 2 << 20;
/// Pitch alignment of `cuMemAllocPitch`.
pub const PITCH_ALIGNMENT: u64 = 512;
/// The driver version reported by `cuDriverGetVersion`.
pub const DRIVER_VERSION: i32 = 12080;

/// The kind of a tracked allocation; frees must match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cuMemAlloc_v2`, `cuMemAllocPitch_v2`, `cuMemAllocManaged`.
    Linear,
    /// The legacy 32-bit `cuMemAlloc` / `cuMemAllocPitch`.
    Legacy,
    /// From a memory pool (`cuMemAllocAsync`, `cuMemAllocFromPoolAsync`).
    Pooled(u64),
    /// `cuArrayCreate*`, `cuArray3DCreate*`.
    Array,
    /// `cuMipmappedArrayCreate`.
    Mipmapped,
}

#[derive(Clone, Copy, Debug)]
struct Allocation {
    machine: usize,
    bytes: u64,
    kind: Kind,
    /// The context that owns it (its destruction frees it); pooled memory belongs to its pool.
    context: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Context {
    ordinal: usize,
    machine: usize,
    alive: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Primary {
    handle: u64,
    retains: u32,
    flags: u32,
}

#[derive(Clone, Copy, Debug)]
struct Physical {
    machine: usize,
    bytes: u64,
    references: u32,
    mappings: u32,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    size: u64,
    handle: u64,
    accessible: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pool {
    machine: usize,
    /// Bytes the pool holds on the card.
    reserved: u64,
    /// Bytes of it handed out and not yet freed.
    in_use: u64,
    release_threshold: u64,
    is_default: bool,
}

thread_local! {
    /// This thread's context stack, tagged with the pid it belongs to (a forked child starts empty).
    static CONTEXT_STACK: RefCell<(i32, Vec<u64>)> = const { RefCell::new((0, Vec::new())) };
}

/// One process's view of the simulated driver.
pub struct Driver {
    pid: i32,
    state: CardState,
    slot: usize,
    epoch: u64,
    initialized: bool,
    fragile: bool,
    latency: Duration,
    /// Handles of destroyed contexts, handed out again when `SIMCUDA_REUSE_HANDLES` is on
    /// (`None` when off).
    freed_contexts: Option<Vec<u64>>,
    /// Machine index of each ordinal (after `CUDA_VISIBLE_DEVICES`).
    visible: Vec<usize>,
    /// Usually a handful: a B-tree finds one in a few nanoseconds where a `HashMap` hashes first
    /// (every `cuCtxGetDevice` and allocation looks up the current context).
    contexts: BTreeMap<u64, Context>,
    primaries: HashMap<usize, Primary>,
    allocations: HashMap<u64, Allocation>,
    physical: HashMap<u64, Physical>,
    reservations: BTreeMap<u64, u64>,
    mappings: BTreeMap<u64, Mapping>,
    pools: HashMap<u64, Pool>,
    default_pools: HashMap<usize, u64>,
    streams: HashMap<u64, usize>,
    next_handle: u64,
    next_address: u64,
    next_legacy_address: u64,
    /// When `cuMemGetInfo` last gave back dead processes' memory (it does so at most every
    /// [`linear::DEAD_SCAN_INTERVAL`], so that the query stays as cheap as the real one).
    last_dead_scan: std::cell::Cell<Option<Duration>>,
}

/// Special stream handles every context accepts.
const STREAM_LEGACY: u64 = 1;
const STREAM_PER_THREAD: u64 = 2;

fn round_up(value: u64, to: u64) -> Option<u64> {
    value.checked_add(to - 1).map(|v| v / to * to)
}

impl Driver {
    /// Attaches this process to the card state (creating it from the environment if needed).
    pub fn attach() -> Result<Driver, String> {
        let path = config::state_path();
        let state = CardState::open(&path, CardSpec::from_env).map_err(|e| e.to_string())?;
        let latency = config::latency_from_env().map_err(|e| e.to_string())?;
        #[allow(unsafe_code)]
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let slot = {
            let guard = state.lock();
            state.join(&guard, pid).ok_or_else(|| {
                format!(
                    "{}: all {} process slots are taken",
                    path.display(),
                    state::MAX_SLOTS
                )
            })?
        };
        let filter = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let visible = config::visible_devices(filter.as_deref(), &state.uuids());
        Ok(Driver {
            pid,
            epoch: state.epoch(),
            state,
            slot,
            initialized: false,
            fragile: config::fragile_from_env(),
            latency,
            freed_contexts: config::reuse_handles_from_env().then(Vec::new),
            visible,
            contexts: BTreeMap::new(),
            primaries: HashMap::new(),
            allocations: HashMap::new(),
            physical: HashMap::new(),
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            pools: HashMap::new(),
            default_pools: HashMap::new(),
            streams: HashMap::new(),
            next_handle: 0x5100_0000,
            next_address: 0x7f00_0000_0000,
            next_legacy_address: 0x1000_0000,
            last_dead_scan: std::cell::Cell::new(None),
        })
    }

    /// Counts a call of entry point `entry`.
    pub fn count(&self, entry: usize) {
        self.state.count_call(self.slot, entry);
    }

    /// After `simcuda reset`: every allocation and context of this process is gone, as after a
    /// device reset; the process takes a fresh slot.
    pub fn follow_reset(&mut self) {
        let epoch = self.state.epoch();
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        self.contexts.clear();
        self.primaries.clear();
        self.allocations.clear();
        self.physical.clear();
        self.reservations.clear();
        self.mappings.clear();
        self.pools.clear();
        self.default_pools.clear();
        self.streams.clear();
        self.initialized = false;
        self.state.unlock_slot(self.slot);
        let guard = self.state.lock();
        if let Some(slot) = self.state.join(&guard, self.pid) {
            self.slot = slot;
        }
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 0x10;
        self.next_handle
    }

    fn address(&mut self, bytes: u64, alignment: u64) -> u64 {
        let alignment = alignment.max(GRANULARITY);
        let start = round_up(self.next_address, alignment).unwrap_or(self.next_address);
        self.next_address = start
            .saturating_add(bytes.max(1))
            .saturating_add(GRANULARITY);
        start
    }

    fn busy_wait(&self) {
        if self.latency.is_zero() {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < self.latency {
            std::hint::spin_loop();
        }
    }

    /// Takes `bytes` of device memory on machine device `machine`, or `CUDA_ERROR_OUT_OF_MEMORY`.
    fn charge(&mut self, machine: usize, bytes: u64) -> CuOutcome {
        self.busy_wait();
        let _guard = self.state.lock();
        if self
            .state
            .charge_locked(self.slot, machine, bytes, self.pid, self.fragile)
        {
            Ok(())
        } else {
            Err(CuResult::OUT_OF_MEMORY)
        }
    }

    fn uncharge(&mut self, machine: usize, bytes: u64) {
        self.busy_wait();
        let _guard = self.state.lock();
        self.state.uncharge_locked(self.slot, machine, bytes);
    }

    /// `cuInit`.
    pub fn init(&mut self, flags: u32) -> CuOutcome {
        if flags != 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        if self.state.poisoned() {
            return Err(CuResult::UNKNOWN);
        }
        if self.visible.is_empty() {
            return Err(CuResult::NO_DEVICE);
        }
        self.initialized = true;
        Ok(())
    }

    fn require_init(&self) -> CuOutcome {
        if self.initialized {
            Ok(())
        } else {
            Err(CuResult::NOT_INITIALIZED)
        }
    }

    /// Machine index of ordinal `device` (checked).
    pub fn machine(&self, device: i32) -> CuOutcome<usize> {
        self.require_init()?;
        usize::try_from(device)
            .ok()
            .and_then(|d| self.visible.get(d).copied())
            .ok_or(CuResult::INVALID_DEVICE)
    }

    /// `cuDeviceGetCount`.
    pub fn device_count(&self) -> CuOutcome<i32> {
        self.require_init()?;
        Ok(self.visible.len() as i32)
    }

    /// `cuDeviceGet`.
    pub fn device_get(&self, ordinal: i32) -> CuOutcome<i32> {
        self.machine(ordinal).map(|_| ordinal)
    }

    /// `cuDeviceGetName`.
    pub fn device_name(&self, device: i32) -> CuOutcome<String> {
        let machine = self.machine(device)?;
        Ok(self
            .state
            .device(machine)
            .map(state::read_name)
            .unwrap_or_default())
    }

    /// `cuDeviceGetUuid`.
    pub fn device_uuid(&self, device: i32) -> CuOutcome<[u8; 16]> {
        let machine = self.machine(device)?;
        self.state
            .device(machine)
            .map(state::read_uuid)
            .ok_or(CuResult::INVALID_DEVICE)
    }

    fn pci(&self, device: i32) -> CuOutcome<(u32, u32, u32)> {
        let machine = self.machine(device)?;
        let record = self.state.device(machine).ok_or(CuResult::INVALID_DEVICE)?;
        use std::sync::atomic::Ordering::Relaxed;
        Ok((
            record.pci_domain.load(Relaxed),
            record.pci_bus.load(Relaxed),
            record.pci_device.load(Relaxed),
        ))
    }

    /// `cuDeviceGetPCIBusId`.
    pub fn device_pci_bus_id(&self, device: i32) -> CuOutcome<String> {
        self.pci(device).map(config::format_pci)
    }

    fn capacity(&self, machine: usize) -> u64 {
        self.state
            .device(machine)
            .map(|d| d.capacity.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn used(&self, machine: usize) -> u64 {
        self.state
            .device(machine)
            .map(|d| d.used.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// `cuDeviceTotalMem_v2`.
    pub fn device_total_mem(&self, device: i32) -> CuOutcome<u64> {
        let machine = self.machine(device)?;
        Ok(self.capacity(machine))
    }

    /// `cuDeviceGetAttribute`.
    pub fn device_attribute(&self, attribute: i32, device: i32) -> CuOutcome<i32> {
        let (domain, bus, dev) = self.pci(device)?;
        let value = match attribute {
            1 => 1024,                    // MAX_THREADS_PER_BLOCK
            2 => 1024,                    // MAX_BLOCK_DIM_X
            3 => 1024,                    // MAX_BLOCK_DIM_Y
            4 => 64,                      // MAX_BLOCK_DIM_Z
            5 => i32::MAX,                // MAX_GRID_DIM_X
            6 | 7 => 65535,               // MAX_GRID_DIM_Y/Z
            8 => 49152,                   // MAX_SHARED_MEMORY_PER_BLOCK
            9 => 65536,                   // TOTAL_CONSTANT_MEMORY
            10 => 32,                     // WARP_SIZE
            11 => i32::MAX,               // MAX_PITCH
            12 => 65536,                  // MAX_REGISTERS_PER_BLOCK
            13 => 1_590_000,              // CLOCK_RATE (kHz)
            14 => PITCH_ALIGNMENT as i32, // TEXTURE_ALIGNMENT
            15 => 1,                      // GPU_OVERLAP
            16 => 16,                     // MULTIPROCESSOR_COUNT
            17 => 0,                      // KERNEL_EXEC_TIMEOUT
            18 => 0,                      // INTEGRATED
            19 => 1,                      // CAN_MAP_HOST_MEMORY
            20 => 0,                      // COMPUTE_MODE: default
            31 => 1,                      // CONCURRENT_KERNELS
            32 => 0,                      // ECC_ENABLED
            33 => bus as i32,             // PCI_BUS_ID
            34 => dev as i32,             // PCI_DEVICE_ID
            35 => 0,                      // TCC_DRIVER
            36 => 4_001_000,              // MEMORY_CLOCK_RATE (kHz)
            37 => 128,                    // GLOBAL_MEMORY_BUS_WIDTH
            38 => 1024 * 1024,            // L2_CACHE_SIZE
            39 => 1024,                   // MAX_THREADS_PER_MULTIPROCESSOR
            40 => 3,                      // ASYNC_ENGINE_COUNT
            41 => 1,                      // UNIFIED_ADDRESSING
            50 => domain as i32,          // PCI_DOMAIN_ID
            75 => 7,                      // COMPUTE_CAPABILITY_MAJOR
            76 => 5,                      // COMPUTE_CAPABILITY_MINOR
            81 => 65536,                  // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            82 => 65536,                  // MAX_REGISTERS_PER_MULTIPROCESSOR
            83 => 1,                      // MANAGED_MEMORY
            84 => 0,                      // MULTI_GPU_BOARD
            89 => 0,                      // CONCURRENT_MANAGED_ACCESS
            95 => 1,                      // COOPERATIVE_LAUNCH
            97 => 65536,                  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            102 => 1,                     // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
            115 => 1,                     // MEMORY_POOLS_SUPPORTED
            _ => return Err(CuResult::INVALID_VALUE),
        };
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mipmapped_levels_shrink_and_are_bounded() {
        assert_eq!(Driver::mipmapped_bytes(1024, 1024, 0, 4, 1), Ok(4 << 20));
        assert_eq!(
            Driver::mipmapped_bytes(1024, 1024, 0, 4, 2),
            Ok((4 << 20) + (1 << 20))
        );
        assert_eq!(Driver::mipmapped_bytes(4, 0, 0, 1, 3), Ok(4 + 2 + 1));
        assert_eq!(
            Driver::mipmapped_bytes(4, 0, 0, 1, 4),
            Err(CuResult::INVALID_VALUE)
        );
        assert_eq!(
            Driver::mipmapped_bytes(4, 4, 0, 1, 0),
            Err(CuResult::INVALID_VALUE)
        );
    }

    #[test]
    fn array_volumes() {
        assert_eq!(Driver::element_bytes(0x20, 4), Ok(16));
        assert_eq!(Driver::element_bytes(0x20, 3), Err(CuResult::INVALID_VALUE));
        assert_eq!(Driver::volume(10, 0, 0, 4), Ok(40));
        assert_eq!(Driver::volume(10, 0, 3, 4), Err(CuResult::INVALID_VALUE));
        assert_eq!(Driver::volume(10, 2, 3, 4), Ok(240));
    }
}
