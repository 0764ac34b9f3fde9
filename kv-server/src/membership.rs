//! Liveness of peers as this node sees it: a phi-accrual failure detector (Hayashibara et al.,
//! as in Cassandra and Akka) fed by all-to-all heartbeats (the internal Handshake call, which
//! also re-checks that the peer belongs to the same cluster) and by every successful call.
//!
//! phi(t) = -log10(P(no heartbeat for t)) under an exponential model of inter-arrival times:
//! phi = t / mean * log10(e). A peer is suspect above `PHI_SUSPECT`, down above `PHI_DOWN`.
//! Until `MIN_SAMPLES` intervals are known the mean is the heartbeat interval, so a new cluster
//! behaves like fixed timeouts (~1.5 s suspect, ~3.5 s down). A peer never heard from is unknown,
//! which routing treats as alive (a failed call falls back anyway).
//!
//! Why not SWIM (foca): the cluster is static and small (at most `MAX_PEERS` = 64 nodes), and
//! the heartbeat must be a handshake anyway to refuse a node of another cluster; all-to-all
//! heartbeats give every node a direct view, which is what `kv status` shows, without a second
//! protocol and codec. A SWIM layer belongs with dynamic membership (join/leave).

use crate::types::{Member, NodeId};
use kv_proto::v1::NodeState;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Interval between heartbeats to each peer.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Timeout of one heartbeat call.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1000);
/// phi above which a peer is suspect.
pub const PHI_SUSPECT: f64 = 1.3;
/// phi above which a peer is down.
pub const PHI_DOWN: f64 = 3.0;
/// Inter-arrival samples kept per peer.
pub const MAX_SAMPLES: usize = 100;
/// Samples needed before the measured mean replaces the heartbeat interval.
pub const MIN_SAMPLES: usize = 10;
/// Lower bound on the mean interval, so a burst of calls does not make a peer look dead after
/// one quiet heartbeat interval.
const MIN_MEAN: Duration = HEARTBEAT_INTERVAL;
/// Silence after which a peer is down when the mean is `MIN_MEAN`.
pub const DOWN_AFTER: Duration =
    Duration::from_millis((PHI_DOWN / std::f64::consts::LOG10_E * 500.0) as u64 + 1);

#[derive(Default)]
struct Peer {
    last: Option<Instant>,
    intervals_ms: VecDeque<f64>,
}

impl Peer {
    fn phi(&self, now: Instant) -> Option<f64> {
        let last = self.last?;
        let mean_ms = if self.intervals_ms.len() >= MIN_SAMPLES {
            self.intervals_ms.iter().sum::<f64>() / self.intervals_ms.len() as f64
        } else {
            HEARTBEAT_INTERVAL.as_secs_f64() * 1000.0
        }
        .max(MIN_MEAN.as_secs_f64() * 1000.0);
        let silent_ms = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        Some(silent_ms / mean_ms * std::f64::consts::LOG10_E)
    }
}

/// What this node knows of each peer's liveness.
pub struct Membership {
    me: NodeId,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
}

impl Membership {
    /// Every peer starts unknown; this node is always alive.
    pub fn new(me: NodeId, peers: &[Member]) -> Self {
        Self {
            me,
            peers: Mutex::new(peers.iter().map(|m| (m.id, Peer::default())).collect()),
        }
    }

    /// Records a successful heartbeat (or any successful call) from `id`.
    pub fn heard_from(&self, id: NodeId) {
        let now = Instant::now();
        let mut peers = self.peers.lock().expect("membership lock");
        if let Some(p) = peers.get_mut(&id) {
            if let Some(last) = p.last {
                let gap_ms = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
                // Calls arriving together say nothing about the heartbeat rhythm.
                if gap_ms >= 1.0 {
                    if p.intervals_ms.len() == MAX_SAMPLES {
                        p.intervals_ms.pop_front();
                    }
                    p.intervals_ms.push_back(gap_ms);
                }
            }
            p.last = Some(now);
        }
    }

    /// The current suspicion level of `id` (None until heard from).
    pub fn phi(&self, id: NodeId) -> Option<f64> {
        let peers = self.peers.lock().expect("membership lock");
        peers.get(&id).and_then(|p| p.phi(Instant::now()))
    }

    /// Current state of `id`.
    pub fn state(&self, id: NodeId) -> NodeState {
        if id == self.me {
            return NodeState::Alive;
        }
        match self.phi(id) {
            None => NodeState::Unknown,
            Some(phi) if phi < PHI_SUSPECT => NodeState::Alive,
            Some(phi) if phi < PHI_DOWN => NodeState::Suspect,
            Some(_) => NodeState::Down,
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

    fn membership() -> Membership {
        let peers: Vec<Member> = (1..=2)
            .map(|i| Member {
                id: i,
                name: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
                peer_addr: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        Membership::new(1, &peers)
    }

    #[tokio::test(start_paused = true)]
    async fn states_follow_silence() {
        let m = membership();
        assert_eq!(m.state(1), NodeState::Alive);
        assert_eq!(m.state(2), NodeState::Unknown);
        assert!(m.is_alive(2), "unknown peers are tried");
        m.heard_from(2);
        assert_eq!(m.state(2), NodeState::Alive);
        tokio::time::advance(Duration::from_millis(1600)).await;
        assert_eq!(m.state(2), NodeState::Suspect);
        tokio::time::advance(DOWN_AFTER).await;
        assert_eq!(m.state(2), NodeState::Down);
        assert!(!m.is_alive(2));
        m.heard_from(2);
        assert!(m.is_alive(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_heartbeat_rhythm_raises_the_bar_for_suspicion() {
        let m = membership();
        // Heartbeats every 2 s (a slow link): after 3 s of silence the peer is still alive,
        // where the default rhythm would already call it down.
        for _ in 0..MAX_SAMPLES {
            m.heard_from(2);
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        m.heard_from(2);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(m.state(2), NodeState::Alive, "phi {:?}", m.phi(2));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(m.state(2), NodeState::Down, "phi {:?}", m.phi(2));
    }

    #[tokio::test(start_paused = true)]
    async fn phi_grows_with_silence() {
        let m = membership();
        m.heard_from(2);
        let mut last = 0.0;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(300)).await;
            let phi = m.phi(2).unwrap();
            assert!(phi > last);
            last = phi;
        }
    }
}
