//! Node errors and their one conversion to `tonic::Status` (the only place that picks codes).

use kv_core::headers::{LEADER_HEADER, NODE_HEADER};
use tonic::{Code, Status};

/// Errors of request handling, carrying what the caller needs to act.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Malformed request; nothing changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown keyspace.
    #[error("keyspace {name:?} does not exist; existing keyspaces: {existing}. Create it with `kv keyspace create {name} --mode cp|ap`")]
    KeyspaceNotFound {
        /// Requested name.
        name: String,
        /// Names that exist, comma separated.
        existing: String,
    },
    /// Not allowed in this keyspace/mode.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A node or quorum could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A peer this request had to go through could not be reached, and the request was
    /// certainly not sent to it (down, connection refused, traffic dropped): safe to retry.
    #[error("{0}")]
    NotSent(String),
    /// Not the leader; carries the leader's address when known.
    #[error("node is not the leader of partition {partition}{}", leader.as_ref().map(|l| format!("; leader is {l}")).unwrap_or_default())]
    NotLeader {
        /// Partition.
        partition: u32,
        /// Leader address.
        leader: Option<String>,
    },
    /// The deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bound on the work in flight was reached; nothing was done.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Stored data failed its checksum.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or unexpected failure.
    #[error("{0}")]
    Internal(String),
    /// An error another node returned for a forwarded request, passed on unchanged.
    #[error("{}", .0.message())]
    Remote(Status),
}

impl From<crate::storage::StorageError> for NodeError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            crate::storage::StorageError::Corrupt { .. } => NodeError::DataLoss(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl NodeError {
    /// The gRPC status for this error, tagged with the node's name.
    pub fn into_status(self, node_name: &str) -> Status {
        if let NodeError::Remote(status) = self {
            return status;
        }
        let code = match &self {
            NodeError::InvalidArgument(_) => Code::InvalidArgument,
            NodeError::KeyspaceNotFound { .. } => Code::NotFound,
            NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
            NodeError::AlreadyExists(_) => Code::AlreadyExists,
            NodeError::Unavailable(_) | NodeError::NotSent(_) => Code::Unavailable,
            NodeError::NotLeader { .. } => Code::Aborted,
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::ResourceExhausted(_) => Code::ResourceExhausted,
            NodeError::DataLoss(_) => Code::DataLoss,
            NodeError::Internal(_) => Code::Internal,
            NodeError::Remote(s) => s.code(),
        };
        let mut status = Status::new(code, format!("[{node_name}] {self}"));
        if let Ok(v) = node_name.parse() {
            status.metadata_mut().insert(NODE_HEADER, v);
        }
        if let NodeError::NotLeader {
            leader: Some(l), ..
        } = &self
        {
            if let Ok(v) = l.parse() {
                status.metadata_mut().insert(LEADER_HEADER, v);
            }
        }
        status
    }
}

/// Result of request handling.
pub type NodeResult<T> = Result<T, NodeError>;
