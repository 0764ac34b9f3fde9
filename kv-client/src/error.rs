//! Typed client errors, converted from gRPC statuses in one place.

use tonic::{Code, Status};

/// Everything a kv request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request was malformed (empty key, too long, value too large...). Nothing changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The keyspace does not exist.
    #[error("{0}")]
    KeyspaceNotFound(String),
    /// The operation is not allowed here (e.g. compare-and-swap on an AP keyspace).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A keyspace with that name already exists with another definition.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The owner of the key, or a quorum, could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The owner of the key could not be reached, and the node that answered says the request
    /// was not applied (it refused before proposing: no leader reachable). Nothing changed.
    #[error("unavailable: {0}")]
    NotApplied(String),
    /// The request deadline passed; a write may or may not have been applied.
    #[error("deadline exceeded after {elapsed_ms} ms: {message}")]
    DeadlineExceeded {
        /// Time spent before giving up.
        elapsed_ms: u64,
        /// What was happening.
        message: String,
    },
    /// The node is not the leader of the key's CP partition (retry at `leader`).
    #[error("not leader: {message}")]
    NotLeader {
        /// The leader's address, when known.
        leader: Option<String>,
        /// Server message.
        message: String,
    },
    /// A stored record failed its checksum on the serving node.
    #[error("data loss: {0}")]
    DataLoss(String),
    /// The connection to a node failed before the request was sent (safe to retry).
    #[error("cannot reach node {addr}: {message}")]
    Connect {
        /// The node's address.
        addr: String,
        /// What the transport said.
        message: String,
    },
    /// The connection failed after the request may have been sent (outcome unknown).
    #[error("connection to {addr} failed: {message}")]
    Transport {
        /// The node's address.
        addr: String,
        /// What the transport said.
        message: String,
    },
    /// Bad client configuration (no endpoints, malformed address).
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else the server reported.
    #[error("{code:?}: {message}")]
    Other {
        /// gRPC code.
        code: Code,
        /// Server message.
        message: String,
    },
}

use kv_core::headers::describe;
pub use kv_core::headers::{is_connect_failure, LEADER_HEADER, NODE_HEADER, NOT_APPLIED_HEADER};

impl Error {
    /// Classifies a status received from `addr`.
    pub fn from_status(status: Status, addr: &str) -> Error {
        let message = status.message().to_string();
        let from_server = status.metadata().get(NODE_HEADER).is_some();
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::KeyspaceNotFound(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::DataLoss => Error::DataLoss(message),
            Code::Aborted => Error::NotLeader {
                leader: status
                    .metadata()
                    .get(LEADER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                message,
            },
            Code::DeadlineExceeded | Code::Cancelled if !from_server => Error::DeadlineExceeded {
                elapsed_ms: 0,
                message: format!("no answer from {addr} in time"),
            },
            Code::DeadlineExceeded => Error::DeadlineExceeded {
                elapsed_ms: 0,
                message,
            },
            Code::Unavailable
                if from_server && status.metadata().get(NOT_APPLIED_HEADER).is_some() =>
            {
                Error::NotApplied(message)
            }
            Code::Unavailable if from_server => Error::Unavailable(message),
            Code::Unavailable | Code::Unknown | Code::Internal if !from_server => {
                if is_connect_failure(&status) {
                    Error::Connect {
                        addr: addr.to_string(),
                        message: describe(&status),
                    }
                } else {
                    Error::Transport {
                        addr: addr.to_string(),
                        message: describe(&status),
                    }
                }
            }
            code => Error::Other { code, message },
        }
    }

    /// The same error with `note` appended to its message (what the failure means for the
    /// caller's data).
    pub fn with_note(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(add(m)),
            Error::KeyspaceNotFound(m) => Error::KeyspaceNotFound(add(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(add(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(add(m)),
            Error::Unavailable(m) => Error::Unavailable(add(m)),
            Error::NotApplied(m) => Error::NotApplied(add(m)),
            Error::DeadlineExceeded {
                elapsed_ms,
                message,
            } => Error::DeadlineExceeded {
                elapsed_ms,
                message: add(message),
            },
            Error::NotLeader { leader, message } => Error::NotLeader {
                leader,
                message: add(message),
            },
            Error::DataLoss(m) => Error::DataLoss(add(m)),
            Error::Connect { addr, message } => Error::Connect {
                addr,
                message: add(message),
            },
            Error::Transport { addr, message } => Error::Transport {
                addr,
                message: add(message),
            },
            Error::Config(m) => Error::Config(add(m)),
            Error::Other { code, message } => Error::Other {
                code,
                message: add(message),
            },
        }
    }

    /// True when the request certainly was not applied, so any request may be retried.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::NotLeader { .. } | Error::NotApplied(_)
        )
    }

    /// True when trying again (elsewhere or later) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::NotLeader { .. }
                | Error::Unavailable(_)
                | Error::NotApplied(_)
                | Error::Transport { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_node(code: Code, headers: &[(&'static str, &'static str)]) -> Status {
        let mut s = Status::new(code, "[n3] refused");
        s.metadata_mut().insert(NODE_HEADER, "n3".parse().unwrap());
        for (k, v) in headers {
            s.metadata_mut().insert(*k, v.parse().unwrap());
        }
        s
    }

    #[test]
    fn unavailable_is_not_applied_only_when_the_node_says_so() {
        let said = Error::from_status(
            from_node(Code::Unavailable, &[(NOT_APPLIED_HEADER, "true")]),
            "a",
        );
        assert!(matches!(said, Error::NotApplied(_)), "{said:?}");
        assert!(said.certainly_not_applied() && said.is_retryable());
        let unsaid = Error::from_status(from_node(Code::Unavailable, &[]), "a");
        assert!(matches!(unsaid, Error::Unavailable(_)), "{unsaid:?}");
        assert!(!unsaid.certainly_not_applied());
        // The header means nothing on another code.
        let other = Error::from_status(
            from_node(Code::DeadlineExceeded, &[(NOT_APPLIED_HEADER, "true")]),
            "a",
        );
        assert!(!other.certainly_not_applied(), "{other:?}");
    }

    #[test]
    fn a_note_keeps_the_kind_of_error() {
        let e = Error::Transport {
            addr: "a".into(),
            message: "reset".into(),
        }
        .with_note("may have been created");
        assert!(
            matches!(&e, Error::Transport { message, .. } if message == "reset; may have been created")
        );
        assert!(!e.certainly_not_applied());
    }
}
