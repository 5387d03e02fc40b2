//! What this process holds, per pointer, handle, array, context and pool.
//!
//! Pure bookkeeping (no driver, no ledger): the guard decides, calls the driver and then records
//! or forgets here, under one in-process mutex that is never held across a driver call or a
//! ledger wait.
//!
//! Stream-ordered pools: memory freed with `cuMemFreeAsync` goes back to its pool, which keeps it
//! on the card until a synchronisation point releases what exceeds the pool's release threshold,
//! or until `cuMemPoolTrimTo` / `cuMemPoolDestroy`. The guard mirrors that and never under-counts:
//! freed pool memory stays charged as the pool's *cached* bytes, later pool allocations draw on the
//! cache first, and the cache is released only when the driver would have released it (sync with
//! a known threshold, trim, destroy).
//!
//! Physical allocations of the virtual memory API: the driver frees one when its handle is
//! released *and* its last mapping is unmapped (programs such as llama.cpp release the handle right
//! after mapping it). The tables count the references (the handle, each mapping, each
//! `cuMemRetainAllocationHandle`) and the charge is released with the last one.
#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxBuildHasher;
use vramguard_core::cuda::CuDevice;
use vramguard_core::ledger::DeviceId;

use super::pointers::PointerMap;

/// Something that holds device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A device pointer (`cuMemAlloc`, pitch, managed, pool allocations).
    Pointer(u64),
    /// A physical allocation of the virtual memory API (`cuMemCreate`).
    Physical(u64),
    /// An array or mipmapped array.
    Array(usize),
    /// A context created with `cuCtxCreate`.
    Context(usize),
}

/// A pool: the default pool of a device (used by `cuMemAllocAsync`) or one created explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKey {
    /// The default pool of a device ordinal.
    Default(CuDevice),
    /// A pool handle from `cuMemPoolCreate`.
    Handle(usize),
}

/// Bytes charged to one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The ledger record of the device.
    pub device: DeviceId,
    /// Bytes charged.
    pub bytes: u64,
}

/// One held thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it costs and where.
    pub charge: Charge,
    /// The pool it came from, for pool allocations.
    pub pool: Option<PoolKey>,
    /// The context that owns it (its destruction frees it); 0 when none or unknown.
    pub context: usize,
}

#[derive(Clone, Copy, Debug)]
struct PoolUse {
    device: DeviceId,
    in_use: u64,
    cached: u64,
}

#[derive(Clone, Copy, Debug)]
struct Primary {
    retains: u32,
    charge: Option<Charge>,
    /// The primary context's handle, as the retain returned it.
    handle: usize,
}

/// A map keyed by driver handles and addresses (device pointers have [`PointerMap`]), which the
/// driver hands out (nobody chooses them to collide): the Fx hash serves as well as SipHash at a
/// fraction of its cost on every allocation and free, and its final rotation spreads aligned
/// addresses over the buckets.
type HandleMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// The per-process tables.
#[derive(Default, Debug)]
pub struct Tables {
    /// Device pointers ([`Key::Pointer`]), the one lookup of every allocation and free.
    pointers: PointerMap<Entry>,
    /// Every other held thing.
    held: HandleMap<Key, Entry>,
    pool_handles: HandleMap<usize, (PoolKey, CuDevice)>,
    pools: HandleMap<PoolKey, PoolUse>,
    primaries: HandleMap<CuDevice, Primary>,
    /// References to each known physical handle (created with a count of 1).
    physical_refs: HandleMap<u64, u32>,
    /// Mappings by start address: (size, physical handle).
    mappings: BTreeMap<u64, (u64, u64)>,
}

impl Tables {
    /// Records a held thing (replacing a stale entry of the same key, whose charge is returned).
    #[inline]
    pub fn insert(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        if let Key::Physical(handle) = key {
            self.physical_refs.insert(handle, 1);
        }
        if let Some(pool) = entry.pool
            && let Some(use_) = self.pools.get_mut(&pool)
        {
            use_.in_use = use_.in_use.saturating_add(entry.charge.bytes);
        }
        self.put(key, entry)
    }

    /// Stores `entry` under `key` in the map for its kind.
    #[inline]
    fn put(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        match key {
            Key::Pointer(pointer) => self.pointers.insert(pointer, entry),
            other => self.held.insert(other, entry),
        }
    }

    /// Removes a held thing (before the driver frees it; [`Tables::insert`] puts it back if the
    /// driver refuses).
    #[inline]
    pub fn remove(&mut self, key: Key) -> Option<Entry> {
        match key {
            Key::Pointer(pointer) => self.pointers.remove(pointer),
            other => self.held.remove(&other),
        }
    }

    /// Puts back an entry removed by [`Tables::remove`] without touching pool figures.
    pub fn restore(&mut self, key: Key, entry: Entry) {
        self.put(key, entry);
    }

    /// Every held thing with its key.
    fn entries(&self) -> impl Iterator<Item = (Key, Entry)> + '_ {
        self.pointers
            .iter()
            .map(|(pointer, entry)| (Key::Pointer(pointer), entry))
            .chain(self.held.iter().map(|(key, entry)| (*key, *entry)))
    }

    /// Everything held (for tests).
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        let held: u64 = self.entries().map(|(_, e)| e.charge.bytes).sum();
        let cached: u64 = self.pools.values().map(|p| p.cached).sum();
        let primaries: u64 = self
            .primaries
            .values()
            .filter_map(|p| p.charge)
            .map(|c| c.bytes)
            .sum();
        held + cached + primaries
    }

    // ----- physical memory of the virtual memory API --------------------------------------------

    /// One more reference to a known physical handle (a mapping or a retained handle).
    pub fn physical_referenced(&mut self, handle: u64) {
        if let Some(refs) = self.physical_refs.get_mut(&handle) {
            *refs = refs.saturating_add(1);
        }
    }

    /// One reference less; returns the entry to release when it was the last. Call
    /// [`Tables::physical_restore`] if the driver then refuses the operation.
    pub fn physical_unreferenced(&mut self, handle: u64) -> Option<Entry> {
        let refs = self.physical_refs.get_mut(&handle)?;
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return None;
        }
        self.physical_refs.remove(&handle);
        self.held.remove(&Key::Physical(handle))
    }

    /// Undoes [`Tables::physical_unreferenced`].
    pub fn physical_restore(&mut self, handle: u64, released: Option<Entry>) {
        match released {
            Some(entry) => {
                self.held.insert(Key::Physical(handle), entry);
                self.physical_refs.insert(handle, 1);
            }
            None => self.physical_referenced(handle),
        }
    }

    /// Records a mapping of `handle` at `start`.
    pub fn mapped(&mut self, start: u64, size: u64, handle: u64) {
        if self.physical_refs.contains_key(&handle) {
            self.mappings.insert(start, (size, handle));
            self.physical_referenced(handle);
        }
    }

    /// Removes the mappings that start inside `[start, start + size)`; returns their handles.
    pub fn unmapped(&mut self, start: u64, size: u64) -> Vec<(u64, u64, u64)> {
        let end = start.saturating_add(size);
        let starts: Vec<u64> = self.mappings.range(start..end).map(|(s, _)| *s).collect();
        starts
            .into_iter()
            .filter_map(|s| {
                self.mappings
                    .remove(&s)
                    .map(|(size, handle)| (s, size, handle))
            })
            .collect()
    }

    /// Puts back mappings removed by [`Tables::unmapped`].
    pub fn remap(&mut self, mappings: &[(u64, u64, u64)]) {
        for (start, size, handle) in mappings {
            self.mappings.insert(*start, (*size, *handle));
        }
    }

    // ----- pools -------------------------------------------------------------------------------

    /// Remembers which device a pool handle belongs to.
    pub fn learn_pool(&mut self, handle: usize, key: PoolKey, ordinal: CuDevice) {
        self.pool_handles.insert(handle, (key, ordinal));
    }

    /// The pool key and device ordinal of a known pool handle.
    pub fn pool_of_handle(&self, handle: usize) -> Option<(PoolKey, CuDevice)> {
        self.pool_handles.get(&handle).copied()
    }

    /// Takes up to `bytes` from the pool's cache for a new allocation; returns how much came from
    /// the cache (already charged). The rest must be admitted anew.
    pub fn draw_from_cache(&mut self, pool: PoolKey, device: DeviceId, bytes: u64) -> u64 {
        let use_ = self.pools.entry(pool).or_insert(PoolUse {
            device,
            in_use: 0,
            cached: 0,
        });
        let drawn = use_.cached.min(bytes);
        use_.cached -= drawn;
        drawn
    }

    /// Gives back what [`Tables::draw_from_cache`] took, when the allocation failed.
    pub fn undraw(&mut self, pool: PoolKey, drawn: u64) {
        if let Some(use_) = self.pools.get_mut(&pool) {
            use_.cached = use_.cached.saturating_add(drawn);
        }
    }

    /// A freed pool allocation returns to its pool's cache (still charged). Returns the charge to
    /// release at once when the pool is gone.
    pub fn return_to_pool(&mut self, pool: PoolKey, charge: Charge) -> Option<Charge> {
        match self.pools.get_mut(&pool) {
            Some(use_) => {
                use_.in_use = use_.in_use.saturating_sub(charge.bytes);
                use_.cached = use_.cached.saturating_add(charge.bytes);
                None
            }
            None => Some(charge),
        }
    }

    /// The pool releases cached bytes beyond `keep` (`cuMemPoolTrimTo`, or a synchronisation
    /// with release threshold `keep`). Returns what to release. The driver may keep less (it
    /// counts `keep` against everything the pool reserves); keeping `keep` cached bytes is the
    /// side that never under-counts.
    pub fn trim_pool(&mut self, pool: PoolKey, keep: u64) -> Option<Charge> {
        let use_ = self.pools.get_mut(&pool)?;
        let kept = use_.cached.min(keep);
        let released = use_.cached - kept;
        use_.cached = kept;
        (released > 0).then_some(Charge {
            device: use_.device,
            bytes: released,
        })
    }

    /// The pool is destroyed: its cache is released; allocations still out are released when
    /// freed. Returns what to release now.
    pub fn destroy_pool(&mut self, handle: usize) -> Option<Charge> {
        let (key, _) = self.pool_handles.remove(&handle)?;
        let use_ = self.pools.remove(&key)?;
        (use_.cached > 0).then_some(Charge {
            device: use_.device,
            bytes: use_.cached,
        })
    }

    /// Pools holding cached bytes on `ordinal` (all devices if `None`), with their handles if known.
    pub fn pools_with_cache(&self, ordinal: Option<CuDevice>) -> Vec<(PoolKey, Option<usize>)> {
        self.pools
            .iter()
            .filter(|(_, u)| u.cached > 0)
            .filter(|(key, _)| match (ordinal, key) {
                (None, _) => true,
                (Some(o), PoolKey::Default(d)) => *d == o,
                (Some(o), PoolKey::Handle(h)) => {
                    self.pool_handles.get(h).is_some_and(|(_, d)| *d == o)
                }
            })
            .map(|(key, _)| {
                let handle = self
                    .pool_handles
                    .iter()
                    .find(|(_, (k, _))| k == key)
                    .map(|(h, _)| *h);
                (*key, handle)
            })
            .collect()
    }

    // ----- primary contexts --------------------------------------------------------------------

    /// True when the next retain of `ordinal` is the first (its context must be admitted).
    pub fn primary_needs_charge(&self, ordinal: CuDevice) -> bool {
        self.primaries
            .get(&ordinal)
            .is_none_or(|p| p.charge.is_none())
    }

    /// The handle of `ordinal`'s primary context if a release (or, with `reset`, a reset) now
    /// destroys it: its last retain, or any reset.
    pub fn primary_handle_if_gone(&self, ordinal: CuDevice, reset: bool) -> Option<usize> {
        self.primaries
            .get(&ordinal)
            .filter(|p| reset || p.retains <= 1)
            .map(|p| p.handle)
    }

    /// A retain of context `handle` succeeded; `charge` is the context's cost when this was the
    /// first retain.
    pub fn primary_retained(
        &mut self,
        ordinal: CuDevice,
        handle: usize,
        charge: Option<Charge>,
    ) -> Option<Charge> {
        let p = self.primaries.entry(ordinal).or_insert(Primary {
            retains: 0,
            charge: None,
            handle,
        });
        p.handle = handle;
        p.retains = p.retains.saturating_add(1);
        match (p.charge, charge) {
            // A racing first retain already charged: the second charge is returned to release.
            (Some(_), Some(extra)) => Some(extra),
            (None, c) => {
                p.charge = c;
                None
            }
            (Some(_), None) => None,
        }
    }

    /// A release succeeded. When it was the last retain the context is gone: returns its charge.
    pub fn primary_released(&mut self, ordinal: CuDevice) -> Option<Charge> {
        self.primary_drop(ordinal, |retains| retains.saturating_sub(1))
    }

    /// A reset succeeded: the context is gone whatever the count: returns its charge.
    pub fn primary_reset(&mut self, ordinal: CuDevice) -> Option<Charge> {
        self.primary_drop(ordinal, |_| 0)
    }

    /// Sets the retain count of `ordinal`'s primary context to `retains(count)`; at zero the
    /// context is gone: returns its own charge (what it owned is taken out beforehand, with
    /// [`Tables::take_context`]).
    fn primary_drop(
        &mut self,
        ordinal: CuDevice,
        retains: impl FnOnce(u32) -> u32,
    ) -> Option<Charge> {
        let p = self.primaries.get_mut(&ordinal)?;
        p.retains = retains(p.retains);
        if p.retains > 0 {
            return None;
        }
        p.charge.take()
    }

    /// Takes out everything context `handle` owns, before the driver destroys it: from that
    /// moment the driver may give the same handle to a new context, whose memory is not the old
    /// one's. [`Tables::put_back`] undoes it if the driver refuses.
    pub fn take_context(&mut self, handle: usize) -> Vec<(Key, Entry)> {
        if handle == 0 {
            return Vec::new();
        }
        let owned: Vec<Key> = self
            .entries()
            .filter(|(_, e)| e.context == handle)
            .map(|(k, _)| k)
            .collect();
        owned
            .into_iter()
            .filter_map(|k| self.remove(k).map(|e| (k, e)))
            .collect()
    }

    /// Puts back what [`Tables::take_context`] took.
    pub fn put_back(&mut self, entries: Vec<(Key, Entry)>) {
        for (key, entry) in entries {
            self.put(key, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device record of a throw-away ledger (DeviceId has no public constructor).
    fn device() -> DeviceId {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vramguard-tables-{}-{n}", std::process::id()));
        let ledger = vramguard_core::ledger::Ledger::open(&dir).expect("ledger in a temp dir");
        let id = ledger
            .register_device([7; 16], "test", 1 << 30, 1 << 30)
            .expect("register");
        drop(ledger);
        let _ = std::fs::remove_dir_all(&dir);
        id
    }

    #[test]
    fn aligned_addresses_spread_over_buckets() {
        use std::hash::BuildHasher;
        let build = FxBuildHasher;
        let buckets: std::collections::HashSet<u64> = (1..=1024u64)
            .map(|i| build.hash_one(Key::Pointer(0x7f00_0000_0000 + i * (2 << 20))) & 1023)
            .collect();
        assert!(buckets.len() > 600, "{} buckets of 1024", buckets.len());
    }

    #[test]
    fn pool_cache_is_charged_until_trimmed() {
        let mut t = Tables::default();
        let pool = PoolKey::Default(0);
        let dev = device();
        assert_eq!(t.draw_from_cache(pool, dev, 100), 0);
        t.insert(
            Key::Pointer(1),
            Entry {
                charge: Charge {
                    device: dev,
                    bytes: 100,
                },
                pool: Some(pool),
                context: 0,
            },
        );
        let e = t.remove(Key::Pointer(1)).unwrap();
        assert_eq!(t.return_to_pool(pool, e.charge), None);
        assert_eq!(t.total(), 100, "freed pool memory stays charged");
        assert_eq!(t.draw_from_cache(pool, dev, 60), 60);
        t.insert(
            Key::Pointer(2),
            Entry {
                charge: Charge {
                    device: dev,
                    bytes: 60,
                },
                pool: Some(pool),
                context: 0,
            },
        );
        assert_eq!(t.total(), 100);
        assert_eq!(t.trim_pool(pool, 0).map(|c| c.bytes), Some(40));
        assert_eq!(t.total(), 60);
    }

    #[test]
    fn physical_memory_is_released_with_its_last_reference() {
        let mut t = Tables::default();
        let c = Charge {
            device: device(),
            bytes: 20,
        };
        t.insert(
            Key::Physical(9),
            Entry {
                charge: c,
                pool: None,
                context: 0,
            },
        );
        t.mapped(0x1000, 20, 9);
        t.mapped(0x5000, 20, 77); // an unknown handle is not tracked
        // Released right after mapping (llama.cpp): still charged while mapped.
        assert_eq!(t.physical_unreferenced(9), None);
        assert_eq!(t.total(), 20);
        let gone = t.unmapped(0x1000, 20);
        assert_eq!(gone, [(0x1000, 20, 9)]);
        assert_eq!(t.physical_unreferenced(9).map(|e| e.charge), Some(c));
        assert_eq!(t.total(), 0);
        assert!(t.unmapped(0, u64::MAX).is_empty());
    }

    #[test]
    fn primary_context_is_charged_once_and_released_at_the_last_release() {
        let mut t = Tables::default();
        let c = Charge {
            device: device(),
            bytes: 300,
        };
        assert!(t.primary_needs_charge(0));
        assert_eq!(t.primary_retained(0, 0x77, Some(c)), None);
        assert!(!t.primary_needs_charge(0));
        assert_eq!(t.primary_retained(0, 0x77, None), None);
        let owned = Charge {
            device: c.device,
            bytes: 5,
        };
        let entry = |context| Entry {
            charge: owned,
            pool: None,
            context,
        };
        t.insert(Key::Pointer(1), entry(0x77));
        t.insert(Key::Pointer(2), entry(0x99));
        assert_eq!(t.primary_handle_if_gone(0, false), None, "two retains");
        assert_eq!(t.primary_released(0), None);
        // The last release destroys the context and what it owned, not another context's memory.
        assert_eq!(t.primary_handle_if_gone(0, false), Some(0x77));
        let owned_by_primary = t.take_context(0x77);
        assert_eq!(owned_by_primary, [(Key::Pointer(1), entry(0x77))]);
        assert_eq!(t.primary_released(0), Some(c));
        assert_eq!(t.primary_released(0), None);
        // A refused destruction puts back what was taken.
        let owned_by_other = t.take_context(0x99);
        assert_eq!(owned_by_other, [(Key::Pointer(2), entry(0x99))]);
        t.put_back(owned_by_other);
        assert_eq!(t.total(), 5);
        assert_eq!(t.take_context(0x99), [(Key::Pointer(2), entry(0x99))]);
        assert_eq!(t.total(), 0);
    }
}
