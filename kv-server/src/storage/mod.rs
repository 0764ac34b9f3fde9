//! The storage seam: one `Engine` trait (named trees of ordered byte keys) with a sled engine
//! (default, on disk) and an in-memory engine (tests, simulation). Replication code sees only
//! these traits. **Architecture invariant:** nothing outside `storage/` names sled.

pub mod group_commit;
pub mod memory;
pub mod record;
pub mod sled;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Errors of the storage layer. Every variant names where the data lives.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The engine failed (I/O error, sled error).
    #[error("storage engine error in {location}: {message}")]
    Engine {
        /// Data directory (or "memory").
        location: String,
        /// What the engine said.
        message: String,
    },
    /// A stored record failed its checksum or could not be decoded: it is never returned.
    #[error("corrupt record for key {key:?} in tree {tree} of {location}: {reason}; the node's data directory needs repair (restore the replica from its peers)")]
    Corrupt {
        /// Data directory (or "memory").
        location: String,
        /// Tree name.
        tree: String,
        /// The key, lossily printed.
        key: String,
        /// Which check failed.
        reason: String,
    },
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set key to value.
    Insert(Vec<u8>, Vec<u8>),
    /// Remove key.
    Remove(Vec<u8>),
}

/// An ordered map of byte keys to byte values inside an engine.
pub trait Tree: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes one key (not durable until `flush`).
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes one key.
    fn remove(&self, key: &[u8]) -> Result<()>;
    /// Applies all ops atomically: after a crash either all or none are visible.
    fn apply_batch(&self, ops: &[BatchOp]) -> Result<()>;
    /// Entries with keys in the range, in key order, at most `limit` of them.
    fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The entry with the greatest key, if any.
    fn last(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Removes every entry.
    fn clear(&self) -> Result<()>;
    /// Makes every earlier write of this tree durable.
    fn flush(&self) -> Result<()>;
    /// Name of this tree.
    fn name(&self) -> &str;
}

/// A storage engine: a set of named trees sharing one data location.
pub trait Engine: Send + Sync + 'static {
    /// Opens (creating if needed) the tree with this name.
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>>;
    /// Makes every earlier write of every tree durable.
    fn flush(&self) -> Result<()>;
    /// Where the data lives: the data directory, or "memory".
    fn location(&self) -> &str;
    /// The engine's group commit, when a flush is costly enough to share (sled). `None` means
    /// callers flush inline (memory engines, simulated disks: deterministic, no thread).
    fn group_commit(&self) -> Option<Arc<group_commit::GroupCommit>> {
        None
    }
}

/// Which storage engine a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// sled, on disk (the default).
    #[default]
    Sled,
    /// In memory: nothing survives the process (tests, simulations).
    Memory,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "sled" => Ok(EngineKind::Sled),
            "memory" => Ok(EngineKind::Memory),
            other => Err(format!(
                "unknown storage engine {other:?}: expected \"sled\" or \"memory\""
            )),
        }
    }
}

/// Opens the engine of this kind; sled needs a data directory, memory ignores it.
pub fn open_engine(kind: EngineKind, dir: Option<&Path>) -> Result<Arc<dyn Engine>> {
    match (kind, dir) {
        (EngineKind::Memory, _) => Ok(Arc::new(memory::MemoryEngine::new())),
        (EngineKind::Sled, Some(dir)) => Ok(Arc::new(self::sled::SledEngine::open(dir)?)),
        (EngineKind::Sled, None) => Err(StorageError::Engine {
            location: "(none)".to_string(),
            message: "the sled engine needs a data directory: pass --data-dir".to_string(),
        }),
    }
}
