//! The replica side of the AP engine: what this node does when a coordinator, a read repair, a
//! hint replay or an anti-entropy peer calls it — store a record or a hint, read a key, answer
//! with Merkle leaves or the records of some leaves.
//!
//! Invariant: an applied record or a stored hint is flushed before the call returns, because
//! the caller counts the answer as a durable ack.

use super::engine::ApEngine;
use super::error::ApError;
use super::lww::ApRecord;
use crate::types::NodeId;

impl ApEngine {
    /// Stores a record sent by a coordinator, a repair or a hint replay; true if it superseded
    /// what was stored. With `hint_for` naming another node it is kept as a durable hint instead.
    pub fn apply_replica(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<bool, ApError> {
        self.inner.clock.observe(record.hlc);
        match hint_for {
            Some(owner) if owner != self.node_id() => {
                self.inner.hints.add(owner, keyspace_id, record)?;
                Ok(true)
            }
            _ => {
                let store = self.store(keyspace_id)?;
                let applied = store.apply(&record)?;
                if applied {
                    // An acknowledged replica write must survive a crash.
                    self.inner.engine.flush()?;
                }
                Ok(applied)
            }
        }
    }

    /// This node's replica of `key` (tombstones included).
    pub fn read_replica(&self, keyspace_id: u32, key: &[u8]) -> Result<Option<ApRecord>, ApError> {
        Ok(self.store(keyspace_id)?.read(key)?)
    }

    /// This node's Merkle leaf hashes of one partition.
    pub fn merkle_leaves(&self, keyspace_id: u32, partition: u32) -> Result<Vec<u64>, ApError> {
        Ok(self.store(keyspace_id)?.merkle_leaves(partition)?)
    }

    /// This node's records of one partition in the given leaves.
    pub fn merkle_range(
        &self,
        keyspace_id: u32,
        partition: u32,
        leaves: &[u32],
    ) -> Result<Vec<ApRecord>, ApError> {
        Ok(self
            .store(keyspace_id)?
            .records_in_leaves(partition, leaves)?)
    }
}
