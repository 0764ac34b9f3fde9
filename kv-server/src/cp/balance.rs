//! Leader balance: each node, now and then, campaigns in the groups it owns (first of the
//! group's members, which the ring spreads over the nodes) that another node leads, so
//! leadership returns to the owners after a failover and a returned node leads its share again.
//! Invariants: only a follower whose log is fully applied campaigns (a lagging one would lose
//! and only disturb the leader), at most `MAX_CAMPAIGNS_PER_ROUND` groups per round, and a
//! round runs at most every `ROUND_ELECTION_TIMEOUTS` election timeouts.

use crate::cp::types::Raft;
use crate::types::NodeId;
use openraft::ServerState;
use std::time::Duration;

/// Election timeouts (maximal) between two rounds: leadership settles between them.
pub const ROUND_ELECTION_TIMEOUTS: u64 = 4;
/// Most groups one node campaigns in per round (bounds the elections running at once).
pub const MAX_CAMPAIGNS_PER_ROUND: usize = 8;

/// Whether `me`, the owner of a group with these metrics, should campaign to lead it.
pub fn should_campaign(
    me: NodeId,
    metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
) -> bool {
    let led_by_other = matches!(metrics.current_leader, Some(l) if l != me);
    let applied = metrics.last_applied.map(|l| l.index);
    led_by_other && metrics.state == ServerState::Follower && applied == metrics.last_log_index
}

/// Runs rounds forever (the engine aborts the task at shutdown): `owned` are the groups this
/// node owns, by id.
pub async fn run(me: NodeId, owned: Vec<(u64, Raft)>, election_timeout_max_ms: u64) {
    let round = Duration::from_millis(election_timeout_max_ms * ROUND_ELECTION_TIMEOUTS);
    loop {
        tokio::time::sleep(round).await;
        let mut campaigns = 0;
        for (group, raft) in &owned {
            if campaigns >= MAX_CAMPAIGNS_PER_ROUND {
                break;
            }
            let go = should_campaign(me, &raft.metrics().borrow());
            if go {
                campaigns += 1;
                tracing::info!(group, "campaigning to lead an owned group");
                if let Err(e) = raft.trigger().elect().await {
                    tracing::warn!(group, error = %e, "campaign failed");
                }
            }
        }
    }
}
