//! `ManualClock`: the clock seam (`kv_server::clock::Clock`) driven by the test. Time moves only
//! when the test sets or advances it, so hybrid logical clocks, tombstone grace periods and hint
//! ages can be checked at exact instants; a skew (what chaos injects on real nodes) is added on
//! top, as `SystemClock` and `TokioClock` do.

use kv_server::clock::Clock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// A wall clock that reads what the test last set, plus a skew.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
    skew_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`, shared (nodes hold it as `Arc<dyn Clock>`).
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicU64::new(now_ms),
            skew_ms: AtomicI64::new(0),
        })
    }

    /// Sets the unskewed time; it may go backwards, as a real clock stepped by NTP can.
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the unskewed time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The unskewed time (what every correct node would read).
    pub fn true_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    /// The skew currently added by `set_skew_ms`.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        let skewed = i128::from(self.true_ms()) + i128::from(self.skew_ms());
        // A skew larger than the time itself reads as the epoch, as the other clocks do.
        skewed.clamp(0, i128::from(u64::MAX)) as u64
    }

    fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_moves_only_when_told_and_skew_shifts_what_the_node_reads() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(
            clock.now_ms(),
            1_000,
            "a manual clock never moves on its own"
        );
        clock.advance(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.set(900);
        assert_eq!(clock.now_ms(), 900, "set may step the clock backwards");

        clock.set_skew_ms(-300);
        assert_eq!(clock.now_ms(), 600);
        assert_eq!(clock.true_ms(), 900, "skew does not change the true time");
        clock.set_skew_ms(5_000);
        assert_eq!(clock.now_ms(), 5_900);
        clock.set_skew_ms(-10_000);
        assert_eq!(
            clock.now_ms(),
            0,
            "a skew past the epoch reads as the epoch"
        );
        clock.set_skew_ms(0);
        clock.advance(100);
        assert_eq!(clock.now_ms(), 1_000);
    }

    #[test]
    fn it_is_usable_through_the_clock_seam() {
        let clock = ManualClock::new(42);
        let seam: kv_server::clock::SharedClock = clock.clone();
        clock.advance(8);
        assert_eq!(seam.now_ms(), 50);
        seam.set_skew_ms(10);
        assert_eq!(clock.now_ms(), 60);
    }
}
