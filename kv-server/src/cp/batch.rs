//! The Raft side of the per-peer batcher (`crate::batch`): the Raft messages of many groups
//! bound for one peer leave in few `Internal.RaftBatch` calls. Order per group is not kept
//! across the concurrent calls: openraft never has two AppendEntries of one group to one peer
//! outstanding, and votes and snapshot chunks do not go through here.

use crate::cp::network::{RaftKind, TransportError};
use crate::types::NodeId;

pub use crate::batch::{
    BatchSend, MAX_BATCH_CALLS_IN_FLIGHT, MAX_BATCH_MESSAGES, MAX_QUEUED_MESSAGES,
    MESSAGE_FRAMING_BYTES,
};

/// One Raft message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The Raft group.
    pub group: u64,
    /// The kind of message.
    pub kind: RaftKind,
    /// The codec-encoded message.
    pub payload: Vec<u8>,
}

impl crate::batch::BatchItem for BatchItem {
    fn payload_bytes(&self) -> usize {
        self.payload.len()
    }
}

/// The answer to one message: the encoded response, or why there is none.
pub type ItemResult = Result<Vec<u8>, TransportError>;

impl crate::batch::BatchError for TransportError {
    fn unreachable(to: NodeId, reason: String) -> Self {
        TransportError::Unreachable { to, reason }
    }
    fn network(to: NodeId, reason: String) -> Self {
        TransportError::Network { to, reason }
    }
}

/// The batching sender of Raft messages to one peer.
pub type RaftBatcher = crate::batch::Batcher<BatchItem, Vec<u8>, TransportError>;

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
