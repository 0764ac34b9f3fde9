//! Helpers for the AP engine's pure unit tests (`hlc`, `store`, `hints`, `merkle`): a clock the
//! test sets by hand and a record builder. No network and no disk fake: tests that need a
//! cluster run on kv-testkit's `ApCluster` from `kv-server/tests/ap_*.rs` (unit tests cannot use
//! kv-testkit, which would give them a second copy of this crate's types).

use super::lww::ApRecord;
use crate::clock::Clock;
use crate::types::Hlc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A clock the test sets by hand.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(ms)))
    }
    /// Sets the time; it may go backwards.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn set_skew_ms(&self, _skew_ms: i64) {
        // Tests move this clock explicitly; skew has no meaning here.
    }
}

/// A record of `key` written at physical time `t` by node 1 (`None` is a tombstone).
pub fn rec(key: &str, t: u64, value: Option<&str>) -> ApRecord {
    ApRecord {
        key: key.as_bytes().to_vec(),
        hlc: Hlc {
            physical_ms: t,
            logical: 0,
            node_id: 1,
        },
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}
