//! Fault injection (off unless the node runs with `--chaos`): drop or delay this node's
//! outgoing traffic to chosen peers, and skew its clock. Every outgoing message (Raft, AP
//! replication, forwarding, heartbeats) passes `drops` and `delay`, so a real-process cluster
//! can be partitioned on one machine the way transport filters do it in TiKV's tests.

use crate::types::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// Longest delay that may be injected on one link.
pub const MAX_DELAY_MS: u32 = 60_000;

/// The faults currently injected on this node.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
}

#[derive(Default, Clone)]
struct State {
    drop_to: BTreeSet<NodeId>,
    delay_ms: BTreeMap<NodeId, u32>,
}

impl Faults {
    /// Replaces the injected faults (empty sets heal).
    pub fn set(&self, drop_to: BTreeSet<NodeId>, delay_ms: BTreeMap<NodeId, u32>) {
        *self.state.lock().expect("faults lock") = State { drop_to, delay_ms };
    }

    /// Whether traffic to `to` is dropped.
    pub fn drops(&self, to: NodeId) -> bool {
        self.state
            .lock()
            .expect("faults lock")
            .drop_to
            .contains(&to)
    }

    /// Waits for the delay injected on the link to `to`, if any.
    pub async fn delay(&self, to: NodeId) {
        let ms = self
            .state
            .lock()
            .expect("faults lock")
            .delay_ms
            .get(&to)
            .copied();
        if let Some(ms) = ms {
            tokio::time::sleep(Duration::from_millis(u64::from(ms.min(MAX_DELAY_MS)))).await;
        }
    }
}
