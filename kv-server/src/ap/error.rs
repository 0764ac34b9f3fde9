//! Errors of the AP engine: `ApError` for requests and background work, `TransportError` for one
//! remote call through the `ApTransport` seam. Conversion to `tonic::Status` happens elsewhere,
//! once, at the gRPC boundary.

use super::hints::HintError;
use crate::storage::StorageError;
use crate::types::NodeId;

/// Errors of the AP engine.
#[derive(Debug, thiserror::Error)]
pub enum ApError {
    /// Fewer replicas answered than the consistency level needs.
    #[error("AP {op} on partition {partition} unavailable: {answered} of the {needed} required replicas answered; retry later or use a lower consistency level (a failed write may still have applied on the replicas that answered)")]
    Unavailable {
        /// "read" or "write".
        op: &'static str,
        /// Acks (W) or answers (R) required.
        needed: usize,
        /// How many came.
        answered: usize,
        /// The key's partition.
        partition: u32,
    },
    /// The local storage failed or held a corrupt record.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// This node cannot hold more hints for `node`.
    #[error("hint store full for node {node}: {limit} hints pending (MAX_HINTS_PER_NODE); the node has been down too long, repair it or let anti-entropy catch it up")]
    HintsFull {
        /// The intended owner of the hint.
        node: NodeId,
        /// The bound that was hit.
        limit: usize,
    },
    /// The request is malformed (key or value size, consistency level, keyspace mode).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A peer could not be reached during background work.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<HintError> for ApError {
    fn from(e: HintError) -> Self {
        match e {
            HintError::Full { node, limit } => ApError::HintsFull { node, limit },
            HintError::Storage(s) => ApError::Storage(s),
        }
    }
}

/// Errors of one remote call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The node could not be reached (down, partitioned, connection refused).
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// The node did not answer in time (the request may still have been applied).
    #[error("node {node} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The peer.
        node: NodeId,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The node answered with an error.
    #[error("node {node} refused: {message}")]
    Remote {
        /// The peer.
        node: NodeId,
        /// Its error, as text.
        message: String,
    },
}
