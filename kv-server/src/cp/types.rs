//! The openraft type configuration of every CP group, and the commands (`Request`) its state
//! machine applies with their results (`Response`). Requests carry the keyspace id and key so an
//! entry is self-describing in the log; the group already implies both keyspace and partition.
//! Keys and values are serialized as byte strings (`serde_bytes`): serde's default writes a
//! `Vec<u8>` one element at a time, which made a 1 MiB entry too slow to replicate within a
//! heartbeat interval in debug builds. bincode encodes both forms identically (a length, then
//! the bytes), so logs written before still decode (checked in `network`'s tests).

use crate::types::KeyspaceDef;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft type configuration shared by every CP group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::cp::snapshot::SnapshotFile,
        AsyncRuntime = crate::cp::runtime::CpRuntime,
);

/// The openraft handle of one group.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's log entry for our type config.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's log id with our node id type.
pub type LogId = openraft::LogId<u64>;
/// openraft's storage error with our node id type.
pub type RaftStorageError = openraft::StorageError<u64>;
/// openraft's stored membership with our node types.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// openraft's snapshot metadata with our node types.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

/// What a compare-and-swap expects to find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key exists and was last written at this revision.
    Revision(u64),
    /// The key exists and holds exactly this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key does not exist.
    Absent,
}

/// A command replicated through a group's log and applied by its state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sets a key; the record's revision becomes the entry's log index.
    Put {
        /// Keyspace id.
        keyspace: u32,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes a key (a no-op when it is absent; still gets a revision).
    Delete {
        /// Keyspace id.
        keyspace: u32,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets a key only if it matches `expected`.
    Cas {
        /// Keyspace id.
        keyspace: u32,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The condition.
        expected: Expected,
        /// The value written when the condition holds.
        #[serde(with = "serde_bytes")]
        new_value: Vec<u8>,
    },
    /// Metadata group only: adds a keyspace definition unless its name or id is taken.
    CreateKeyspace(KeyspaceDef),
    /// A client write tagged with its request id: applied at most once per id within the
    /// window of `cp::dedup` (a retry gets the first outcome). Appended last so log entries
    /// written before it existed still decode.
    Once {
        /// The client's id for this logical write, the same on every retry.
        id: RequestId,
        /// The write (`Put`, `Delete` or `Cas`).
        request: Box<Request>,
    },
}

/// Identifies one logical client write across retries: the Raft dissertation's client session
/// (client id) and sequence number (§6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per client instance.
    pub client_id: u64,
    /// Increases with every write the client starts.
    pub seq: u64,
}

/// Result of creating a keyspace. Existing names and ids are outcomes, not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyspaceOutcome {
    /// The definition was added.
    Created,
    /// A keyspace of that name exists (this is its definition); nothing changed.
    NameExists(KeyspaceDef),
    /// Another keyspace has that id (this is its definition); nothing changed.
    IdTaken(KeyspaceDef),
}

/// Result of a compare-and-swap. A mismatch is an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasOutcome {
    /// The condition held; the key now holds the new value at this revision.
    Swapped {
        /// Revision of the write (its log index).
        revision: u64,
    },
    /// The condition failed; nothing was written.
    Mismatch {
        /// The key's current value and revision, `None` when absent.
        current: Option<(Vec<u8>, u64)>,
    },
}

/// What the state machine answers for one applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry: nothing for a client.
    Empty,
    /// A put or delete applied at this revision.
    Written {
        /// Revision of the write (its log index).
        revision: u64,
    },
    /// A compare-and-swap's outcome.
    Cas(CasOutcome),
    /// A keyspace creation's outcome.
    Keyspace(KeyspaceOutcome),
}
