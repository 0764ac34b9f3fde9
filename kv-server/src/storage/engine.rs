//! The storage seam itself: the `Engine` and `Tree` traits every engine implements, and the
//! errors they report. Engines (`sled`, `memory`) and helpers (`record`) import only this
//! module and `error`, so none of them imports the module that names them all.

use super::error::Result;
use super::group_commit::GroupCommit;
use std::ops::Bound;
use std::sync::Arc;

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
    fn group_commit(&self) -> Option<Arc<GroupCommit>> {
        None
    }
    /// The names of every tree this engine holds, in name order (offline tools such as the
    /// corruption fault walk them). Engines that cannot list their trees say so.
    fn tree_names(&self) -> Result<Vec<String>> {
        Err(super::error::StorageError::Engine {
            location: self.location().to_string(),
            message: "this storage engine cannot list its trees".to_string(),
        })
    }
}
