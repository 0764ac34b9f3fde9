//! The clock seam: wall-clock time (milliseconds since the Unix epoch) for hybrid logical clocks.
//! Real nodes read the system clock; simulations drive it from tokio's (simulated) time; chaos
//! skews it. Timers never use this: they use `tokio::time`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of wall-clock milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, as this node believes.
    fn now_ms(&self) -> u64;
    /// Sets the offset added to the time (fault injection).
    fn set_skew_ms(&self, skew_ms: i64);
}

/// The system clock plus an adjustable skew (for chaos testing).
#[derive(Default)]
pub struct SystemClock {
    skew_ms: AtomicI64,
}

impl Clock for SystemClock {
    fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (real + self.skew_ms.load(Ordering::Relaxed)).max(0) as u64
    }
}

/// A clock that follows `tokio::time` (simulated time inside turmoil) from a fixed epoch, plus a skew.
pub struct TokioClock {
    start: tokio::time::Instant,
    epoch_ms: u64,
    skew_ms: AtomicI64,
}

impl TokioClock {
    /// A clock that reads `epoch_ms` now and advances with tokio's clock.
    pub fn new(epoch_ms: u64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            epoch_ms,
            skew_ms: AtomicI64::new(0),
        }
    }
}

impl Clock for TokioClock {
    fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as i64;
        (self.epoch_ms as i64 + elapsed + self.skew_ms.load(Ordering::Relaxed)).max(0) as u64
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_tokio_time_from_its_epoch_plus_skew() {
        let clock = TokioClock::new(5_000);
        assert_eq!(clock.now_ms(), 5_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms(), 6_500);
        clock.set_skew_ms(-500);
        assert_eq!(clock.now_ms(), 6_000);
        clock.set_skew_ms(-10_000);
        assert_eq!(
            clock.now_ms(),
            0,
            "a skew past the epoch reads as the epoch"
        );
    }

    #[test]
    fn the_system_clock_reads_the_system_time_shifted_by_the_skew() {
        let system_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the system clock is past 1970")
                .as_millis() as u64
        };
        let clock = SystemClock::default();
        let skew_ms: u64 = 3_600_000;
        clock.set_skew_ms(skew_ms as i64);
        let before = system_ms();
        let read = clock.now_ms();
        let after = system_ms();
        assert!(
            (before + skew_ms..=after + skew_ms).contains(&read),
            "{read} not within [{before}, {after}] + {skew_ms}"
        );
        clock.set_skew_ms(i64::MIN);
        assert_eq!(clock.now_ms(), 0);
    }
}
