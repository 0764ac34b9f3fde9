//! The replica side of the AP engine: what this node does when a coordinator, a read repair, a
//! hint replay or an anti-entropy peer calls it — store a record or a hint, read a key, answer
//! with Merkle leaves or the records of some leaves.
//!
//! Invariants: every acknowledged record or hint is flushed before the call returns, because
//! the caller counts the answer as a durable ack — a record that superseded nothing too, since
//! what superseded it may not be durable yet (an anti-entropy batch before its flush, or a
//! concurrent write whose flush is still running); the flushes of writes ready together are
//! one (the engine's group commit, awaited, or `GroupFlush`). A record whose timestamp is
//! beyond the maximum clock offset, and a hint for a node that is not a member, are refused
//! before anything is stored.

use super::engine::ApEngine;
use super::error::ApError;
use super::lww::ApRecord;
use super::store::RangePage;
use crate::storage::StorageError;
use crate::types::NodeId;

impl ApEngine {
    /// Stores a record sent by a coordinator, a repair or a hint replay and returns once it is
    /// durable; true if it superseded what was stored. With `hint_for` naming another node it is
    /// kept as a durable hint instead. Waiting for the flush does not hold an async worker: on
    /// sled it awaits the engine's group commit (shared with the Raft log appends).
    pub async fn apply_replica(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<bool, ApError> {
        let applied = self.store_replica(keyspace_id, record, hint_for)?;
        self.flushed().await?;
        Ok(applied)
    }

    /// Returns after a flush that started after the call made every earlier write of this
    /// node durable: the engine's group commit where it has one (sled: awaited, off the async
    /// workers), else one shared inline flush (`GroupFlush`; memory and simulated disks).
    pub(super) async fn flushed(&self) -> Result<(), StorageError> {
        match self.inner.engine.group_commit() {
            Some(commit) => commit.sync().await,
            None => self.inner.flusher.flush(&*self.inner.engine),
        }
    }

    /// `apply_replica` for callers that cannot await (the in-memory test network): the same
    /// store and the same flush, waited for on the calling thread.
    pub fn apply_replica_blocking(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<bool, ApError> {
        let applied = self.store_replica(keyspace_id, record, hint_for)?;
        self.inner.flusher.flush(&*self.inner.engine)?;
        Ok(applied)
    }

    /// Validates and stores a record or a hint, not yet flushed.
    fn store_replica(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<bool, ApError> {
        let hint_for = hint_for.filter(|&owner| owner != self.node_id());
        if let Some(owner) = hint_for {
            let members = self
                .inner
                .ring
                .preference_list(self.inner.ring.partition_for_key(&record.key));
            if !members.contains(&owner) {
                return Err(ApError::UnknownHintOwner {
                    owner,
                    members: members.len(),
                });
            }
        }
        self.inner.clock.observe(record.hlc)?;
        match hint_for {
            Some(owner) => {
                self.inner.hints.add(owner, keyspace_id, record)?;
                Ok(true)
            }
            None => {
                let store = self.store(keyspace_id)?;
                Ok(store.apply(&record, self.forget_before_ms())?)
            }
        }
    }

    /// This node's replica of `key` (tombstones included); a corrupt record is
    /// `ApError::Storage(StorageError::Corrupt)`, never its bytes.
    pub fn read_replica(&self, keyspace_id: u32, key: &[u8]) -> Result<Option<ApRecord>, ApError> {
        let read = self.store(keyspace_id)?.read(key);
        if let Err(e @ StorageError::Corrupt { .. }) = &read {
            crate::metrics::metrics().corrupt("ap", "detected");
            tracing::warn!(node_id = self.node_id(), keyspace_id, error = %e, "corrupt AP record read; the coordinator repairs it from the other replicas");
        }
        Ok(read?)
    }

    /// This node's Merkle leaf hashes of one partition.
    pub fn merkle_leaves(&self, keyspace_id: u32, partition: u32) -> Result<Vec<u64>, ApError> {
        Ok(self.store(keyspace_id)?.merkle_leaves(partition)?)
    }

    /// One page of this node's records of one partition in the given leaves, after the key
    /// `after` (from the first when `None`); a page never exceeds `ApConfig::range_page_bytes`
    /// or one record.
    pub fn merkle_range(
        &self,
        keyspace_id: u32,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
    ) -> Result<RangePage, ApError> {
        let max_bytes = self.inner.config.range_page_bytes();
        Ok(self
            .store(keyspace_id)?
            .range_page(partition, leaves, after, max_bytes)?)
    }
}
