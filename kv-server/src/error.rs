//! Node errors and their one conversion to `tonic::Status` (the only place that picks codes).

use kv_core::headers::{LEADER_HEADER, NODE_HEADER, NOT_APPLIED_HEADER};
use kv_core::limits::{MAX_ECHOED_INPUT_BYTES, MAX_STATUS_MESSAGE_BYTES};
use tonic::{Code, Status};

/// `text` cut to at most `max_bytes` bytes (on a character boundary), with an ellipsis when
/// anything was cut.
pub fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Client input as it may be repeated in a status message: at most
/// `MAX_ECHOED_INPUT_BYTES`, so no input can make a message long.
pub fn echo(input: &str) -> String {
    truncate(input, MAX_ECHOED_INPUT_BYTES)
}

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
    /// The node could not serve the request and knows it was not applied (no leader reachable,
    /// nothing proposed): `UNAVAILABLE` with the `kv-not-applied` header.
    #[error("{0}")]
    NotApplied(String),
    /// A peer this request had to go through could not be reached, and the request was
    /// certainly not sent to it (down, connection refused, traffic dropped): safe to retry.
    #[error("{0}")]
    NotSent(String),
    /// The connection to the node a request was forwarded to broke after the request may have
    /// left (reset, closed): its outcome there is unknown. Resent only when that is safe (reads,
    /// and writes carrying a request id, which the state machine applies at most once).
    #[error("{0}")]
    Interrupted(String),
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
            NodeError::Unavailable(_)
            | NodeError::NotApplied(_)
            | NodeError::NotSent(_)
            | NodeError::Interrupted(_) => Code::Unavailable,
            NodeError::NotLeader { .. } => Code::Aborted,
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::ResourceExhausted(_) => Code::ResourceExhausted,
            NodeError::DataLoss(_) => Code::DataLoss,
            NodeError::Internal(_) => Code::Internal,
            NodeError::Remote(s) => s.code(),
        };
        // The message travels in a header: however long the error grew, it stays short.
        let message = truncate(&format!("[{node_name}] {self}"), MAX_STATUS_MESSAGE_BYTES);
        let mut status = Status::new(code, message);
        if let Ok(v) = node_name.parse() {
            status.metadata_mut().insert(NODE_HEADER, v);
        }
        if matches!(self, NodeError::NotApplied(_) | NodeError::NotSent(_)) {
            status.metadata_mut().insert(
                NOT_APPLIED_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole_and_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc…");
        // "é" is two bytes: a cut inside it moves back to its start.
        assert_eq!(truncate("aéb", 2), "a…");
        assert!(echo(&"x".repeat(10_000)).len() <= MAX_ECHOED_INPUT_BYTES + "…".len());
    }

    #[test]
    fn every_status_message_is_short_whatever_the_error_holds() {
        let huge = "é".repeat(100_000);
        for e in [
            NodeError::InvalidArgument(huge.clone()),
            NodeError::KeyspaceNotFound {
                name: huge.clone(),
                existing: huge.clone(),
            },
            NodeError::Unavailable(huge.clone()),
        ] {
            let status = e.into_status("n1");
            assert!(
                status.message().len() <= MAX_STATUS_MESSAGE_BYTES + "…".len(),
                "{} bytes",
                status.message().len()
            );
            assert!(status.message().starts_with("[n1] "));
            assert!(status.message().ends_with('…'));
        }
        let status = NodeError::ResourceExhausted("busy".into()).into_status("n1");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "[n1] busy");
    }
}
