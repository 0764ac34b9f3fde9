//! Durable hints (hinted handoff): writes this node accepted on behalf of a replica that was down
//! or unreachable, kept in tree `ap/hints` until the intended owner acknowledges them.
//!
//! Layout: key `[owner u64][seq u64][keyspace_id u32][user key]` (big-endian, so one owner's hints
//! are one contiguous range in arrival order), value a checksummed `StoredRecord`.
//! Invariants: a hint is flushed before `add` returns (it counts as a write ack); it is removed only
//! by `remove` after the owner acknowledged it (or by `remove` once older than the hint window,
//! when anti-entropy takes over); at most `max_per_node` hints per owner, beyond which `add` fails
//! with `HintError::Full`; per-owner counts and the sequence number are rebuilt from the tree on
//! open, so all of this survives a restart.

use super::lww::ApRecord;
use crate::storage::record::RecordTree;
use crate::storage::{Engine, StorageError};
use crate::types::NodeId;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Tree holding every hint of this node.
pub const HINTS_TREE: &str = "ap/hints";
/// Default most hints kept for one owner (bounds disk use while a node is down).
pub const MAX_HINTS_PER_NODE: usize = 100_000;
/// Default age (by the write's HLC) after which a hint is dropped instead of replayed: 3 hours,
/// Cassandra's `max_hint_window`. Anti-entropy repairs what dropped hints would have carried.
pub const DEFAULT_HINT_MAX_AGE_MS: u64 = 3 * 60 * 60 * 1000;
/// Entries read per page when scanning the hint tree.
const SCAN_BATCH: usize = 1024;
/// Length of the fixed part of a hint key (owner, seq, keyspace id).
const KEY_HEADER: usize = 8 + 8 + 4;

/// Errors of the hint store.
#[derive(Debug, thiserror::Error)]
pub enum HintError {
    /// This node already holds the maximum number of hints for `node`.
    #[error("hint store full for node {node}: {limit} hints pending (MAX_HINTS_PER_NODE); the node has been down too long, repair it or let anti-entropy catch it up")]
    Full {
        /// The intended owner.
        node: NodeId,
        /// The bound that was hit.
        limit: usize,
    },
    /// The storage engine failed or a hint was corrupt.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One pending hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The replica the write was meant for.
    pub owner: NodeId,
    /// Arrival order at this node.
    pub seq: u64,
    /// The keyspace of the record.
    pub keyspace_id: u32,
    /// The write.
    pub record: ApRecord,
}

impl Hint {
    fn storage_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_HEADER + self.record.key.len());
        k.extend_from_slice(&self.owner.to_be_bytes());
        k.extend_from_slice(&self.seq.to_be_bytes());
        k.extend_from_slice(&self.keyspace_id.to_be_bytes());
        k.extend_from_slice(&self.record.key);
        k
    }
}

#[derive(Default)]
struct HintState {
    counts: BTreeMap<NodeId, usize>,
    next_seq: u64,
}

/// The durable hint store of one node.
pub struct HintStore {
    records: RecordTree,
    max_per_node: usize,
    state: Mutex<HintState>,
}

impl HintStore {
    /// Opens the hint store on `engine`, rebuilding counts from what is stored.
    pub fn open(engine: &Arc<dyn Engine>, max_per_node: usize) -> Result<Self, HintError> {
        let records = RecordTree::new(engine.open_tree(HINTS_TREE)?, engine.location());
        let store = Self {
            records,
            max_per_node,
            state: Mutex::new(HintState::default()),
        };
        let mut state = HintState::default();
        store.scan(None, usize::MAX, |h| {
            *state.counts.entry(h.owner).or_default() += 1;
            state.next_seq = state.next_seq.max(h.seq + 1);
        })?;
        *store.state.lock().expect("hint lock poisoned") = state;
        Ok(store)
    }

    /// Stores a hint for `owner`; fails with `Full` beyond `max_per_node`. The hint is durable
    /// after the engine's next flush: callers wait for one before acknowledging it
    /// (`ApEngine::apply_replica`), so hints stored together share one fsync.
    pub fn add(&self, owner: NodeId, keyspace_id: u32, record: ApRecord) -> Result<u64, HintError> {
        let mut state = self.state.lock().expect("hint lock poisoned");
        let count = state.counts.get(&owner).copied().unwrap_or(0);
        if count >= self.max_per_node {
            return Err(HintError::Full {
                node: owner,
                limit: self.max_per_node,
            });
        }
        let hint = Hint {
            owner,
            seq: state.next_seq,
            keyspace_id,
            record,
        };
        self.records
            .put(&hint.storage_key(), &hint.record.to_stored())?;
        state.next_seq += 1;
        *state.counts.entry(owner).or_default() += 1;
        Ok(hint.seq)
    }

    /// Up to `limit` pending hints for `owner`, oldest first.
    pub fn pending_for(&self, owner: NodeId, limit: usize) -> Result<Vec<Hint>, HintError> {
        let mut out = Vec::new();
        self.scan(Some(owner), limit, |h| out.push(h))?;
        Ok(out)
    }

    /// Deletes a hint (after its owner acknowledged it, or when it expired).
    pub fn remove(&self, hint: &Hint) -> Result<(), HintError> {
        let key = hint.storage_key();
        let mut state = self.state.lock().expect("hint lock poisoned");
        if self.records.raw().get(&key)?.is_none() {
            return Ok(());
        }
        self.records.raw().remove(&key)?;
        self.records.raw().flush()?;
        if let Some(c) = state.counts.get_mut(&hint.owner) {
            *c -= 1;
            if *c == 0 {
                state.counts.remove(&hint.owner);
            }
        }
        Ok(())
    }

    /// Pending hints per owner (for `kv status`); owners with none are absent.
    pub fn counts(&self) -> BTreeMap<NodeId, usize> {
        self.state
            .lock()
            .expect("hint lock poisoned")
            .counts
            .clone()
    }

    /// Pending hints for one owner.
    pub fn count_for(&self, owner: NodeId) -> usize {
        self.counts().get(&owner).copied().unwrap_or(0)
    }

    fn scan(
        &self,
        owner: Option<NodeId>,
        limit: usize,
        mut f: impl FnMut(Hint),
    ) -> Result<(), HintError> {
        let (mut start, end) = match owner {
            Some(o) => (
                Bound::Included(o.to_be_bytes().to_vec()),
                o.checked_add(1).map(|e| e.to_be_bytes().to_vec()),
            ),
            None => (Bound::Unbounded, None),
        };
        let mut seen = 0;
        while seen < limit {
            let start_bound = match &start {
                Bound::Included(s) => Bound::Included(s.as_slice()),
                Bound::Excluded(s) => Bound::Excluded(s.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let end_bound = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let page_limit = SCAN_BATCH.min(limit - seen);
            let page = self
                .records
                .raw()
                .range(start_bound, end_bound, page_limit)?;
            let full = page.len() == page_limit;
            let mut last = None;
            for (k, v) in page {
                f(self.decode(&k, &v)?);
                seen += 1;
                last = Some(k);
            }
            match last {
                Some(k) if full => start = Bound::Excluded(k),
                _ => break,
            }
        }
        Ok(())
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Hint, HintError> {
        let corrupt = |reason: &str| StorageError::Corrupt {
            location: self.records.location().to_string(),
            tree: HINTS_TREE.to_string(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        if key.len() < KEY_HEADER {
            return Err(corrupt("hint key shorter than its header").into());
        }
        let stored =
            crate::storage::record::decode(bytes, key, HINTS_TREE, self.records.location())?;
        let user_key = key[KEY_HEADER..].to_vec();
        let record = ApRecord::from_stored(user_key, stored)
            .ok_or_else(|| corrupt("hint carries a CP revision instead of an HLC"))?;
        Ok(Hint {
            owner: u64::from_be_bytes(key[0..8].try_into().expect("8 bytes")),
            seq: u64::from_be_bytes(key[8..16].try_into().expect("8 bytes")),
            keyspace_id: u32::from_be_bytes(key[16..20].try_into().expect("4 bytes")),
            record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;

    fn rec(key: &str, t: u64) -> ApRecord {
        crate::ap::testkit::rec(key, t, Some("v"))
    }

    #[test]
    fn hints_are_bounded_per_owner_and_survive_reopen() {
        let mem = MemoryEngine::new();
        let engine: Arc<dyn Engine> = Arc::new(mem.clone());
        let hints = HintStore::open(&engine, 3).unwrap();
        for i in 0..3 {
            hints.add(5, 2, rec(&format!("k{i}"), i)).unwrap();
        }
        hints.add(6, 2, rec("other", 9)).unwrap();
        let err = hints.add(5, 2, rec("k3", 3)).unwrap_err();
        assert!(matches!(err, HintError::Full { node: 5, limit: 3 }));
        let msg = err.to_string();
        assert!(msg.contains("node 5") && msg.contains("3 hints"), "{msg}");
        assert_eq!(hints.counts(), BTreeMap::from([(5, 3), (6, 1)]));
        drop(hints);

        // Restart over the same engine: counts, contents and sequence numbers survive.
        let engine: Arc<dyn Engine> = Arc::new(mem);
        let hints = HintStore::open(&engine, 3).unwrap();
        assert_eq!(hints.counts(), BTreeMap::from([(5, 3), (6, 1)]));
        let pending = hints.pending_for(5, 10).unwrap();
        let keys: Vec<_> = pending.iter().map(|h| h.record.key.clone()).collect();
        assert_eq!(keys, vec![b"k0".to_vec(), b"k1".to_vec(), b"k2".to_vec()]);
        assert!(pending.iter().all(|h| h.owner == 5 && h.keyspace_id == 2));
        assert_eq!(hints.pending_for(5, 2).unwrap().len(), 2, "limit respected");
        hints.remove(&pending[0]).unwrap();
        hints.remove(&pending[0]).unwrap(); // idempotent
        assert_eq!(hints.count_for(5), 2);
        let seq = hints.add(5, 2, rec("k4", 4)).unwrap();
        assert!(seq > pending[2].seq, "sequence continues after restart");
        assert_eq!(hints.pending_for(5, 10).unwrap().last().unwrap().seq, seq);
    }
}
