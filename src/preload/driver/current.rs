//! The current context and the device it belongs to, for one driver call per allocation.
//!
//! An allocation needs both: the device to charge, and the context that owns the memory (its
//! destruction frees it). The driver is asked only for the current context (`cuCtxGetCurrent`, a
//! thread-local read in the real driver); the context's device comes from a small cache shared
//! by all threads, filled by `cuCtxGetDevice` the first time a context is seen. A context's device
//! never changes while it lives, but a destroyed context's handle may be reused for a new one on
//! another device: every destruction the guard sees (`cuCtxDestroy`, a primary context's release
//! or reset) and every attach (a forked child) bumps a generation, and an entry answers only for
//! the generation it was filled in.
//!
//! The cache is direct-mapped by the context handle; each entry is a sequence lock (a counter
//! that is odd while the entry is written), so a reader never combines one context with another's
//! device, and neither readers nor writers ever wait: a reader that meets a write in progress
//! asks the driver, a writer that meets another writer leaves the entry to it. (A thread-local
//! cache would cost a call into the dynamic loader per allocation: the library's thread-locals
//! are reached through `__tls_get_addr`.)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use vramguard_core::cuda::CuDevice;

use super::call;
use crate::functions::Handle;

/// Bumped whenever a context may have gone (its handle may then be reused).
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Entries of the cache (a power of two): programs use one context per device, a few at most.
const ENTRIES: usize = 64;

/// One context whose device is known, behind its sequence counter.
struct Entry {
    /// Odd while a writer fills the entry.
    sequence: AtomicU32,
    /// The context handle (0: empty).
    context: AtomicU64,
    /// The generation the entry was filled in (high half) and the device ordinal (low half).
    device: AtomicU64,
}

/// Contexts and their devices, shared by all threads.
struct DeviceCache {
    entries: [Entry; ENTRIES],
}

impl DeviceCache {
    const fn new() -> DeviceCache {
        DeviceCache {
            entries: [const {
                Entry {
                    sequence: AtomicU32::new(0),
                    context: AtomicU64::new(0),
                    device: AtomicU64::new(0),
                }
            }; ENTRIES],
        }
    }

    fn entry(&self, context: usize) -> &Entry {
        // Fibonacci hashing: the top bits of the product pick the entry.
        let index = (context as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ENTRIES.ilog2());
        &self.entries[index as usize]
    }

    /// The device of `context` if it was filled in `generation`.
    #[inline]
    fn get(&self, context: usize, generation: u32) -> Option<CuDevice> {
        let entry = self.entry(context);
        let before = entry.sequence.load(Ordering::Acquire);
        let cached = entry.context.load(Ordering::Relaxed);
        let device = entry.device.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let unchanged = entry.sequence.load(Ordering::Relaxed) == before;
        (unchanged
            && before.is_multiple_of(2)
            && cached == context as u64
            && (device >> 32) as u32 == generation)
            .then_some(device as u32 as CuDevice)
    }

    /// Records the device of `context`, found in `generation` (skipped if another thread is
    /// writing the entry).
    fn put(&self, context: usize, generation: u32, ordinal: CuDevice) {
        let entry = self.entry(context);
        let sequence = entry.sequence.load(Ordering::Relaxed);
        if !sequence.is_multiple_of(2)
            || entry
                .sequence
                .compare_exchange(
                    sequence,
                    sequence.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        // Readers that see any of the stores below then see the odd counter.
        fence(Ordering::Release);
        entry.context.store(context as u64, Ordering::Relaxed);
        entry.device.store(
            (u64::from(generation) << 32) | u64::from(ordinal as u32),
            Ordering::Relaxed,
        );
        entry
            .sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }
}

static DEVICES: DeviceCache = DeviceCache::new();

/// The generation as entries record it (its low 32 bits: an entry could be taken for current
/// again only after four billion context destructions while it sat unused).
fn generation() -> u32 {
    GENERATION.load(Ordering::Acquire) as u32
}

/// The current context (non-null) and its device ordinal; `None` when no context is current or
/// the driver cannot tell.
pub fn context_and_device() -> Option<(usize, CuDevice)> {
    let context = current_context();
    if context == 0 {
        return None;
    }
    // Read before the driver is asked: a destruction racing with the question makes the entry
    // stale at once.
    let generation = generation();
    if let Some(ordinal) = DEVICES.get(context, generation) {
        return Some((context, ordinal));
    }
    let ordinal = current_ordinal()?;
    DEVICES.put(context, generation, ordinal);
    Some((context, ordinal))
}

/// Contexts may have been destroyed (or the process is a fresh child): forget every cached
/// context-to-device answer.
pub fn forget_contexts() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The current context's handle (0 if none or unknown).
pub fn current_context() -> usize {
    let mut context: Handle = std::ptr::null_mut();
    // SAFETY: `context` is a live pointer-sized slot the driver writes.
    if unsafe { call::cuCtxGetCurrent(&mut context) }.is_success() {
        context as usize
    } else {
        0
    }
}

/// The ordinal of the current context's device, asked of the driver (`cuCtxGetDevice`).
pub fn current_ordinal() -> Option<CuDevice> {
    let mut ordinal: CuDevice = -1;
    // SAFETY: `ordinal` is a live int the driver writes.
    unsafe { call::cuCtxGetDevice(&mut ordinal) }
        .is_success()
        .then_some(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_answers_only_for_its_context_and_generation() {
        let cache = DeviceCache::new();
        assert_eq!(cache.get(0x5000, 7), None);
        cache.put(0x5000, 7, 3);
        assert_eq!(cache.get(0x5000, 7), Some(3));
        assert_eq!(cache.get(0x5000, 8), None, "a later generation");
        assert_eq!(cache.get(0x6000, 7), None, "another context");
        cache.put(0x5000, 8, 1);
        assert_eq!(cache.get(0x5000, 8), Some(1));
        assert_eq!(cache.get(0x5000, 7), None);
    }

    /// Contexts that share one entry of `cache` (at least two).
    fn colliding_contexts(cache: &DeviceCache, count: usize) -> Vec<usize> {
        let contexts: Vec<usize> = (1..100_000usize)
            .map(|i| i * 0x1000)
            .filter(|c| std::ptr::eq(cache.entry(*c), cache.entry(0x1000)))
            .take(count)
            .collect();
        assert!(contexts.len() >= 2, "no colliding contexts found");
        contexts
    }

    #[test]
    fn contexts_sharing_an_entry_replace_each_other() {
        let cache = DeviceCache::new();
        let contexts = colliding_contexts(&cache, 2);
        let (first, second) = (contexts[0], contexts[1]);
        cache.put(first, 1, 4);
        assert_eq!(cache.get(first, 1), Some(4));
        cache.put(second, 1, 5);
        assert_eq!(cache.get(second, 1), Some(5));
        assert_eq!(
            cache.get(first, 1),
            None,
            "replaced by a context sharing its entry"
        );
    }

    #[test]
    fn an_entry_being_written_is_neither_read_nor_written() {
        let cache = DeviceCache::new();
        cache.put(0x5000, 1, 3);
        let entry = cache.entry(0x5000);
        // Another writer is in the middle of its stores.
        entry.sequence.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            cache.get(0x5000, 1),
            None,
            "a reader asks the driver instead"
        );
        cache.put(0x5000, 1, 6);
        assert_eq!(
            entry.device.load(Ordering::Relaxed) as u32,
            3,
            "left to that writer"
        );
        entry.sequence.fetch_add(1, Ordering::Relaxed);
        assert_eq!(cache.get(0x5000, 1), Some(3));
    }

    #[test]
    fn a_reader_never_mixes_two_writes() {
        // Contexts that share one entry, written by two threads while two others read: every
        // answer must be the device written together with the context asked about. Whether a
        // read hits or misses depends on the scheduler and asserts nothing (the single-threaded
        // tests above show hits); each reader keeps reading until the writers have written many
        // times, so reads and writes overlap however the threads are scheduled.
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};

        /// Stops the writers when a reader ends, also by a failed assertion.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }

        const READS: usize = 200_000;
        const WRITES: u64 = 10_000;
        let cache = Arc::new(DeviceCache::new());
        let contexts = colliding_contexts(&cache, 4);
        let device_of = |context: usize| (context / 0x1000 % 60) as CuDevice;
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        // Only catches a hang: the writers never scheduled at all.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut threads = Vec::new();
        for writer in 0..2 {
            let (cache, contexts, stop, writes) = (
                cache.clone(),
                contexts.clone(),
                stop.clone(),
                writes.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut n = writer;
                while !stop.load(Ordering::Relaxed) {
                    let context = contexts[n % contexts.len()];
                    cache.put(context, 1, device_of(context));
                    writes.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    // A pause between writes, spent on the core (a busy machine would make a
                    // yield last a whole time slice): the readers meet settled entries as well
                    // as writes in progress, which is what catches a broken sequence check.
                    for _ in 0..1000 {
                        std::hint::spin_loop();
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (cache, contexts, stop, writes) = (
                cache.clone(),
                contexts.clone(),
                stop.clone(),
                writes.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let _stop = StopOnDrop(stop.clone());
                let mut n = 0usize;
                // (The stop flag set before enough writes: the other reader failed.)
                while n < READS
                    || (writes.load(Ordering::Relaxed) < WRITES && !stop.load(Ordering::Relaxed))
                {
                    let context = contexts[n % contexts.len()];
                    if let Some(ordinal) = cache.get(context, 1) {
                        assert_eq!(ordinal, device_of(context), "context {context:#x}");
                    }
                    n += 1;
                    if n.is_multiple_of(4096) {
                        assert!(Instant::now() < deadline, "the writers never ran");
                    }
                }
            }));
        }
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
