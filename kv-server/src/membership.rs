//! Liveness of peers as this node sees it, fed by periodic heartbeats (the internal Handshake
//! call, which also re-checks that the peer belongs to the same cluster).
//!
//! States follow time since the last successful heartbeat: alive (< `SUSPECT_AFTER`), suspect,
//! down (>= `DOWN_AFTER`). A peer never heard from is unknown, and counts as down for routing.

use crate::types::{Member, NodeId};
use kv_proto::v1::NodeState;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Interval between heartbeats to each peer.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Timeout of one heartbeat call.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Silence after which a peer is suspect.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1500);
/// Silence after which a peer is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(3000);

/// What this node knows of each peer's liveness.
pub struct Membership {
    me: NodeId,
    last_seen: Mutex<BTreeMap<NodeId, Option<Instant>>>,
}

impl Membership {
    /// Every peer starts unknown; this node is always alive.
    pub fn new(me: NodeId, peers: &[Member]) -> Self {
        Self {
            me,
            last_seen: Mutex::new(peers.iter().map(|m| (m.id, None)).collect()),
        }
    }

    /// Records a successful heartbeat (or any successful call) from `id`.
    pub fn heard_from(&self, id: NodeId) {
        if let Some(slot) = self.last_seen.lock().expect("membership lock").get_mut(&id) {
            *slot = Some(Instant::now());
        }
    }

    /// Current state of `id`.
    pub fn state(&self, id: NodeId) -> NodeState {
        if id == self.me {
            return NodeState::Alive;
        }
        match self.last_seen.lock().expect("membership lock").get(&id) {
            Some(Some(t)) => {
                let silent = t.elapsed();
                if silent < SUSPECT_AFTER {
                    NodeState::Alive
                } else if silent < DOWN_AFTER {
                    NodeState::Suspect
                } else {
                    NodeState::Down
                }
            }
            Some(None) => NodeState::Unknown,
            None => NodeState::Unknown,
        }
    }

    /// Whether `id` should receive traffic: anything but down. A peer not heard from yet is
    /// tried (a failed call falls back anyway), so a starting cluster does not hint everything.
    pub fn is_alive(&self, id: NodeId) -> bool {
        self.state(id) != NodeState::Down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn states_follow_silence() {
        let peers: Vec<Member> = (1..=2)
            .map(|i| Member {
                id: i,
                name: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        let m = Membership::new(1, &peers);
        assert_eq!(m.state(1), NodeState::Alive);
        assert_eq!(m.state(2), NodeState::Unknown);
        m.heard_from(2);
        assert_eq!(m.state(2), NodeState::Alive);
        tokio::time::advance(SUSPECT_AFTER).await;
        assert_eq!(m.state(2), NodeState::Suspect);
        tokio::time::advance(DOWN_AFTER).await;
        assert_eq!(m.state(2), NodeState::Down);
        assert!(!m.is_alive(2));
        m.heard_from(2);
        assert!(m.is_alive(2));
    }
}
