//! The per-device lock: an owner word in shared memory, taken by compare-and-swap.
//!
//! Uncontended, taking and dropping the lock costs two atomic operations. A contender spins
//! briefly, then yields, then sleeps in short steps; every few milliseconds it asks whether the
//! owner is still alive (its slot's liveness lock, its slot generation). A dead owner's lock is
//! taken over by compare-and-swap, and the new owner is told so, so that it repairs the device
//! totals the dead owner may have left half-written. A live owner that does not progress (stopped
//! with SIGSTOP) makes the contender give up at its deadline instead of hanging, and a ledger
//! that can no longer be used (its file was truncated) makes it give up at once.
//!
//! Also here: the registration lock, an OFD byte lock, for the rare act of adding a device.

use std::fs::File;
use std::hint::spin_loop;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::liveness;

/// Spins before the first yield.
const SPINS: u32 = 100;
/// Yields before the first sleep.
const YIELDS: u32 = 20;
/// Sleep between attempts once spinning and yielding did not help.
const SLEEP_STEP: Duration = Duration::from_micros(50);
/// How often a contender checks whether the owner is dead.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(2);

/// The owner token of slot `index` in its generation `generation`: never 0.
pub fn token(index: u32, generation: u64) -> u64 {
    ((generation & 0xffff_ffff) << 32) | (u64::from(index) + 1)
}

/// The slot index and generation (low 32 bits) a token names, if the index part is not 0.
pub fn token_owner(token: u64) -> Option<(usize, u32)> {
    let index_plus_one = (token & 0xffff_ffff) as usize;
    index_plus_one
        .checked_sub(1)
        .map(|index| (index, (token >> 32) as u32))
}

/// A held device lock; dropping it releases the lock.
pub struct DeviceGuard<'a> {
    word: &'a AtomicU64,
    token: u64,
    /// The lock was taken over from a dead owner: the protected data must be repaired.
    pub taken_from_dead: bool,
}

impl<'a> DeviceGuard<'a> {
    fn new(word: &'a AtomicU64, token: u64, taken_from_dead: bool) -> DeviceGuard<'a> {
        DeviceGuard {
            word,
            token,
            taken_from_dead,
        }
    }
}

impl Drop for DeviceGuard<'_> {
    fn drop(&mut self) {
        // Only release what is still ours: a compare-and-swap, not a plain store. A contender
        // takes the lock over from an owner it judges dead by its slot (generation, liveness
        // lock), which a live thread can outlast, e.g. one still in a section while its process
        // leaves the ledger at exit; a plain store could then free the new owner's lock. Nor is a
        // garbage write by someone else undone.
        let _ = self
            .word
            .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// What a contender learned when it looked at the lock's owner.
pub enum Probe {
    /// The owner lives: keep waiting (until the deadline).
    OwnerAlive,
    /// The owner is gone: take the lock over.
    OwnerDead,
    /// Stop trying at once (the ledger can no longer be used).
    GiveUp,
}

/// The lock was not taken: not free before the deadline with its owner alive, or given up.
#[derive(Debug)]
pub struct Busy {
    /// How long we tried.
    pub waited: Duration,
}

/// Takes the lock `word` for `token`, waiting `patience` at most. `probe` is asked (every few
/// milliseconds) about the token found in the word. The uncontended path reads no clock.
#[inline]
pub fn acquire<'a>(
    word: &'a AtomicU64,
    token: u64,
    patience: Duration,
    probe: impl Fn(u64) -> Probe,
) -> Result<DeviceGuard<'a>, Busy> {
    if word
        .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return Ok(DeviceGuard::new(word, token, false));
    }
    acquire_contended(word, token, patience, probe)
}

#[cold]
fn acquire_contended<'a>(
    word: &'a AtomicU64,
    token: u64,
    patience: Duration,
    probe: impl Fn(u64) -> Probe,
) -> Result<DeviceGuard<'a>, Busy> {
    let start = Instant::now();
    let deadline = start + patience;
    let mut next_liveness_check = start + LIVENESS_INTERVAL;
    let mut attempts: u32 = 0;
    loop {
        let owner = word.load(Ordering::Relaxed);
        if owner == 0 {
            if word
                .compare_exchange_weak(0, token, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(DeviceGuard::new(word, token, false));
            }
            continue;
        }
        attempts = attempts.saturating_add(1);
        if attempts < SPINS {
            spin_loop();
            continue;
        }
        if attempts < SPINS + YIELDS {
            std::thread::yield_now();
            continue;
        }
        let now = Instant::now();
        if now >= next_liveness_check {
            next_liveness_check = now + LIVENESS_INTERVAL;
            match probe(owner) {
                Probe::GiveUp => {
                    return Err(Busy {
                        waited: now.saturating_duration_since(start),
                    });
                }
                Probe::OwnerDead
                    if owner != token
                        && word
                            .compare_exchange(owner, token, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok() =>
                {
                    return Ok(DeviceGuard::new(word, token, true));
                }
                Probe::OwnerDead | Probe::OwnerAlive => {}
            }
        }
        if now >= deadline {
            return Err(Busy {
                waited: now.saturating_duration_since(start),
            });
        }
        std::thread::sleep(SLEEP_STEP);
    }
}

/// Holds an OFD byte lock (the registration lock, a device's context-creation lock) on its own
/// open file description until dropped: threads of one process exclude each other too.
pub struct ByteLockGuard {
    file: File,
    byte: u64,
}

impl Drop for ByteLockGuard {
    fn drop(&mut self) {
        liveness::unlock(self.file.as_fd(), self.byte);
    }
}

/// Takes the OFD lock on `byte` through `file` (a fresh open file description), retrying until
/// `deadline`. The kernel drops it if we die.
pub fn acquire_byte_lock(file: File, byte: u64, deadline: Instant) -> Result<ByteLockGuard, Busy> {
    let start = Instant::now();
    loop {
        match liveness::try_lock(file.as_fd(), byte) {
            Ok(true) => return Ok(ByteLockGuard { file, byte }),
            Ok(false) => {}
            Err(_) => {
                return Err(Busy {
                    waited: start.elapsed(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(Busy {
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
