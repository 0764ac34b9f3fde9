//! The local replica store of one AP keyspace: tree `ap/{keyspace_id}/data`, keys stored as
//! `[partition u32 big-endian][user key]` so a partition's records are one contiguous range
//! (cheap Merkle scans), values as checksummed `StoredRecord`s; and its tombstone index, tree
//! `ap/{keyspace_id}/tombstones`: the same keys, each mapped to the local HLC stamp taken when
//! the tombstone was stored here (its *arrival*).
//!
//! Invariants: `apply` is a read-merge-write under one lock per store, so a record is replaced only
//! by one that supersedes it under LWW (an older write never overwrites a newer one, whatever the
//! arrival order). Every stored tombstone has an index entry stamped after the tombstone was
//! written, or, when a crash came between the two writes, gets one (stamped then) at the next
//! purge pass: an arrival stamp is never earlier than the real arrival, which is what makes the
//! purge rule safe. Which tombstones may go is decided by the caller (see `background.rs`
//! and docs/cap-modes.md, "A delete never comes back"); this store only carries it out.

use super::lww::{self, ApRecord};
use super::merkle::{leaf_of, LeafBuilder};
use crate::storage::record::RecordTree;
use crate::storage::{Engine, Result, StorageError, Tree};
use crate::types::Hlc;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Default grace period of a tombstone: 10 days (Cassandra's `gc_grace_seconds`), far longer than
/// `hints::DEFAULT_HINT_MAX_AGE_MS` (3 h), so every hint of an older value has expired before
/// the tombstone can go.
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 10 * 24 * 60 * 60 * 1000;
/// Entries read per page when scanning a tree.
pub const SCAN_BATCH: usize = 1024;
/// Most records in one page of a Merkle range answer, however small they are (the byte
/// budget bounds pages of large records).
pub const MAX_RANGE_PAGE_RECORDS: usize = 4096;
/// What one record adds to a Merkle range answer besides its key and value: its timestamp,
/// tombstone flag and protobuf framing (generous: the real figure is under 40 bytes).
pub const RANGE_RECORD_OVERHEAD_BYTES: usize = 64;

/// The bytes `record` adds to a Merkle range answer, as the page budget counts them.
pub fn range_record_bytes(record: &ApRecord) -> usize {
    record.key.len() + record.value.as_ref().map_or(0, Vec::len) + RANGE_RECORD_OVERHEAD_BYTES
}

/// One page of a partition's records in some Merkle leaves, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    /// The records of this page.
    pub records: Vec<ApRecord>,
    /// Set when more records follow: ask again for the records after this key (the last one
    /// of this page).
    pub resume_after: Option<Vec<u8>>,
}

/// Maps a key to its partition (from the ring).
pub type Partitioner = Arc<dyn Fn(&[u8]) -> u32 + Send + Sync>;
/// Gives the arrival stamp of a tombstone: a local timestamp later than every earlier one.
pub type Stamper = Arc<dyn Fn() -> Hlc + Send + Sync>;

/// Length of an encoded arrival stamp.
const STAMP_BYTES: usize = 8 + 4 + 8;

fn encode_stamp(h: Hlc) -> [u8; STAMP_BYTES] {
    let mut out = [0; STAMP_BYTES];
    out[..8].copy_from_slice(&h.physical_ms.to_be_bytes());
    out[8..12].copy_from_slice(&h.logical.to_be_bytes());
    out[12..].copy_from_slice(&h.node_id.to_be_bytes());
    out
}

fn decode_stamp(b: &[u8]) -> Option<Hlc> {
    let b: &[u8; STAMP_BYTES] = b.try_into().ok()?;
    Some(Hlc {
        physical_ms: u64::from_be_bytes(b[..8].try_into().ok()?),
        logical: u32::from_be_bytes(b[8..12].try_into().ok()?),
        node_id: u64::from_be_bytes(b[12..].try_into().ok()?),
    })
}

/// A tombstone this store holds, as the purge decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneInfo {
    /// The deleted key.
    pub key: Vec<u8>,
    /// Its partition.
    pub partition: u32,
    /// The delete's timestamp.
    pub written: Hlc,
    /// When it was stored here (local stamp).
    pub arrival: Hlc,
}

/// The replica store of one AP keyspace.
pub struct ApStore {
    keyspace_id: u32,
    records: RecordTree,
    /// Arrival stamps of the stored tombstones (see the module doc).
    tombstones: Arc<dyn Tree>,
    partition_for_key: Partitioner,
    stamp: Stamper,
    /// Serialises read-merge-write in `apply` and `purge_tombstones`.
    write_lock: Mutex<()>,
}

impl ApStore {
    /// The tree name of a keyspace's data.
    pub fn tree_name(keyspace_id: u32) -> String {
        format!("ap/{keyspace_id}/data")
    }

    /// The tree name of a keyspace's tombstone index.
    pub fn tombstone_tree_name(keyspace_id: u32) -> String {
        format!("ap/{keyspace_id}/tombstones")
    }

    /// Opens (creating if needed) the store of `keyspace_id` on `engine`; `stamp` gives the
    /// arrival stamps of tombstones.
    pub fn open(
        engine: &Arc<dyn Engine>,
        keyspace_id: u32,
        partition_for_key: Partitioner,
        stamp: Stamper,
    ) -> Result<Self> {
        let tree = engine.open_tree(&Self::tree_name(keyspace_id))?;
        Ok(Self {
            keyspace_id,
            records: RecordTree::new(tree, engine.location()),
            tombstones: engine.open_tree(&Self::tombstone_tree_name(keyspace_id))?,
            partition_for_key,
            stamp,
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
    /// A tombstone written before `forget_before_ms` (HLC physical time) is not stored for a key
    /// that has no record here: nothing and a tombstone that old read the same, and storing it
    /// would bring back a tombstone this replica already purged (see docs/cap-modes.md).
    pub fn apply(&self, record: &ApRecord, forget_before_ms: u64) -> Result<bool> {
        let key = self.storage_key(&record.key);
        let _guard = self.write_lock.lock().expect("store lock poisoned");
        let current = match self.records.raw().get(&key)? {
            Some(bytes) => Some(self.decode(key.clone(), &bytes)?),
            None => None,
        };
        match &current {
            Some(current) if !lww::supersedes(record, current) => return Ok(false),
            None if record.is_tombstone() && record.hlc.physical_ms < forget_before_ms => {
                return Ok(false)
            }
            _ => {}
        }
        self.records.put(&key, &record.to_stored())?;
        if record.is_tombstone() {
            // Stamped after the tombstone was written: an exchange that started before this
            // stamp may not have seen it, and the purge rule relies on never thinking so.
            self.tombstones
                .insert(&key, &encode_stamp((self.stamp)()))?;
        } else if current.as_ref().is_some_and(ApRecord::is_tombstone) {
            self.tombstones.remove(&key)?;
        }
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
        mut f: impl FnMut(ApRecord) -> Result<()>,
    ) -> Result<()> {
        self.scan_partition(partition, None, |r| f(r).map(|()| true))
    }

    /// Calls `f` on the records of `partition` with keys after `after` (all when `None`), in
    /// key order, until it returns false.
    fn scan_partition(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        f: impl FnMut(ApRecord) -> Result<bool>,
    ) -> Result<()> {
        let mut start = partition.to_be_bytes().to_vec();
        let start = match after {
            Some(key) => {
                start.extend_from_slice(key);
                Bound::Excluded(start)
            }
            None => Bound::Included(start),
        };
        let end = partition.checked_add(1).map(|p| p.to_be_bytes().to_vec());
        self.scan(start, end, f)
    }

    /// Calls `f` on every record of the store.
    pub fn for_each(&self, mut f: impl FnMut(ApRecord) -> Result<()>) -> Result<()> {
        self.scan(Bound::Unbounded, None, |r| f(r).map(|()| true))
    }

    /// Calls `f` on the records from `start` to `end` (exclusive), in key order, until it
    /// returns false.
    fn scan(
        &self,
        mut start: Bound<Vec<u8>>,
        end: Option<Vec<u8>>,
        mut f: impl FnMut(ApRecord) -> Result<bool>,
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
                if !f(self.decode(k.clone(), &v)?)? {
                    return Ok(());
                }
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

    /// One page of the records of `partition` that fall in `leaves`, starting after the key
    /// `after` (from the first when `None`): records in key order while they fit in `max_bytes`
    /// (as `range_record_bytes` counts them) and `MAX_RANGE_PAGE_RECORDS`, and always at least
    /// one, so a page is never larger than `max_bytes` or one record, whatever the values' sizes.
    pub fn range_page(
        &self,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<RangePage> {
        let wanted: BTreeSet<u32> = leaves.iter().copied().collect();
        let mut page = RangePage::default();
        let mut bytes = 0usize;
        self.scan_partition(partition, after, |r| {
            if !wanted.contains(&leaf_of(&r.key)) {
                return Ok(true);
            }
            let size = range_record_bytes(&r);
            let full = page.records.len() >= MAX_RANGE_PAGE_RECORDS
                || bytes.saturating_add(size) > max_bytes;
            if full && !page.records.is_empty() {
                page.resume_after = page.records.last().map(|l| l.key.clone());
                return Ok(false);
            }
            bytes += size;
            page.records.push(r);
            Ok(true)
        })?;
        Ok(page)
    }

    /// The records of `partition` that fall in `leaves`, with keys after `after` (all when
    /// `None`) up to and including `through` (to the end when `None`): this replica's side of
    /// one page of a peer's Merkle range answer.
    pub fn records_in_leaves_between(
        &self,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
        through: Option<&[u8]>,
    ) -> Result<Vec<ApRecord>> {
        let wanted: BTreeSet<u32> = leaves.iter().copied().collect();
        let mut out = Vec::new();
        self.scan_partition(partition, after, |r| {
            if through.is_some_and(|t| r.key.as_slice() > t) {
                return Ok(false);
            }
            if wanted.contains(&leaf_of(&r.key)) {
                out.push(r);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every record of `partition` that falls in `leaves`.
    pub fn records_in_leaves(&self, partition: u32, leaves: &[u32]) -> Result<Vec<ApRecord>> {
        self.records_in_leaves_between(partition, leaves, None, None)
    }

    /// Removes the tombstones that `purgeable` accepts; returns how many. A tombstone without
    /// an index entry (a crash came between the two writes) is given one, stamped now, and kept.
    pub fn purge_tombstones(&self, purgeable: impl Fn(&TombstoneInfo) -> bool) -> Result<usize> {
        let mut found = Vec::new();
        self.for_each(|r| {
            if r.is_tombstone() {
                found.push(r);
            }
            Ok(())
        })?;
        let mut purged = 0;
        for r in found {
            let key = self.storage_key(&r.key);
            // The record and its stamp are read together under the lock: `apply` writes a newer
            // tombstone before its stamp, and the old stamp must never pass for the new one's.
            let _guard = self.write_lock.lock().expect("store lock poisoned");
            if self.read(&r.key)?.as_ref() != Some(&r) {
                continue; // replaced since the scan
            }
            let Some(bytes) = self.tombstones.get(&key)? else {
                self.tombstones
                    .insert(&key, &encode_stamp((self.stamp)()))?;
                continue;
            };
            let arrival = decode_stamp(&bytes).ok_or_else(|| StorageError::Corrupt {
                location: self.records.location().to_string(),
                tree: self.tombstones.name().to_string(),
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: format!("arrival stamp is {} bytes, not {STAMP_BYTES}", bytes.len()),
            })?;
            let info = TombstoneInfo {
                partition: (self.partition_for_key)(&r.key),
                written: r.hlc,
                arrival,
                key: r.key,
            };
            if purgeable(&info) {
                self.records.raw().remove(&key)?;
                self.tombstones.remove(&key)?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The arrival stamp of `key`'s tombstone, if it has one.
    pub fn tombstone_arrival(&self, key: &[u8]) -> Result<Option<Hlc>> {
        let bytes = self.tombstones.get(&self.storage_key(key))?;
        Ok(bytes.as_deref().and_then(decode_stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::testkit::rec;
    use crate::storage::memory::MemoryEngine;

    /// Arrival stamps 1, 2, 3, … (physical time), one per call.
    fn counter() -> Stamper {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
        Arc::new(move || Hlc {
            physical_ms: next.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            logical: 0,
            node_id: 1,
        })
    }

    fn store(engine: &Arc<dyn Engine>) -> ApStore {
        // Partition = first byte of the key mod 4.
        ApStore::open(
            engine,
            2,
            Arc::new(|k: &[u8]| u32::from(k[0]) % 4),
            counter(),
        )
        .unwrap()
    }

    #[test]
    fn older_writes_never_overwrite_newer_ones() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        assert!(s.apply(&rec("a", 10, Some("new")), 0).unwrap());
        assert!(!s.apply(&rec("a", 5, Some("old")), 0).unwrap());
        assert!(
            !s.apply(&rec("a", 10, Some("new")), 0).unwrap(),
            "re-apply is a no-op"
        );
        assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 10, Some("new"))));
        assert!(s.apply(&rec("a", 11, None), 0).unwrap());
        assert!(
            !s.apply(&rec("a", 10, Some("new")), 0).unwrap(),
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
            s.apply(&rec(&format!("a{i:05}"), 1, Some("x")), 0).unwrap();
            s.apply(&rec(&format!("b{i:05}"), 1, Some("y")), 0).unwrap();
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
    fn range_pages_stay_within_their_byte_budget_and_cover_every_record_once() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        let big = "x".repeat(100_000);
        // Partition 1 ('a' keys), every leaf; one tombstone among large values.
        for i in 0..30 {
            let value = (i != 7).then_some(big.as_str());
            s.apply(&rec(&format!("a{i:03}"), 1, value), 0).unwrap();
        }
        s.apply(&rec("b-other-partition", 1, Some("y")), 0).unwrap();
        let leaves: Vec<u32> = (0..super::super::merkle::MERKLE_LEAVES as u32).collect();
        let budget = 250_000;
        let (mut after, mut keys, mut pages) = (None::<Vec<u8>>, Vec::new(), 0);
        loop {
            let page = s.range_page(1, &leaves, after.as_deref(), budget).unwrap();
            pages += 1;
            let bytes: usize = page.records.iter().map(range_record_bytes).sum();
            assert!(bytes <= budget, "page {pages}: {bytes} bytes");
            // Our side of the same interval is exactly what the page holds.
            let ours = s
                .records_in_leaves_between(
                    1,
                    &leaves,
                    after.as_deref(),
                    page.resume_after.as_deref(),
                )
                .unwrap();
            assert_eq!(ours, page.records);
            keys.extend(page.records.iter().map(|r| r.key.clone()));
            match page.resume_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let want: Vec<Vec<u8>> = (0..30).map(|i| format!("a{i:03}").into_bytes()).collect();
        assert_eq!(keys, want);
        assert_eq!(pages, 15, "two 100 kB records per 250 kB page");
        // A record larger than the budget still travels, alone.
        let page = s.range_page(1, &leaves, None, 10).unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.resume_after, Some(b"a000".to_vec()));
    }

    #[test]
    fn purge_removes_exactly_the_tombstones_the_rule_accepts() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        s.apply(&rec("a", 100, None), 0).unwrap();
        s.apply(&rec("b", 100, Some("live")), 0).unwrap();
        s.apply(&rec("c", 900, None), 0).unwrap();
        // Each tombstone got its arrival stamp when stored (1 for "a", 2 for "c").
        let stamp = |k: &str| {
            s.tombstone_arrival(k.as_bytes())
                .unwrap()
                .map(|h| h.physical_ms)
        };
        assert_eq!(
            (stamp("a"), stamp("b"), stamp("c")),
            (Some(1), None, Some(2))
        );
        let seen = Mutex::new(Vec::new());
        let purged = s
            .purge_tombstones(|t| {
                seen.lock()
                    .unwrap()
                    .push((t.key.clone(), t.partition, t.written.physical_ms));
                t.key == b"a"
            })
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(
            seen.into_inner().unwrap(),
            vec![(b"a".to_vec(), 1, 100), (b"c".to_vec(), 3, 900)],
            "only tombstones are offered, with their partition and timestamp"
        );
        assert_eq!(s.read(b"a").unwrap(), None);
        assert_eq!(stamp("a"), None, "its index entry went with it");
        assert!(s.read(b"c").unwrap().is_some(), "refused tombstone kept");
        assert!(s.read(b"b").unwrap().is_some(), "values are never offered");
        // A value over a tombstone drops its index entry; a newer tombstone is stamped anew.
        s.apply(&rec("c", 901, Some("back")), 0).unwrap();
        assert_eq!(stamp("c"), None);
        s.apply(&rec("c", 902, None), 0).unwrap();
        assert_eq!(stamp("c"), Some(3));
    }

    #[test]
    fn a_tombstone_without_an_index_entry_is_stamped_at_the_next_purge_and_kept() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        s.apply(&rec("a", 100, None), 0).unwrap();
        // As after a crash between the tombstone's write and its stamp's.
        engine
            .open_tree(&ApStore::tombstone_tree_name(2))
            .unwrap()
            .clear()
            .unwrap();
        assert_eq!(
            s.purge_tombstones(|_| true).unwrap(),
            0,
            "no stamp, no purge"
        );
        assert_eq!(
            s.tombstone_arrival(b"a").unwrap().map(|h| h.physical_ms),
            Some(2),
            "stamped at the purge, later than its real arrival"
        );
        assert_eq!(s.purge_tombstones(|_| true).unwrap(), 1);
    }

    #[test]
    fn an_old_tombstone_is_not_stored_for_a_key_this_replica_does_not_hold() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let s = store(&engine);
        // Absent key: a tombstone written before the horizon is dropped, a younger one kept.
        assert!(!s.apply(&rec("a", 99, None), 100).unwrap());
        assert_eq!(s.read(b"a").unwrap(), None);
        assert!(s.apply(&rec("b", 100, None), 100).unwrap());
        // A key held with an older value takes the old tombstone: that is the delete it missed.
        s.apply(&rec("c", 10, Some("old")), 0).unwrap();
        assert!(s.apply(&rec("c", 50, None), 100).unwrap());
        assert_eq!(s.read(b"c").unwrap(), Some(rec("c", 50, None)));
        // Old values are never dropped.
        assert!(s.apply(&rec("d", 1, Some("v")), 100).unwrap());
    }

    #[test]
    fn data_survives_reopening_and_corruption_is_reported() {
        let mem = MemoryEngine::new();
        let engine: Arc<dyn Engine> = Arc::new(mem.clone());
        store(&engine).apply(&rec("a", 1, Some("v")), 0).unwrap();
        let reopened: Arc<dyn Engine> = Arc::new(mem);
        let s = store(&reopened);
        assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 1, Some("v"))));
        let tree = reopened.open_tree(&ApStore::tree_name(2)).unwrap();
        let (k, mut v) = tree.last().unwrap().unwrap();
        v[5] ^= 0x40;
        tree.insert(&k, &v).unwrap();
        assert!(matches!(s.read(b"a"), Err(StorageError::Corrupt { .. })));
        assert!(
            s.apply(&rec("a", 2, Some("w")), 0).is_err(),
            "never merges over corrupt data"
        );
    }
}
