//! `CpError`: what a CP engine call can fail with, each variant naming the partition a caller
//! must act on (the service turns them into statuses, `service::convert::cp_error`).

use crate::cp::codec::CodecError;
use crate::storage::StorageError;
use crate::types::NodeId;

/// Errors of the CP engine; each names the partition a caller must act on.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// This node is not the partition's leader; retry at `leader` when known. Nothing applied.
    #[error("node is not the leader of partition {partition}; leader: {leader:?}")]
    NotLeader {
        /// The partition.
        partition: u32,
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// No quorum answered by the deadline (minority side, or an election in progress). A write
    /// may still apply later: its outcome is unknown.
    #[error("partition {partition} is unavailable: {reason}")]
    Unavailable {
        /// The partition.
        partition: u32,
        /// What was missing.
        reason: String,
    },
    /// No leader could be found or elected by the deadline (this side of a partition has no
    /// majority), and this node proposed nothing: the request was certainly not applied.
    #[error("partition {partition} is unavailable: {reason}")]
    NoLeader {
        /// The partition.
        partition: u32,
        /// What was missing.
        reason: String,
    },
    /// The request's deadline passed before it could be answered, and it was too short for
    /// the engine to tell an unavailable partition from a slow one (shorter than an election
    /// timeout). A write may still apply later: its outcome is unknown.
    #[error("partition {partition}: {reason}")]
    DeadlineExceeded {
        /// The partition.
        partition: u32,
        /// What did not happen in time.
        reason: String,
        /// False when this node proposed nothing (it was waiting for a leader): the request
        /// was certainly not applied here.
        proposed: bool,
    },
    /// This node holds no replica of the group.
    #[error("node {node} holds no replica of keyspace {keyspace} partition {partition}")]
    UnknownGroup {
        /// This node.
        node: NodeId,
        /// The keyspace id.
        keyspace: u32,
        /// The partition.
        partition: u32,
    },
    /// A Raft message names a group this node does not run.
    #[error("node {node} runs no Raft group {group}")]
    UnknownRaftGroup {
        /// This node.
        node: NodeId,
        /// The group id.
        group: u64,
    },
    /// A Raft message has an unknown kind code.
    #[error("unknown Raft message kind {0}")]
    UnknownKind(u32),
    /// The local store failed (a corrupt record included: it is never returned).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A Raft message could not be decoded or encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The group's Raft stopped (storage failure or shutdown) or failed to start.
    #[error("raft group of partition {partition} failed: {message}")]
    Raft {
        /// The partition.
        partition: u32,
        /// openraft's error.
        message: String,
    },
    /// The configuration is invalid.
    #[error("invalid CP configuration: {0}")]
    Config(String),
}
