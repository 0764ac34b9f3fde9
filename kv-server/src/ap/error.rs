//! Errors of the AP engine: `ApError` for requests and background work, `TransportError` for one
//! remote call through the `ApTransport` seam. Conversion to `tonic::Status` happens elsewhere,
//! once, at the gRPC boundary.

use super::hints::HintError;
use super::hlc::HlcError;
use crate::storage::StorageError;
use crate::types::NodeId;

/// Errors of the AP engine.
#[derive(Debug, thiserror::Error)]
pub enum ApError {
    /// Fewer replicas answered than the consistency level needs.
    #[error("AP {op} on partition {partition} unavailable: {answered} of the {needed} required replicas answered{}; retry later or use a lower consistency level (a failed write may still have applied on the replicas that answered)", .first_failure.as_deref().map(|f| format!(" (first failure: {f})")).unwrap_or_default())]
    Unavailable {
        /// "read" or "write".
        op: &'static str,
        /// Acks (W) or answers (R) required.
        needed: usize,
        /// How many came.
        answered: usize,
        /// The key's partition.
        partition: u32,
        /// What the first replica that failed said (at most `MAX_FAILURE_CHARS` characters).
        first_failure: Option<String>,
    },
    /// A timestamp was refused as too far ahead of this node's clock, or the clock is exhausted.
    #[error(transparent)]
    Clock(#[from] HlcError),
    /// This coordinator already drives its maximum number of writes; nothing was written.
    #[error("node {node} is overloaded: {limit} AP writes already in flight (max_writes_in_flight); nothing was written, retry with backoff")]
    Overloaded {
        /// This node.
        node: NodeId,
        /// The bound that was hit.
        limit: usize,
    },
    /// A hint names an intended owner that is not a member of the cluster.
    #[error("hint refused: node {owner} is not a member of this cluster ({members} members); nothing was stored")]
    UnknownHintOwner {
        /// The owner the hint named.
        owner: NodeId,
        /// How many members the cluster has.
        members: usize,
    },
    /// Every replica of the key answered and every copy was corrupt: no good copy is left.
    #[error("AP read on partition {partition}: every replica's copy of the key is corrupt (nodes {corrupt:?}); no good copy is left to repair from — restore the key from a backup or write it again")]
    Lost {
        /// The key's partition.
        partition: u32,
        /// The replicas whose copies failed their checksum.
        corrupt: Vec<NodeId>,
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

/// Longest replica failure quoted in an `Unavailable` message: error messages travel in a gRPC
/// header, which standard clients cap at 16 KiB.
pub const MAX_FAILURE_CHARS: usize = 300;

/// `text` cut to `MAX_FAILURE_CHARS` characters, with an ellipsis when cut.
pub(super) fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_FAILURE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
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
    /// The node's stored copy failed its checksum: it has no usable record (the caller repairs
    /// it with a good copy from another replica).
    #[error("node {node} holds a corrupt copy: {message}")]
    Corrupt {
        /// The peer.
        node: NodeId,
        /// Its error, as text.
        message: String,
    },
}

impl TransportError {
    /// The error of calling this node's own replica (no network): a corrupt record stays
    /// `Corrupt`, anything else is the node refusing.
    pub fn local(node: NodeId, e: ApError) -> Self {
        match e {
            ApError::Storage(c @ StorageError::Corrupt { .. }) => TransportError::Corrupt {
                node,
                message: c.to_string(),
            },
            other => TransportError::Remote {
                node,
                message: other.to_string(),
            },
        }
    }
}
