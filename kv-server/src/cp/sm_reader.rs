//! `SmReader`: reads of one CP group's state-machine records, shared by the state machine
//! (which applies) and the engine (which serves reads, and repairs a corrupt record from a
//! peer's copy: `RecordAt`, `replace_corrupt`, under the lock the state machine applies under).

use crate::cp::keys::{data_key, scan, DATA_END, DATA_PREFIX};
use crate::storage::record::{self, RecordTree, ScrubPage, StoredRecord};
use crate::storage::StorageError;
use crate::types::Version;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads the key-value records of one group's state machine (shared with the engine for reads).
#[derive(Clone)]
pub struct SmReader {
    pub(crate) records: RecordTree,
    /// Held while applied entries (or a snapshot install) are written, and while a repair
    /// checks and rewrites a corrupt record: a repair never overwrites a newer apply.
    pub(crate) apply_lock: Arc<Mutex<()>>,
    /// Index of the last applied entry (0 before any), updated under `apply_lock`.
    pub(crate) applied: Arc<AtomicU64>,
}

/// A state-machine record as one replica holds it, for repairing another's corrupt copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAt {
    /// The live value and revision, `None` when the key has no record.
    pub record: Option<(Vec<u8>, u64)>,
    /// The replica's applied index when it read the record: the record is the key's state at
    /// some index at or below it (and at or above the index it waited for).
    pub applied: u64,
}

impl SmReader {
    /// The index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The record of `key` with the applied index it was read at (see `RecordAt`); a corrupt
    /// record is `StorageError::Corrupt`.
    pub fn record_at(&self, key: &[u8]) -> Result<RecordAt, StorageError> {
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        let record = self.get(key)?;
        Ok(RecordAt {
            record,
            applied: self.applied_index(),
        })
    }

    /// Checks up to `limit` data records after the record key `after` (from the first when
    /// `None`): the scrub's unit of work (keys are record keys, `resume_after` one too).
    pub fn scrub_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScrubPage, StorageError> {
        let tree = self.records.raw();
        let start = after.map(data_key);
        let lower = match &start {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Included(&[DATA_PREFIX][..]),
        };
        let rows = tree.range(lower, Bound::Excluded(DATA_END), limit.max(1))?;
        let mut corrupt = Vec::new();
        for (k, v) in &rows {
            let key = &k[1..];
            if record::decode(v, key, tree.name(), self.records.location()).is_err() {
                corrupt.push(key.to_vec());
            }
        }
        let resume = (rows.len() >= limit.max(1))
            .then(|| rows.last().map(|(k, _)| k[1..].to_vec()))
            .flatten();
        Ok(ScrubPage {
            checked: rows.len(),
            corrupt,
            resume_after: resume,
        })
    }

    /// The stored bytes of `key` when they fail their checks (`None` when absent or good).
    pub fn corrupt_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let k = data_key(key);
        let tree = self.records.raw();
        Ok(tree.get(&k)?.filter(|bytes| {
            record::decode(bytes, key, tree.name(), self.records.location()).is_err()
        }))
    }

    /// Replaces the corrupt record of `key` (whose bytes were `bad`) with `good`, a replica's
    /// copy; true if it was written. Written only when it is the key's state at this
    /// replica's applied index — the bytes are still `bad` (no apply touched the key since
    /// they were read, at an index at or below the one the replica waited for) and either the
    /// replica had applied no further than here, or its record's revision is at or below our
    /// applied index (no write to the key lies between). Otherwise writing it could let an
    /// entry not yet applied here (a CAS) see a later state than the other replicas saw.
    pub fn replace_corrupt(
        &self,
        key: &[u8],
        bad: &[u8],
        good: &RecordAt,
    ) -> Result<bool, StorageError> {
        let k = data_key(key);
        let tree = self.records.raw();
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        if tree.get(&k)?.as_deref() != Some(bad) {
            return Ok(false);
        }
        let here = self.applied_index();
        let at_our_index =
            good.applied <= here || good.record.as_ref().is_some_and(|(_, rev)| *rev <= here);
        if !at_our_index {
            return Ok(false);
        }
        match &good.record {
            Some((value, revision)) => self.records.put(
                &k,
                &StoredRecord {
                    version: Version::Revision(*revision),
                    value: Some(value.clone()),
                },
            )?,
            None => tree.remove(&k)?,
        }
        Ok(true)
    }

    /// The live value and revision of a key, checksum-verified.
    pub fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, StorageError> {
        Ok(self.records.get(&data_key(key))?.and_then(live))
    }

    /// The data directory these records live in (for error messages).
    pub fn location(&self) -> &str {
        self.records.location()
    }

    /// Every live (key, value, revision) whose key starts with `prefix`, checksum-verified.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<LiveRecord>, StorageError> {
        let start = data_key(prefix);
        let tree = self.records.raw();
        let mut out = Vec::new();
        for (k, v) in scan(&**tree, &start, Bound::Unbounded)? {
            if !k.starts_with(&start) {
                break;
            }
            let rec = record::decode(&v, &k[1..], tree.name(), self.records.location())?;
            if let Some((value, revision)) = live(rec) {
                out.push((k[1..].to_vec(), value, revision));
            }
        }
        Ok(out)
    }
}

/// A live record as (key, value, revision).
pub type LiveRecord = (Vec<u8>, Vec<u8>, u64);

/// The live value and revision of a stored record (`None` for a tombstone).
pub(crate) fn live(record: StoredRecord) -> Option<(Vec<u8>, u64)> {
    match (record.value, record.version) {
        (Some(v), Version::Revision(r)) => Some((v, r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;
    use crate::storage::Engine;

    /// A reader whose state machine applied up to index 10, holding key "k" corrupt.
    fn corrupt_reader() -> (SmReader, Vec<u8>) {
        let engine = MemoryEngine::new();
        let tree = engine.open_tree("raft/1/sm").unwrap();
        let reader = SmReader {
            records: RecordTree::new(tree.clone(), "memory"),
            apply_lock: Arc::new(Mutex::new(())),
            applied: Arc::new(AtomicU64::new(10)),
        };
        let good = StoredRecord {
            version: Version::Revision(4),
            value: Some(b"v".to_vec()),
        };
        reader.records.put(&data_key(b"k"), &good).unwrap();
        let mut bad = tree.get(&data_key(b"k")).unwrap().unwrap();
        bad[3] ^= 0x01;
        tree.insert(&data_key(b"k"), &bad).unwrap();
        (reader, bad)
    }

    fn at(record: Option<u64>, applied: u64) -> RecordAt {
        RecordAt {
            record: record.map(|rev| (b"v".to_vec(), rev)),
            applied,
        }
    }

    #[test]
    fn a_corrupt_record_is_rewritten_only_with_the_state_at_our_applied_index() {
        // (peer's record revision, peer's applied index) -> rewritten?
        let cases = [
            (Some(4), 10, true),   // the peer is where we are
            (None, 9, true),       // deleted at or before our index: absent here too
            (Some(4), 15, true),   // peer ahead, but the key's last write is at or below ours
            (Some(12), 15, false), // a write we have not applied yet: deferred
            (None, 15, false),     // absent there, but maybe deleted after our index: deferred
        ];
        for (rev, peer_applied, want) in cases {
            let (reader, bad) = corrupt_reader();
            let good = at(rev, peer_applied);
            let got = reader.replace_corrupt(b"k", &bad, &good).unwrap();
            assert_eq!(got, want, "{rev:?} at {peer_applied}");
            if want {
                assert_eq!(reader.get(b"k").unwrap(), good.record);
            } else {
                assert!(reader.get(b"k").is_err(), "left corrupt");
            }
        }
        // An apply that rewrote the key since the corrupt bytes were read wins.
        let (reader, bad) = corrupt_reader();
        let newer = StoredRecord {
            version: Version::Revision(11),
            value: Some(b"new".to_vec()),
        };
        reader.records.put(&data_key(b"k"), &newer).unwrap();
        assert!(!reader
            .replace_corrupt(b"k", &bad, &at(Some(4), 10))
            .unwrap());
        assert_eq!(reader.get(b"k").unwrap(), Some((b"new".to_vec(), 11)));
        // The scrub sees the corrupt one.
        let (reader, _) = corrupt_reader();
        let page = reader.scrub_page(None, 10).unwrap();
        assert_eq!((page.checked, page.corrupt), (1, vec![b"k".to_vec()]));
        assert_eq!(reader.corrupt_bytes(b"missing").unwrap(), None);
    }
}
