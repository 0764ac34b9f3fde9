//! The identity and shape of one CP group: its id, the spec every node derives from the ring
//! (`GroupSpec`), the metadata group's reserved ids, and what `CpEngine::status` reports of a
//! group (`GroupStatus`).

use crate::cp::config::CpConfig;
use crate::cp::types::Raft;
use crate::types::NodeId;
use openraft::error::{InitializeError, RaftError};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::time::Duration;

/// Keyspace id reserved for the metadata group (never a user keyspace's id).
pub const META_KEYSPACE: u32 = u32::MAX;
/// Partition of the metadata group (it has one).
pub const META_PARTITION: u32 = u32::MAX;
/// Group id of the metadata group, whose state machine holds the keyspace definitions.
pub const META_GROUP: u64 = u64::MAX;

/// The Raft group id of a keyspace's partition: keyspace id in the high 32 bits.
pub fn group_id(keyspace_id: u32, partition: u32) -> u64 {
    (u64::from(keyspace_id) << 32) | u64::from(partition)
}

/// One CP group to run: a partition of a keyspace and its members (the first N nodes of the
/// partition's preference list, identical on every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Keyspace id.
    pub keyspace: u32,
    /// Partition.
    pub partition: u32,
    /// Voting members.
    pub members: Vec<NodeId>,
}

impl GroupSpec {
    /// The metadata group with these members (all nodes, or the first 3-5).
    pub fn meta(members: Vec<NodeId>) -> GroupSpec {
        GroupSpec {
            keyspace: META_KEYSPACE,
            partition: META_PARTITION,
            members,
        }
    }
}

/// What one group looks like from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// Group id.
    pub group: u64,
    /// Keyspace id.
    pub keyspace: u32,
    /// Partition.
    pub partition: u32,
    /// Voting members.
    pub members: Vec<NodeId>,
    /// Leader this node knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: &'static str,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub last_applied_index: Option<u64>,
    /// Index covered by the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log is purged.
    pub purged_index: Option<u64>,
}

/// How many maximal election timeouts a member that is not a group's owner waits before
/// initializing the group itself (in case the owner is down).
const INITIALIZE_DELAY_ELECTION_TIMEOUTS: u64 = 2;

/// Initializes a pristine group member; one that already has state is left as it is.
async fn initialize_member(
    raft: &Raft,
    members: BTreeMap<NodeId, BasicNode>,
) -> Result<(), String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Initializes group `spec` on this node (`node_id`), owner first (see the comment inside);
/// a group with state keeps it.
pub(crate) async fn initialize(
    raft: &Raft,
    spec: &GroupSpec,
    node_id: NodeId,
    config: &CpConfig,
) -> Result<(), String> {
    let members: BTreeMap<NodeId, BasicNode> = spec
        .members
        .iter()
        .map(|id| (*id, BasicNode::default()))
        .collect();
    // The group's owner (first of its preference list, which the ring spreads over
    // the nodes) initializes at once, and initializing starts its election: a fresh
    // cluster's leaders are spread like the owners. The other members initialize
    // later, with the same membership, so the group still forms when the owner is
    // down; a member that has any state by then refuses (NotAllowed), which is fine.
    // After a failover `cp::balance` moves leadership back to the owners.
    if spec.members.first() == Some(&node_id) {
        initialize_member(raft, members).await?;
    } else {
        let raft = raft.clone();
        let delay = Duration::from_millis(
            config.election_timeout_max_ms * INITIALIZE_DELAY_ELECTION_TIMEOUTS,
        );
        let partition = spec.partition;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = initialize_member(&raft, members).await {
                tracing::warn!(partition, error = %e, "initializing a cp group failed");
            }
        });
    }
    Ok(())
}
