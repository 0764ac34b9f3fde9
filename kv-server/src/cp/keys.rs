//! The layout shared by a CP group's log store (`cp::store`) and state machine
//! (`cp::state_machine`): tree names, key prefixes, paged scans and error conversions.

// openraft's `StorageError` (224 bytes) is what the store's trait methods return; helpers return it
// too so `?` needs no boxing.
#![allow(clippy::result_large_err)]

use crate::cp::codec;
use crate::cp::types::RaftStorageError;
use crate::storage::{StorageError, Tree};
use openraft::{AnyError, StorageIOError};
use std::ops::Bound;

/// Entries or records read from a tree per `range` call when scanning.
pub const SCAN_PAGE: usize = 1024;
/// Key of the snapshot stored whole (metadata and body in one value) by older versions; moved
/// into chunks (`cp::snapshot`) when the state machine opens.
pub const KEY_SNAPSHOT: &[u8] = b"current";
/// Key of the applied log id in the sm tree.
pub const SM_APPLIED: &[u8] = b"m/applied";
/// Key of the membership in the sm tree.
pub const SM_MEMBERSHIP: &[u8] = b"m/membership";
/// Key prefix (inside the data records) of keyspace definitions in the metadata group.
pub const KEYSPACE_PREFIX: &[u8] = b"keyspace/";
/// Prefix of data records in the sm tree; `DATA_END` is the first key past them.
pub const DATA_PREFIX: u8 = b'd';
/// The first sm-tree key past the data records.
pub const DATA_END: &[u8] = b"e";

/// The tree names of one group.
pub fn tree_name(group: u64, part: &str) -> String {
    format!("raft/{group}/{part}")
}

/// The sm-tree key of a record key.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// An openraft read error from any error.
pub fn io_read(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read(AnyError::new(&e)).into()
}

/// An openraft write error from any error.
pub fn io_write(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// Key-value pairs read from a tree, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads every entry of a tree between `start` and `end`, a page at a time.
pub fn scan(tree: &dyn Tree, start: &[u8], end: Bound<&[u8]>) -> Result<Rows, StorageError> {
    let mut out = Vec::new();
    let mut from = start.to_vec();
    let mut first = true;
    loop {
        let lower = if first {
            Bound::Included(from.as_slice())
        } else {
            Bound::Excluded(from.as_slice())
        };
        let page = tree.range(lower, end, SCAN_PAGE)?;
        let full = page.len() == SCAN_PAGE;
        if let Some((k, _)) = page.last() {
            from = k.clone();
        }
        out.extend(page);
        first = false;
        if !full {
            return Ok(out);
        }
    }
}

/// Reads and decodes one bincode value of a tree.
pub fn get_decoded<T: serde::de::DeserializeOwned>(
    tree: &dyn Tree,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, RaftStorageError> {
    match tree.get(key).map_err(io_read)? {
        None => Ok(None),
        Some(bytes) => codec::decode(what, &bytes).map(Some).map_err(io_read),
    }
}
