//! The hybrid logical clock of one node. Owns the last issued `(physical_ms, logical)` pair.
//! Invariants: every `now()` is strictly greater than every earlier `now()` of this node and than
//! every timestamp passed to `observe()` before it (so a write coordinated after reading or
//! receiving a record always wins over that record under LWW).
//!
//! Skew policy: a remote timestamp more than `max_skew_ms` ahead of our wall clock is still
//! **accepted** (our clock advances to it), logged with `tracing::warn!` and counted. Rejecting it
//! would leave a write that some replicas already acknowledged unreplicable on others, so replicas
//! would never converge; accepting keeps convergence and the counter tells operators that a node's
//! clock is wrong (its writes will win over later ones until real time catches up).

use crate::clock::Clock;
use crate::types::{Hlc, NodeId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default bound on how far ahead of our wall clock a remote timestamp may be before it is
/// reported as skew (Cockroach uses 500 ms as its default maximum offset).
pub const DEFAULT_MAX_SKEW_MS: u64 = 500;

/// A node's hybrid logical clock over the clock seam.
pub struct HlcClock {
    node_id: NodeId,
    clock: Arc<dyn Clock>,
    max_skew_ms: u64,
    /// Last issued or observed `(physical_ms, logical)`.
    last: Mutex<(u64, u32)>,
    skew_events: AtomicU64,
    max_skew_seen_ms: AtomicU64,
}

impl HlcClock {
    /// A clock for `node_id` reading wall time from `clock`.
    pub fn new(node_id: NodeId, clock: Arc<dyn Clock>, max_skew_ms: u64) -> Self {
        Self {
            node_id,
            clock,
            max_skew_ms,
            last: Mutex::new((0, 0)),
            skew_events: AtomicU64::new(0),
            max_skew_seen_ms: AtomicU64::new(0),
        }
    }

    /// The node id stamped on every timestamp.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Wall-clock milliseconds from the clock seam (used for grace periods and hint ages).
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh timestamp, strictly greater than any earlier one issued or observed here.
    pub fn now(&self) -> Hlc {
        let pt = self.clock.now_ms();
        let mut last = self.last.lock().expect("hlc lock poisoned");
        *last = if pt > last.0 {
            (pt, 0)
        } else if last.1 == u32::MAX {
            // The logical counter is exhausted: borrow one millisecond rather than wrap.
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        Hlc {
            physical_ms: last.0,
            logical: last.1,
            node_id: self.node_id,
        }
    }

    /// Advances the clock past a timestamp received from another node (see the skew policy).
    pub fn observe(&self, remote: Hlc) {
        let pt = self.clock.now_ms();
        let ahead_ms = remote.physical_ms.saturating_sub(pt);
        if ahead_ms > self.max_skew_ms {
            self.skew_events.fetch_add(1, Ordering::Relaxed);
            self.max_skew_seen_ms.fetch_max(ahead_ms, Ordering::Relaxed);
            tracing::warn!(
                node_id = self.node_id,
                from_node = remote.node_id,
                ahead_ms,
                max_skew_ms = self.max_skew_ms,
                "timestamp from the future beyond the skew bound; accepted, clock advanced"
            );
        }
        let mut last = self.last.lock().expect("hlc lock poisoned");
        let remote_pair = (remote.physical_ms, remote.logical);
        if remote_pair > *last {
            *last = remote_pair;
        }
    }

    /// How many observed timestamps were beyond `max_skew_ms` (for `kv status`).
    pub fn skew_events(&self) -> u64 {
        self.skew_events.load(Ordering::Relaxed)
    }

    /// The largest skew seen beyond the bound, in milliseconds (0 if none).
    pub fn max_skew_seen_ms(&self) -> u64 {
        self.max_skew_seen_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::testkit::ManualClock;

    fn hlc(clock: &Arc<ManualClock>) -> HlcClock {
        HlcClock::new(7, clock.clone(), DEFAULT_MAX_SKEW_MS)
    }

    #[test]
    fn now_is_strictly_monotonic_even_when_wall_time_stalls_or_goes_back() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        let a = h.now();
        let b = h.now();
        clock.set(900); // wall clock stepped back
        let c = h.now();
        clock.set(2_000);
        let d = h.now();
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!((a.physical_ms, a.logical, a.node_id), (1_000, 0, 7));
        assert_eq!((c.physical_ms, c.logical), (1_000, 2));
        assert_eq!((d.physical_ms, d.logical), (2_000, 0));
    }

    #[test]
    fn logical_counter_overflow_borrows_a_millisecond() {
        let clock = ManualClock::new(10);
        let h = hlc(&clock);
        h.observe(Hlc {
            physical_ms: 10,
            logical: u32::MAX,
            node_id: 1,
        });
        let t = h.now();
        assert_eq!((t.physical_ms, t.logical), (11, 0));
    }

    #[test]
    fn timestamps_from_the_future_advance_the_clock_and_count_as_skew() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        // Within the bound: advances, not counted.
        let near = Hlc {
            physical_ms: 1_000 + DEFAULT_MAX_SKEW_MS,
            logical: 3,
            node_id: 9,
        };
        h.observe(near);
        assert_eq!(h.skew_events(), 0);
        assert!(h.now() > near);
        // Beyond the bound: still accepted (advances), counted once, largest skew recorded.
        let far = Hlc {
            physical_ms: 61_000,
            logical: 0,
            node_id: 9,
        };
        h.observe(far);
        assert_eq!(h.skew_events(), 1);
        assert_eq!(h.max_skew_seen_ms(), 60_000);
        let t = h.now();
        assert!(t > far, "{t:?} must be after {far:?}");
        assert_eq!(t.physical_ms, 61_000);
        // An older remote timestamp neither moves the clock back nor counts.
        h.observe(Hlc {
            physical_ms: 5,
            logical: 0,
            node_id: 2,
        });
        assert!(h.now() > t);
        assert_eq!(h.skew_events(), 1);
    }
}
