//! The local replica store of one AP keyspace: tree `ap/{keyspace_id}/data`, keys stored as
//! `[partition u32 big-endian][user key]` so a partition's records are one contiguous range
//! (cheap Merkle scans), values as checksummed `StoredRecord`s.
//!
//! Invariants: `apply` is a read-merge-write under one lock per store, so a record is replaced only
//! by one that supersedes it under LWW (an older write never overwrites a newer one, whatever the
//! arrival order). Tombstones are kept for `tombstone_grace_ms` after their write (HLC physical
//! time) — longer than the hint window and the anti-entropy period, so no replica or hint can
//! still hold an older value of the key when its tombstone is purged (else the value would come
//! back).

use super::lww::{self, ApRecord};
use super::merkle::{leaf_of, LeafBuilder};
use crate::storage::record::RecordTree;
use crate::storage::{Engine, Result, StorageError, Tree};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Default grace period of a tombstone: 10 days (Cassandra's `gc_grace_seconds`), far longer than
/// `hints::DEFAULT_HINT_MAX_AGE_MS` (3 h) and the anti-entropy period (minutes).
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 10 * 24 * 60 * 60 * 1000;
/// Entries read per page when scanning a tree.
pub const SCAN_BATCH: usize = 1024;
/// Most records one `records_in_leaves` call returns (bounds a Merkle range response).
pub const MAX_RANGE_RECORDS: usize = 100_000;

/// Maps a key to its partition (from the ring).
pub type Partitioner = Arc<dyn Fn(&[u8]) -> u32 + Send + Sync>;

/// The replica store of one AP keyspace.
pub struct ApStore {
    keyspace_id: u32,
    records: RecordTree,
    partition_for_key: Partitioner,
    /// Serialises read-merge-write in `apply` and `purge_tombstones`.
    write_lock: Mutex<()>,
}

impl ApStore {
    /// The tree name of a keyspace's data.
    pub fn tree_name(keyspace_id: u32) -> String {
        format!("ap/{keyspace_id}/data")
    }

    /// Opens (creating if needed) the store of `keyspace_id` on `engine`.
    pub fn open(
        engine: &Arc<dyn Engine>,
        keyspace_id: u32,
        partition_for_key: Partitioner,
    ) -> Result<Self> {
        let tree = engine.open_tree(&Self::tree_name(keyspace_id))?;
        Ok(Self {
            keyspace_id,
            records: RecordTree::new(tree, engine.location()),
            partition_for_key,
            write_lock: Mutex::new(()),
        })
    }

    /// The keyspace this store holds.
    pub fn keyspace_id(&self) -> u32 {
        self.keyspace_id
    }

    fn storage_key(&self, key: &[u8]) -> Vec<u8> {
        let partition = (self.partition_for_key)(key);
        let mut k = Vec::with_capacity(4 + key.len());
        k.extend_from_slice(&partition.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    fn decode(&self, storage_key: Vec<u8>, bytes: &[u8]) -> Result<ApRecord> {
        let tree = self.records.raw().name().to_string();
        let stored =
            crate::storage::record::decode(bytes, &storage_key, &tree, self.records.location())?;
        let user_key = storage_key.get(4..).unwrap_or_default().to_vec();
        ApRecord::from_stored(user_key, stored).ok_or_else(|| StorageError::Corrupt {
            location: self.records.location().to_string(),
            tree,
            key: String::from_utf8_lossy(&storage_key).into_owned(),
            reason: "AP record carries a CP revision instead of an HLC".into(),
        })
    }

    /// Merges `record` into the store; true if it was stored (it superseded what was there).
    pub fn apply(&self, record: &ApRecord) -> Result<bool> {
        let key = self.storage_key(&record.key);
        let _guard = self.write_lock.lock().expect("store lock poisoned");
        let current = match self.records.raw().get(&key)? {
            Some(bytes) => Some(self.decode(key.clone(), &bytes)?),
            None => None,
        };
        if let Some(current) = &current {
            if !lww::supersedes(record, current) {
                return Ok(false);
            }
        }
        self.records.put(&key, &record.to_stored())?;
        Ok(true)
    }

    /// This replica's record of `key` (tombstones included), checksum-verified.
    pub fn read(&self, key: &[u8]) -> Result<Option<ApRecord>> {
        let storage_key = self.storage_key(key);
        match self.records.raw().get(&storage_key)? {
            Some(bytes) => self.decode(storage_key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` on every record of `partition`, in key order, page by page.
    pub fn for_each_in_partition(
        &self,
        partition: u32,
        f: impl FnMut(ApRecord) -> Result<()>,
    ) -> Result<()> {
        let start = partition.to_be_bytes().to_vec();
        let end = partition.checked_add(1).map(|p| p.to_be_bytes().to_vec());
        self.scan(Bound::Included(start), end, f)
    }

    /// Calls `f` on every record of the store.
    pub fn for_each(&self, f: impl FnMut(ApRecord) -> Result<()>) -> Result<()> {
        self.scan(Bound::Unbounded, None, f)
    }

    fn scan(
        &self,
        mut start: Bound<Vec<u8>>,
        end: Option<Vec<u8>>,
        mut f: impl FnMut(ApRecord) -> Result<()>,
    ) -> Result<()> {
        let tree: &Arc<dyn Tree> = self.records.raw();
        loop {
            let end_bound = match &end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            };
            let start_bound = match &start {
                Bound::Included(s) => Bound::Included(s.as_slice()),
                Bound::Excluded(s) => Bound::Excluded(s.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let page = tree.range(start_bound, end_bound, SCAN_BATCH)?;
            let full = page.len() == SCAN_BATCH;
            let mut last = None;
            for (k, v) in page {
                f(self.decode(k.clone(), &v)?)?;
                last = Some(k);
            }
            match last {
                Some(k) if full => start = Bound::Excluded(k),
                _ => return Ok(()),
            }
        }
    }

    /// The Merkle leaf hashes of one partition.
    pub fn merkle_leaves(&self, partition: u32) -> Result<Vec<u64>> {
        let mut builder = LeafBuilder::default();
        self.for_each_in_partition(partition, |r| {
            builder.add(&r);
            Ok(())
        })?;
        Ok(builder.finish())
    }

    /// The records of one partition that fall in `leaves` (at most `MAX_RANGE_RECORDS`).
    pub fn records_in_leaves(&self, partition: u32, leaves: &[u32]) -> Result<Vec<ApRecord>> {
        let wanted: BTreeSet<u32> = leaves.iter().copied().collect();
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |r| {
            if out.len() < MAX_RANGE_RECORDS && wanted.contains(&leaf_of(&r.key)) {
                out.push(r);
            }
            Ok(())
        })?;
        if out.len() == MAX_RANGE_RECORDS {
            // FIXME: resume from the last key instead of truncating; the limit is far above a
            // partition's expected size at this stage.
            tracing::warn!(
                keyspace_id = self.keyspace_id,
                partition,
                limit = MAX_RANGE_RECORDS,
                "merkle range response truncated"
            );
        }
        Ok(out)
    }

    /// Removes tombstones written more than `grace_ms` before `now_ms`; returns how many.
    pub fn purge_tombstones(&self, now_ms: u64, grace_ms: u64) -> Result<usize> {
        let mut expired = Vec::new();
        self.for_each(|r| {
            if r.is_tombstone() && r.hlc.physical_ms.saturating_add(grace_ms) < now_ms {
                expired.push(r);
            }
            Ok(())
        })?;
        let _guard = self.write_lock.lock().expect("store lock poisoned");
        let mut purged = 0;
        for r in expired {
            let key = self.storage_key(&r.key);
            // Re-check under the lock: a newer write may have replaced the tombstone meanwhile.
            if self.read(&r.key)?.as_ref() == Some(&r) {
                self.records.raw().remove(&key)?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::testkit::rec;
    use crate::storage::memory::MemoryEngine;

    fn store(engine: &Arc<dyn Engine>) -> ApStore {
        // Partition = first byte of the key mod 4.
        ApStore::open(engine, 2, Arc::new(|k: &[u8]| u32::from(k[0]) % 4)).unwrap()
    }

    #[test]
    fn older_writes_never_overwrite_newer_ones() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        assert!(s.apply(&rec("a", 10, Some("new"))).unwrap());
        assert!(!s.apply(&rec("a", 5, Some("old"))).unwrap());
        assert!(
            !s.apply(&rec("a", 10, Some("new"))).unwrap(),
            "re-apply is a no-op"
        );
        assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 10, Some("new"))));
        assert!(s.apply(&rec("a", 11, None)).unwrap());
        assert!(
            !s.apply(&rec("a", 10, Some("new"))).unwrap(),
            "delete stays"
        );
        assert_eq!(s.read(b"a").unwrap().unwrap().value, None);
        assert_eq!(s.read(b"b").unwrap(), None);
    }

    #[test]
    fn partition_scans_see_only_their_partition_across_pages() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        // 'a' = 97 -> partition 1, 'b' = 98 -> partition 2; enough keys to need several pages.
        let n = SCAN_BATCH * 2 + 7;
        for i in 0..n {
            s.apply(&rec(&format!("a{i:05}"), 1, Some("x"))).unwrap();
            s.apply(&rec(&format!("b{i:05}"), 1, Some("y"))).unwrap();
        }
        let mut seen = Vec::new();
        s.for_each_in_partition(1, |r| {
            seen.push(r.key);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), n);
        assert!(seen.iter().all(|k| k[0] == b'a'));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let leaves = s.merkle_leaves(1).unwrap();
        assert_ne!(leaves, s.merkle_leaves(2).unwrap());
        assert_eq!(
            s.merkle_leaves(3).unwrap(),
            vec![0; super::super::merkle::MERKLE_LEAVES]
        );
        let leaf = leaf_of(b"a00000");
        let in_leaf = s.records_in_leaves(1, &[leaf]).unwrap();
        assert!(!in_leaf.is_empty() && in_leaf.iter().all(|r| leaf_of(&r.key) == leaf));
    }

    #[test]
    fn tombstones_purge_only_after_the_grace_period() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        let grace = 1_000;
        s.apply(&rec("a", 100, None)).unwrap();
        s.apply(&rec("b", 100, Some("live"))).unwrap();
        s.apply(&rec("c", 900, None)).unwrap();
        assert_eq!(
            s.purge_tombstones(100 + grace, grace).unwrap(),
            0,
            "at the edge"
        );
        assert_eq!(s.purge_tombstones(100 + grace + 1, grace).unwrap(), 1);
        assert_eq!(s.read(b"a").unwrap(), None);
        assert!(s.read(b"c").unwrap().is_some(), "younger tombstone kept");
        assert!(s.read(b"b").unwrap().is_some(), "values never purged");
        assert_eq!(s.purge_tombstones(u64::MAX, grace).unwrap(), 1);
        assert!(s.read(b"b").unwrap().is_some());
    }

    #[test]
    fn data_survives_reopening_and_corruption_is_reported() {
        let mem = MemoryEngine::new();
        let engine: Arc<dyn Engine> = Arc::new(mem.clone());
        store(&engine).apply(&rec("a", 1, Some("v"))).unwrap();
        let reopened: Arc<dyn Engine> = Arc::new(mem);
        let s = store(&reopened);
        assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 1, Some("v"))));
        let tree = reopened.open_tree(&ApStore::tree_name(2)).unwrap();
        let (k, mut v) = tree.last().unwrap().unwrap();
        v[5] ^= 0x40;
        tree.insert(&k, &v).unwrap();
        assert!(matches!(s.read(b"a"), Err(StorageError::Corrupt { .. })));
        assert!(
            s.apply(&rec("a", 2, Some("w"))).is_err(),
            "never merges over corrupt data"
        );
    }
}
