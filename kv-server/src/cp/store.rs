//! Durable storage of one CP group over the shared `Engine`: the Raft log store
//! (`RaftLogStorage`) here, the key-value state machine (`RaftStateMachine`) in
//! `cp::state_machine`, the shared key layout in `cp::keys`.
//!
//! Trees of group `g`: `raft/g/log` (index big-endian -> entry), `raft/g/meta` (vote, committed,
//! last purged), `raft/g/sm` (records under `d`+key, applied log id and membership under `m/`),
//! `raft/g/snap` (the current snapshot). Invariants:
//! - `log_io_completed` is called only after the appended entries are flushed; votes are flushed
//!   before `save_vote` returns.
//! - One `apply` call is one atomic `apply_batch` on the sm tree: records, applied log id and
//!   membership move together, so a crash never leaves a half-applied entry. Installing a
//!   snapshot replaces the sm tree's contents in one batch as well.
//! - The sm tree is flushed before a snapshot is built from it, so the state machine on disk is
//!   never behind the snapshot (and so never behind the purged log).
//! - Every record is a checksummed `StoredRecord` with `Version::Revision(log index)`; a record
//!   failing its checksum is an error, never a value.
//! - A delete removes the key: the Raft log orders CP writes, so no tombstone is needed.

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return the same
// type so `?` works without boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use crate::cp::codec;
use crate::cp::keys::{get_decoded, io_read, io_write, scan, tree_name};
use crate::cp::state_machine::StateMachineStore;
use crate::cp::types::{Entry, LogId, RaftStorageError, TypeConfig};
use crate::storage::group_commit::GroupCommit;
use crate::storage::{BatchOp, Engine, Tree};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Opens (creating if needed) the log store and state machine of one group.
pub fn open_group(
    engine: &Arc<dyn Engine>,
    group: u64,
) -> Result<(LogStore, StateMachineStore), RaftStorageError> {
    let open = |part: &str| engine.open_tree(&tree_name(group, part)).map_err(io_read);
    let log = LogStore {
        group,
        log: open("log")?,
        meta: open("meta")?,
        commit: engine.group_commit(),
    };
    let sm = StateMachineStore::open(group, open("sm")?, open("snap")?, engine.location())?;
    Ok((log, sm))
}

/// The Raft log of one group. Cloning shares the trees (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    group: u64,
    log: Arc<dyn Tree>,
    meta: Arc<dyn Tree>,
    /// The engine's group commit; `None` flushes inline (memory engines, simulations).
    commit: Option<Arc<GroupCommit>>,
}

impl LogStore {
    fn last_purged(&self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(get_decoded::<Option<LogId>>(&*self.meta, KEY_PURGED, "purged")?.flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end_ref = match &end {
            Bound::Included(b) => Bound::Included(b.as_slice()),
            Bound::Excluded(b) => Bound::Excluded(b.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let rows = scan(&*self.log, &start.to_be_bytes(), end_ref).map_err(io_read)?;
        rows.into_iter()
            .map(|(_, v)| codec::decode::<Entry>("log entry", &v).map_err(io_read))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.log.last().map_err(io_read)? {
            Some((_, v)) => Some(
                codec::decode::<Entry>("log entry", &v)
                    .map_err(io_read)?
                    .log_id,
            ),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        let bytes = codec::encode("vote", vote).map_err(io_write)?;
        self.meta.insert(KEY_VOTE, &bytes).map_err(io_write)?;
        // A vote must survive a crash, or a node could vote twice in one term.
        self.meta.flush().map_err(io_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        get_decoded(&*self.meta, KEY_VOTE, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not flushed: losing it only means re-applying fewer entries at startup.
        let bytes = codec::encode("committed", &committed).map_err(io_write)?;
        self.meta.insert(KEY_COMMITTED, &bytes).map_err(io_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(get_decoded::<Option<LogId>>(&*self.meta, KEY_COMMITTED, "committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            let bytes = codec::encode("log entry", &entry).map_err(io_write)?;
            ops.push(BatchOp::Insert(
                entry.log_id.index.to_be_bytes().to_vec(),
                bytes,
            ));
        }
        if let Err(e) = self.log.apply_batch(&ops) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(io_write(e));
        }
        // Durable before acknowledged: openraft counts this node towards a quorum only once
        // the flush covering these entries is done. With group commit that flush is shared
        // with every other group's appends (and AP writes) ready at the same moment.
        if let Some(commit) = &self.commit {
            commit.after_flush(Box::new(move |r| {
                callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())));
            }));
            return Ok(());
        }
        let res = self
            .log
            .flush()
            .map_err(|e| std::io::Error::other(e.to_string()));
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = io_write(std::io::Error::other(e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "truncate log");
        let start = log_id.index.to_be_bytes();
        let rows = scan(&*self.log, &start, Bound::Unbounded).map_err(io_read)?;
        let ops: Vec<BatchOp> = rows.into_iter().map(|(k, _)| BatchOp::Remove(k)).collect();
        self.log.apply_batch(&ops).map_err(io_write)?;
        self.log.flush().map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "purge log");
        // Record the purge point first: if we crash midway, leftover entries below it are
        // simply never read.
        let bytes = codec::encode("purged", &Some(log_id)).map_err(io_write)?;
        self.meta.insert(KEY_PURGED, &bytes).map_err(io_write)?;
        self.meta.flush().map_err(io_write)?;
        let end = log_id.index.to_be_bytes();
        let rows = scan(&*self.log, &0u64.to_be_bytes(), Bound::Included(&end)).map_err(io_read)?;
        let ops: Vec<BatchOp> = rows.into_iter().map(|(k, _)| BatchOp::Remove(k)).collect();
        self.log.apply_batch(&ops).map_err(io_write)
    }
}
