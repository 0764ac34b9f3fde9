//! The hybrid logical clock of one node. Owns the last issued `(physical_ms, logical)` pair.
//! Invariants: every `now()` is strictly greater than every earlier `now()` of this node and than
//! every timestamp `observe()` accepted before it (so a write coordinated after reading or
//! receiving a record always wins over that record under LWW); the clock never runs more than
//! `max_offset_ms` ahead of this node's wall clock because of another node.
//!
//! Offset policy: a remote timestamp more than `max_offset_ms` ahead of our wall clock is
//! **refused** (`HlcError::Ahead`): the clock does not move, the refusal is counted, and the
//! caller refuses the record that carried it. Absorbing it instead (as before) let one node with
//! a wrong clock, or one hostile message, drag every clock of the cluster into the future for
//! good: every later write then carried the bogus time, and grace periods and hint ages measured
//! against it stopped meaning anything. Timestamps more than half the bound ahead are accepted
//! but counted as skew (`skew_events`), an early warning before refusals start.
//! docs/cap-modes.md says what happens to writes coordinated by a node beyond the bound.

use crate::clock::Clock;
use crate::types::{Hlc, NodeId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default maximum offset: how far ahead of our wall clock a remote timestamp may be before it
/// is refused. CockroachDB's default (nodes beyond it stop there); NTP keeps healthy clocks
/// within a few milliseconds, and the HLC's physical time is only used at far coarser grains
/// (the 3 h hint window, the 10-day tombstone grace period). docs/cap-modes.md explains the
/// choice.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// The greatest timestamp there is (what an exhausted clock stands for where a bound is needed).
pub const LATEST: Hlc = Hlc {
    physical_ms: u64::MAX,
    logical: u32::MAX,
    node_id: NodeId::MAX,
};

/// Errors of the hybrid logical clock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// A remote timestamp is further ahead of this node's wall clock than the maximum offset.
    #[error("node {node} refused a timestamp from node {from_node}: it is {ahead_ms} ms ahead of node {node}'s clock, beyond the maximum clock offset of {max_offset_ms} ms; check both nodes' clocks (NTP)")]
    Ahead {
        /// The node that refused it (this node).
        node: NodeId,
        /// The node that issued the timestamp.
        from_node: NodeId,
        /// How far ahead of this node's wall clock it was.
        ahead_ms: u64,
        /// The configured bound.
        max_offset_ms: u64,
    },
    /// The clock reached the largest representable timestamp: no greater one exists.
    #[error("node {node}'s hybrid logical clock reached the largest timestamp; its wall clock is wrong (fix it and restart the node)")]
    Exhausted {
        /// This node.
        node: NodeId,
    },
}

/// A node's hybrid logical clock over the clock seam.
pub struct HlcClock {
    node_id: NodeId,
    clock: Arc<dyn Clock>,
    max_offset_ms: u64,
    /// Last issued or observed `(physical_ms, logical)`.
    last: Mutex<(u64, u32)>,
    skew_events: AtomicU64,
    refusals: AtomicU64,
    max_skew_seen_ms: AtomicU64,
}

/// True for 1, 2, 4, 8, …: logging only then keeps a flood of bad timestamps from flooding
/// the log while the first ones are always reported.
fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

impl HlcClock {
    /// A clock for `node_id` reading wall time from `clock`, refusing remote timestamps more
    /// than `max_offset_ms` ahead of it.
    pub fn new(node_id: NodeId, clock: Arc<dyn Clock>, max_offset_ms: u64) -> Self {
        Self {
            node_id,
            clock,
            max_offset_ms,
            last: Mutex::new((0, 0)),
            skew_events: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            max_skew_seen_ms: AtomicU64::new(0),
        }
    }

    /// The node id stamped on every timestamp.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The configured maximum offset.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// Wall-clock milliseconds from the clock seam (used for grace periods and hint ages).
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh timestamp, strictly greater than any earlier one issued or observed here.
    pub fn now(&self) -> Result<Hlc, HlcError> {
        let pt = self.clock.now_ms();
        let mut last = self.last.lock().expect("hlc lock poisoned");
        let next = if pt > last.0 {
            (pt, 0)
        } else if let Some(logical) = last.1.checked_add(1) {
            (last.0, logical)
        } else {
            // The logical counter is exhausted: borrow one millisecond rather than wrap.
            let physical = last
                .0
                .checked_add(1)
                .ok_or(HlcError::Exhausted { node: self.node_id })?;
            (physical, 0)
        };
        *last = next;
        Ok(Hlc {
            physical_ms: next.0,
            logical: next.1,
            node_id: self.node_id,
        })
    }

    /// Advances the clock past a timestamp received from another node, or refuses it (and
    /// leaves the clock alone) when it is more than the maximum offset ahead of our wall clock.
    pub fn observe(&self, remote: Hlc) -> Result<(), HlcError> {
        let pt = self.clock.now_ms();
        let ahead_ms = remote.physical_ms.saturating_sub(pt);
        if ahead_ms > self.max_offset_ms / 2 {
            let seen = self.skew_events.fetch_add(1, Ordering::Relaxed) + 1;
            self.max_skew_seen_ms.fetch_max(ahead_ms, Ordering::Relaxed);
            if ahead_ms > self.max_offset_ms {
                let refused = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
                if worth_logging(refused) {
                    tracing::warn!(
                        node_id = self.node_id,
                        from_node = remote.node_id,
                        ahead_ms,
                        max_offset_ms = self.max_offset_ms,
                        refused,
                        "timestamp beyond the maximum clock offset refused"
                    );
                }
                return Err(HlcError::Ahead {
                    node: self.node_id,
                    from_node: remote.node_id,
                    ahead_ms,
                    max_offset_ms: self.max_offset_ms,
                });
            }
            if worth_logging(seen) {
                tracing::warn!(
                    node_id = self.node_id,
                    from_node = remote.node_id,
                    ahead_ms,
                    max_offset_ms = self.max_offset_ms,
                    seen,
                    "timestamp from the future, over half the maximum clock offset; accepted"
                );
            }
        }
        let mut last = self.last.lock().expect("hlc lock poisoned");
        let remote_pair = (remote.physical_ms, remote.logical);
        if remote_pair > *last {
            *last = remote_pair;
        }
        Ok(())
    }

    /// How many observed timestamps were more than half the maximum offset ahead, refused ones
    /// included (for `kv status`).
    pub fn skew_events(&self) -> u64 {
        self.skew_events.load(Ordering::Relaxed)
    }

    /// How many observed timestamps were refused as beyond the maximum offset.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// The largest skew counted, in milliseconds (0 if none).
    pub fn max_skew_seen_ms(&self) -> u64 {
        self.max_skew_seen_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::testkit::ManualClock;

    fn hlc(clock: &Arc<ManualClock>) -> HlcClock {
        HlcClock::new(7, clock.clone(), DEFAULT_MAX_CLOCK_OFFSET_MS)
    }

    fn at(physical_ms: u64, logical: u32) -> Hlc {
        Hlc {
            physical_ms,
            logical,
            node_id: 9,
        }
    }

    #[test]
    fn now_is_strictly_monotonic_even_when_wall_time_stalls_or_goes_back() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        let a = h.now().unwrap();
        let b = h.now().unwrap();
        clock.set(900); // wall clock stepped back
        let c = h.now().unwrap();
        clock.set(2_000);
        let d = h.now().unwrap();
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!((a.physical_ms, a.logical, a.node_id), (1_000, 0, 7));
        assert_eq!((c.physical_ms, c.logical), (1_000, 2));
        assert_eq!((d.physical_ms, d.logical), (2_000, 0));
    }

    #[test]
    fn logical_counter_overflow_borrows_a_millisecond() {
        let clock = ManualClock::new(10);
        let h = hlc(&clock);
        h.observe(at(10, u32::MAX)).unwrap();
        let t = h.now().unwrap();
        assert_eq!((t.physical_ms, t.logical), (11, 0));
    }

    #[test]
    fn timestamps_within_the_bound_advance_the_clock_and_beyond_half_of_it_count_as_skew() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        h.observe(at(1_000 + DEFAULT_MAX_CLOCK_OFFSET_MS / 2, 0))
            .unwrap();
        assert_eq!(h.skew_events(), 0, "half the bound is not yet skew");
        let edge = at(1_000 + DEFAULT_MAX_CLOCK_OFFSET_MS, 3);
        h.observe(edge).unwrap();
        assert_eq!((h.skew_events(), h.refusals()), (1, 0));
        assert!(h.now().unwrap() > edge);
        // An older remote timestamp neither moves the clock back nor counts.
        let before = h.now().unwrap();
        h.observe(at(5, 0)).unwrap();
        assert!(h.now().unwrap() > before);
        assert_eq!(h.skew_events(), 1);
    }

    #[test]
    fn a_timestamp_beyond_the_maximum_offset_is_refused_and_moves_nothing() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        let ten_years_ms = 10 * 365 * 24 * 60 * 60 * 1000;
        let err = h.observe(at(1_000 + ten_years_ms, 0)).unwrap_err();
        assert_eq!(
            err,
            HlcError::Ahead {
                node: 7,
                from_node: 9,
                ahead_ms: ten_years_ms,
                max_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("node 7") && msg.contains("node 9") && msg.contains("500 ms"),
            "{msg}"
        );
        assert_eq!((h.refusals(), h.skew_events()), (1, 1));
        assert_eq!(h.max_skew_seen_ms(), ten_years_ms);
        // The clock did not move: the next timestamp is this node's own time.
        assert_eq!(h.now().unwrap().physical_ms, 1_000);
        // One millisecond past the bound is already refused.
        let just_over = at(h.wall_ms() + DEFAULT_MAX_CLOCK_OFFSET_MS + 1, 0);
        assert!(h.observe(just_over).is_err());
        assert_eq!(h.refusals(), 2);
    }

    #[test]
    fn the_largest_timestamp_neither_overflows_nor_panics() {
        // Far from the end of time, u64::MAX is refused like any other far-future timestamp.
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        assert!(h.observe(at(u64::MAX, u32::MAX)).is_err());
        assert_eq!(h.now().unwrap().physical_ms, 1_000);
        // A wall clock at the end of time: the largest timestamp is within the bound and
        // accepted, and the next one does not exist. That is an error, not an overflow.
        clock.set(u64::MAX);
        h.observe(at(u64::MAX, u32::MAX)).unwrap();
        assert_eq!(h.now(), Err(HlcError::Exhausted { node: 7 }));
        assert_eq!(h.now(), Err(HlcError::Exhausted { node: 7 }));
    }
}
