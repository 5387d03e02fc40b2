//! When an allocation must ask the driver for its free memory, and what the last answer said.
//!
//! The ledger sees only guarded processes. Memory it does not account for (programs without the
//! guard, the display server, contexts that cost more than `VRAMGUARD_CONTEXT_SIZE`) is visible
//! only in the driver's own free-memory figure (`cuMemGetInfo_v2`, an ioctl on a real driver).
//! Asking it on every allocation would double the cost of an allocation, so each process keeps,
//! per device, the last figure of that *unaccounted* memory (what the driver says is used, less
//! what the ledger holds) and asks the driver again only when
//!
//! - the figure is older than [`STALE_AFTER`] (10 ms, clock tick included), or
//! - the ledger's charged total after the request, plus the unaccounted figure, plus the reserve,
//!   comes within [`margin`] of the card's capacity (`max(256 MiB, capacity / 16)`).
//!
//! Far from the edge, an unguarded program would have to take more than the margin within 10 ms
//! for a guarded request to reach a driver that cannot hold it (the driver would then refuse it
//! cleanly with `CUDA_ERROR_OUT_OF_MEMORY`; it never over-commits). Near the edge, every request
//! is checked against a fresh driver figure, exactly as without the cache.
//!
//! A fresh figure is not believed lower than the one before it until a second observation
//! confirms it: a figure taken while another guarded process has already given memory back to the
//! driver but not yet to the ledger reads too low (the memory counts as held but is free), and one
//! such unlucky observation must not open the fast path for 10 ms.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// How long a driver figure is trusted: an allocation of another program is seen by the guard's
/// admission within this time, and at once near the edge.
pub const STALE_AFTER: Duration = Duration::from_millis(10);

/// The smallest margin: within it of full, every request asks the driver.
pub const MIN_MARGIN: u64 = 256 << 20;

/// How close to full (after the reserve) the card may come before every request asks the driver:
/// `max(256 MiB, capacity / 16)` (256 MiB up to a 4 GiB card, 1.5 GiB on a 24 GiB one).
pub fn margin(capacity: u64) -> u64 {
    MIN_MARGIN.max(capacity / 16)
}

/// Memory on the device that the ledger does not account for: what the driver says is used, less
/// what the ledger holds there (never below zero).
pub fn unaccounted(capacity: u64, driver_free: u64, ledger_holds: u64) -> u64 {
    capacity
        .saturating_sub(driver_free)
        .saturating_sub(ledger_holds)
}

/// The edge of a card: what the ledger's charged total and the unaccounted memory may reach
/// before every request asks the driver (capacity less the reserve and the margin).
pub fn edge(capacity: u64, reserve: u64) -> u64 {
    capacity
        .saturating_sub(reserve)
        .saturating_sub(margin(capacity))
}

/// Whether a request is far enough from the edge to be admitted on the cached figure: the
/// ledger's charged total after it plus the unaccounted memory stay within `edge`, i.e. the
/// reserve and the margin are still free.
#[inline]
pub fn far_from_edge(charged_after: u64, unaccounted: u64, edge: u64) -> bool {
    charged_after.saturating_add(unaccounted) <= edge
}

/// The last driver observation of one device in this process.
#[derive(Default)]
pub struct Watch {
    /// The unaccounted memory the fast path believes (the larger of the last two observations).
    unaccounted: AtomicU64,
    /// When it was observed, on [`now`]'s clock (0: never, or invalidated).
    observed_at: AtomicU64,
    /// The last raw observation (writers only; never held across a driver call).
    last_raw: Mutex<Option<u64>>,
}

impl Watch {
    /// The unaccounted figure if it is fresh at `now`.
    pub fn fresh(&self, now: u64) -> Option<u64> {
        let at = self.observed_at.load(Ordering::Acquire);
        (at != 0 && now.saturating_sub(at) < fresh_for_ns()).then(|| {
            // Stored before `observed_at` (Release/Acquire): at least as new as the time read.
            self.unaccounted.load(Ordering::Relaxed)
        })
    }

    /// Records a driver observation of `unaccounted` bytes made at `now`.
    pub fn observe(&self, unaccounted: u64, now: u64) {
        let mut last_raw = self.last_raw.lock();
        let believed = last_raw.map_or(unaccounted, |last| last.max(unaccounted));
        *last_raw = Some(unaccounted);
        self.unaccounted.store(believed, Ordering::Relaxed);
        self.observed_at.store(now.max(1), Ordering::Release);
    }

    /// The driver refused what the guard admitted: the next request asks the driver again.
    pub fn invalidate(&self) {
        self.observed_at.store(0, Ordering::Release);
    }
}

const CLOCK_UNKNOWN: u8 = 0;
const CLOCK_COARSE: u8 = 1;
const CLOCK_PRECISE: u8 = 2;
static CLOCK: AtomicU8 = AtomicU8::new(CLOCK_UNKNOWN);
static COARSE_TICK_NS: AtomicU64 = AtomicU64::new(0);

/// How long (on [`now`]'s clock) a figure may be used so that it is never older than
/// [`STALE_AFTER`] in real time: the coarse clock lags by up to one tick.
fn fresh_for_ns() -> u64 {
    let limit = STALE_AFTER.as_nanos() as u64;
    match CLOCK.load(Ordering::Relaxed) {
        CLOCK_COARSE => limit.saturating_sub(COARSE_TICK_NS.load(Ordering::Relaxed)),
        _ => limit,
    }
}

/// Monotonic nanoseconds. `CLOCK_MONOTONIC_COARSE` (a few ns to read, advanced every kernel tick)
/// when its tick is at most half of [`STALE_AFTER`], else `CLOCK_MONOTONIC`.
pub fn now() -> u64 {
    let clock = match CLOCK.load(Ordering::Relaxed) {
        CLOCK_UNKNOWN => choose_clock(),
        known => known,
    };
    let id = if clock == CLOCK_COARSE {
        libc::CLOCK_MONOTONIC_COARSE
    } else {
        libc::CLOCK_MONOTONIC
    };
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a live timespec the kernel (vDSO) writes.
    unsafe { libc::clock_gettime(id, &mut time) };
    (time.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(time.tv_nsec as u64)
}

fn choose_clock() -> u8 {
    let mut tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `tick` is a live timespec the kernel writes.
    let known = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut tick) } == 0;
    let tick_ns = (tick.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(tick.tv_nsec as u64);
    let clock = if known && tick_ns > 0 && tick_ns <= STALE_AFTER.as_nanos() as u64 / 2 {
        COARSE_TICK_NS.store(tick_ns, Ordering::Relaxed);
        CLOCK_COARSE
    } else {
        CLOCK_PRECISE
    };
    CLOCK.store(clock, Ordering::Relaxed);
    clock
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_margin_is_256_mib_or_a_sixteenth() {
        assert_eq!(margin(4 * GIB), 256 * MIB);
        assert_eq!(margin(2 * GIB), 256 * MIB);
        assert_eq!(margin(24 * GIB), 1536 * MIB);
        assert_eq!(margin(0), 256 * MIB);
    }

    #[test]
    fn near_the_edge_the_driver_is_asked() {
        // 4 GiB card, 256 MiB reserve, 256 MiB margin: the fast path ends at 3.5 GiB charged.
        let edge = edge(4 * GIB, 256 * MIB);
        assert_eq!(edge, 3584 * MIB);
        assert!(far_from_edge(3584 * MIB, 0, edge));
        assert!(!far_from_edge(3584 * MIB + 1, 0, edge));
        // An unguarded program's 1 GiB moves the edge by 1 GiB.
        assert!(far_from_edge(2560 * MIB, GIB, edge));
        assert!(!far_from_edge(2560 * MIB + 1, GIB, edge));
        // No wrap-around on absurd figures.
        assert!(!far_from_edge(u64::MAX, u64::MAX, edge));
        assert_eq!(super::edge(4 * GIB, u64::MAX), 0);
        assert_eq!(super::edge(0, 0), 0);
        assert!(
            far_from_edge(0, 0, 0),
            "an empty ledger on a card with no room left"
        );
    }

    #[test]
    fn unaccounted_memory_never_wraps() {
        assert_eq!(unaccounted(4 * GIB, GIB, 2 * GIB), GIB);
        // The ledger holds more than the driver shows used (contexts cheaper than estimated).
        assert_eq!(unaccounted(4 * GIB, 3 * GIB, 2 * GIB), 0);
        assert_eq!(unaccounted(4 * GIB, 5 * GIB, 0), 0);
    }

    #[test]
    fn a_figure_expires_and_a_lower_one_needs_confirming() {
        let _ = now(); // the clock is chosen, so that `fresh_for_ns` no longer changes
        let watch = Watch::default();
        let t0 = 1_000_000_000;
        assert_eq!(watch.fresh(t0), None, "never observed");
        watch.observe(GIB, t0);
        assert_eq!(watch.fresh(t0), Some(GIB));
        assert_eq!(watch.fresh(t0 + fresh_for_ns() - 1), Some(GIB));
        assert_eq!(watch.fresh(t0 + fresh_for_ns()), None, "stale");
        assert!(fresh_for_ns() <= STALE_AFTER.as_nanos() as u64);
        // A higher figure is believed at once; a lower one only when seen twice in a row.
        watch.observe(2 * GIB, t0 + 1);
        assert_eq!(watch.fresh(t0 + 1), Some(2 * GIB));
        watch.observe(0, t0 + 2);
        assert_eq!(watch.fresh(t0 + 2), Some(2 * GIB));
        watch.observe(0, t0 + 3);
        assert_eq!(watch.fresh(t0 + 3), Some(0));
        watch.invalidate();
        assert_eq!(watch.fresh(t0 + 3), None);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now();
        std::thread::sleep(STALE_AFTER);
        let b = now();
        assert!(b > a && b - a >= fresh_for_ns(), "{a} then {b}");
    }
}
