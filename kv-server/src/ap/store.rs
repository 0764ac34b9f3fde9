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
//!
//! Corrupt records (checksum failed): `read` and `for_each*` report them as
//! `StorageError::Corrupt`, never their bytes. `apply` *replaces* a corrupt record with whatever
//! it is given (LWW cannot compare with a record it cannot read): that is how read repair,
//! anti-entropy and the scrub heal a replica. Merkle leaves count a corrupt record as a digest
//! no good record has, so its leaf differs from every healthy replica's and the exchange reaches
//! it; range answers leave it out (nothing corrupt ever leaves the node).

use super::lww::{self, ApRecord};
use super::merkle::{leaf_of, LeafBuilder};
use crate::storage::record::RecordTree;
pub use crate::storage::record::ScrubPage;
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

/// One entry met by a scan: a verified record, or the user key of a record whose checksum
/// (or decoding) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// A record that passed its checks.
    Good(ApRecord),
    /// The user key of a corrupt record.
    Corrupt(Vec<u8>),
}

/// This replica's side of one page of a peer's Merkle range answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalSide {
    /// Our good records in the page's key interval and leaves.
    pub records: Vec<ApRecord>,
    /// User keys of our corrupt records there.
    pub corrupt: Vec<Vec<u8>>,
}

/// What `apply` found stored under the key.
enum Current {
    Absent,
    Good(ApRecord),
    Corrupt,
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

    /// Where the data lives (the data directory, or "memory").
    pub fn location(&self) -> &str {
        self.records.location()
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
    ///
    /// A corrupt record here is replaced by `record` whatever its timestamp (true is returned):
    /// the bad bytes cannot be compared, and a replica's copy is the best one left. Such an old
    /// tombstone removes the corrupt record instead (a key with no record, as above).
    pub fn apply(&self, record: &ApRecord, forget_before_ms: u64) -> Result<bool> {
        let key = self.storage_key(&record.key);
        let _guard = self.write_lock.lock().expect("store lock poisoned");
        let current = match self.records.raw().get(&key)? {
            Some(bytes) => match self.decode(key.clone(), &bytes) {
                Ok(r) => Current::Good(r),
                Err(StorageError::Corrupt { .. }) => Current::Corrupt,
                Err(e) => return Err(e),
            },
            None => Current::Absent,
        };
        let old_tombstone = record.is_tombstone() && record.hlc.physical_ms < forget_before_ms;
        match &current {
            Current::Good(current) if !lww::supersedes(record, current) => return Ok(false),
            Current::Absent if old_tombstone => return Ok(false),
            Current::Corrupt if old_tombstone => {
                self.records.raw().remove(&key)?;
                self.tombstones.remove(&key)?;
                self.repaired(&record.key);
                return Ok(true);
            }
            _ => {}
        }
        self.records.put(&key, &record.to_stored())?;
        if record.is_tombstone() {
            // Stamped after the tombstone was written: an exchange that started before this
            // stamp may not have seen it, and the purge rule relies on never thinking so.
            self.tombstones
                .insert(&key, &encode_stamp((self.stamp)()))?;
        } else if !matches!(&current, Current::Good(c) if !c.is_tombstone()) {
            // Over a tombstone or a corrupt record (which may have been one): no stamp is left.
            self.tombstones.remove(&key)?;
        }
        if matches!(current, Current::Corrupt) {
            self.repaired(&record.key);
        }
        Ok(true)
    }

    /// Removes the record of `key` if it is (still) corrupt; true if it did. This is the repair
    /// when the replicas asked hold nothing for the key.
    pub fn remove_corrupt(&self, key: &[u8]) -> Result<bool> {
        let storage_key = self.storage_key(key);
        let _guard = self.write_lock.lock().expect("store lock poisoned");
        let Some(bytes) = self.records.raw().get(&storage_key)? else {
            return Ok(false);
        };
        if self.decode(storage_key.clone(), &bytes).is_ok() {
            return Ok(false);
        }
        self.records.raw().remove(&storage_key)?;
        self.tombstones.remove(&storage_key)?;
        self.repaired(key);
        Ok(true)
    }

    fn repaired(&self, key: &[u8]) {
        crate::metrics::metrics().corrupt("ap", "repaired");
        tracing::warn!(
            keyspace_id = self.keyspace_id,
            key = %String::from_utf8_lossy(&key[..key.len().min(64)]),
            data_dir = self.records.location(),
            "corrupt AP record replaced with a replica's copy"
        );
    }

    /// Whether the stored record of `key` is corrupt (false when absent or good).
    pub fn is_corrupt(&self, key: &[u8]) -> Result<bool> {
        let storage_key = self.storage_key(key);
        Ok(match self.records.raw().get(&storage_key)? {
            Some(bytes) => self.decode(storage_key, &bytes).is_err(),
            None => false,
        })
    }

    /// This replica's record of `key` (tombstones included), checksum-verified.
    pub fn read(&self, key: &[u8]) -> Result<Option<ApRecord>> {
        let storage_key = self.storage_key(key);
        match self.records.raw().get(&storage_key)? {
            Some(bytes) => self.decode(storage_key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` on every record of `partition`, in key order, page by page; a corrupt record
    /// stops the walk with `StorageError::Corrupt`.
    pub fn for_each_in_partition(
        &self,
        partition: u32,
        mut f: impl FnMut(ApRecord) -> Result<()>,
    ) -> Result<()> {
        self.scan_partition(partition, None, |s| f(self.good(s)?).map(|()| true))
    }

    /// The record of a scanned entry, or the corrupt error naming its key.
    fn good(&self, scanned: Scanned) -> Result<ApRecord> {
        match scanned {
            Scanned::Good(r) => Ok(r),
            Scanned::Corrupt(key) => Err(StorageError::Corrupt {
                location: self.records.location().to_string(),
                tree: self.records.raw().name().to_string(),
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: "checksum or format check failed".into(),
            }),
        }
    }

    /// Calls `f` on the records of `partition` with keys after `after` (all when `None`), in
    /// key order, until it returns false.
    fn scan_partition(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        f: impl FnMut(Scanned) -> Result<bool>,
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

    /// Calls `f` on every record of the store; a corrupt record stops the walk with
    /// `StorageError::Corrupt`.
    pub fn for_each(&self, mut f: impl FnMut(ApRecord) -> Result<()>) -> Result<()> {
        self.scan(Bound::Unbounded, None, |s| f(self.good(s)?).map(|()| true))
    }

    /// Checks up to `limit` records after the storage key `after` (from the first when
    /// `None`): the scrub's unit of work.
    pub fn scrub_page(&self, after: Option<&[u8]>, limit: usize) -> Result<ScrubPage> {
        let start = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let rows = self
            .records
            .raw()
            .range(start, Bound::Unbounded, limit.max(1))?;
        let full = rows.len() >= limit.max(1);
        let mut page = ScrubPage {
            checked: rows.len(),
            ..Default::default()
        };
        for (k, v) in &rows {
            if self.decode(k.clone(), v).is_err() {
                page.corrupt.push(k.get(4..).unwrap_or_default().to_vec());
            }
        }
        if full {
            page.resume_after = rows.last().map(|(k, _)| k.clone());
        }
        Ok(page)
    }

    /// Calls `f` on the records from `start` to `end` (exclusive), in key order, until it
    /// returns false.
    fn scan(
        &self,
        mut start: Bound<Vec<u8>>,
        end: Option<Vec<u8>>,
        mut f: impl FnMut(Scanned) -> Result<bool>,
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
                let scanned = match self.decode(k.clone(), &v) {
                    Ok(r) => Scanned::Good(r),
                    Err(StorageError::Corrupt { .. }) => {
                        Scanned::Corrupt(k.get(4..).unwrap_or_default().to_vec())
                    }
                    Err(e) => return Err(e),
                };
                if !f(scanned)? {
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

    /// The Merkle leaf hashes of one partition; a corrupt record adds a digest no good record
    /// has (see `merkle::corrupt_digest`), so its leaf differs from a healthy replica's.
    pub fn merkle_leaves(&self, partition: u32) -> Result<Vec<u64>> {
        let mut builder = LeafBuilder::default();
        self.scan_partition(partition, None, |s| {
            match s {
                Scanned::Good(r) => builder.add(&r),
                Scanned::Corrupt(key) => builder.add_corrupt(&key),
            }
            Ok(true)
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
        self.scan_partition(partition, after, |s| {
            // Corrupt records never leave the node.
            let Scanned::Good(r) = s else {
                return Ok(true);
            };
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
        Ok(self.local_side(partition, leaves, after, through)?.records)
    }

    /// Like `records_in_leaves_between`, with the keys of our corrupt records there too.
    pub fn local_side(
        &self,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
        through: Option<&[u8]>,
    ) -> Result<LocalSide> {
        let wanted: BTreeSet<u32> = leaves.iter().copied().collect();
        let mut out = LocalSide::default();
        self.scan_partition(partition, after, |s| {
            let key = match &s {
                Scanned::Good(r) => r.key.as_slice(),
                Scanned::Corrupt(k) => k.as_slice(),
            };
            if through.is_some_and(|t| key > t) {
                return Ok(false);
            }
            if wanted.contains(&leaf_of(key)) {
                match s {
                    Scanned::Good(r) => out.records.push(r),
                    Scanned::Corrupt(k) => out.corrupt.push(k),
                }
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
        // Corrupt records are skipped: they are the scrub's and anti-entropy's to repair.
        self.scan(Bound::Unbounded, None, |s| {
            if let Scanned::Good(r) = s {
                if r.is_tombstone() {
                    found.push(r);
                }
            }
            Ok(true)
        })?;
        let mut purged = 0;
        for r in found {
            let key = self.storage_key(&r.key);
            // The record and its stamp are read together under the lock: `apply` writes a newer
            // tombstone before its stamp, and the old stamp must never pass for the new one's.
            let _guard = self.write_lock.lock().expect("store lock poisoned");
            if self.read(&r.key).ok().flatten().as_ref() != Some(&r) {
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
