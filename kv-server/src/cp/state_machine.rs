//! The key-value state machine of one CP group (`RaftStateMachine`) and its snapshots, over
//! the group's `sm` and `snap` trees (see `cp::store` for the tree layout and the invariants:
//! one `apply` is one atomic batch; the sm tree is flushed before a snapshot is built from it).

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return the same
// type so `?` works without boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use crate::cp::codec::{self, CodecError};
use crate::cp::dedup;
use crate::cp::keys::{
    data_key, get_decoded, io_read, io_write, scan, Rows, DATA_END, DATA_PREFIX, KEYSPACE_PREFIX,
    KEY_SNAPSHOT, SCAN_PAGE, SM_APPLIED, SM_MEMBERSHIP, SNAPSHOT_FORMAT,
};
use crate::cp::types::{
    CasOutcome, Entry, Expected, KeyspaceOutcome, LogId, RaftStorageError, Request, Response,
    SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::storage::record::{self, RecordTree, StoredRecord};
use crate::storage::{BatchOp, StorageError, Tree};
use crate::types::{KeyspaceDef, Version};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Reads the key-value records of one group's state machine (shared with the engine for reads).
#[derive(Clone)]
pub struct SmReader {
    records: RecordTree,
}

impl SmReader {
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

/// The stored key of a keyspace definition.
pub fn keyspace_key(name: &str) -> Vec<u8> {
    [KEYSPACE_PREFIX, name.as_bytes()].concat()
}

fn live(record: StoredRecord) -> Option<(Vec<u8>, u64)> {
    match (record.value, record.version) {
        (Some(v), Version::Revision(r)) => Some((v, r)),
        _ => None,
    }
}

/// The serialized body of a snapshot: every record as its checksummed stored bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotData {
    format: u8,
    /// (user key, `record::encode` bytes), in key order.
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The live (key, value, revision) records of a snapshot body whose keys start with `prefix`,
/// each checksum-verified (a backup of one keyspace reads a partition's snapshot this way).
pub fn snapshot_records(
    bytes: &[u8],
    prefix: &[u8],
    location: &str,
) -> Result<Vec<LiveRecord>, StorageError> {
    let data: SnapshotData =
        codec::decode("snapshot", bytes).map_err(|e| StorageError::Corrupt {
            tree: "snapshot".into(),
            key: String::new(),
            location: location.into(),
            reason: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (key, rec) in data.records {
        if !key.starts_with(prefix) {
            continue;
        }
        if let Some((value, revision)) = live(record::decode(&rec, &key, "snapshot", location)?) {
            out.push((key, value, revision));
        }
    }
    Ok(out)
}

/// A stored snapshot: its metadata and body.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The key-value state machine of one group.
pub struct StateMachineStore {
    group: u64,
    reader: SmReader,
    sm: Arc<dyn Tree>,
    snap: Arc<dyn Tree>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// The state machine stored in `sm` (records, applied log id, membership) and `snap`.
    pub(crate) fn open(
        group: u64,
        sm: Arc<dyn Tree>,
        snap: Arc<dyn Tree>,
        location: &str,
    ) -> Result<StateMachineStore, RaftStorageError> {
        let applied: Option<LogId> =
            get_decoded::<Option<LogId>>(&*sm, SM_APPLIED, "applied")?.flatten();
        let membership: StoredMembership =
            get_decoded(&*sm, SM_MEMBERSHIP, "membership")?.unwrap_or_default();
        Ok(StateMachineStore {
            group,
            reader: SmReader {
                records: RecordTree::new(sm.clone(), location),
            },
            sm,
            snap,
            applied,
            membership,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A reader of this state machine's records.
    pub fn reader(&self) -> SmReader {
        self.reader.clone()
    }

    fn current(
        &self,
        key: &[u8],
        overlay: &BTreeMap<Vec<u8>, Option<StoredRecord>>,
    ) -> Result<Option<(Vec<u8>, u64)>, RaftStorageError> {
        match overlay.get(key) {
            Some(rec) => Ok(rec.clone().and_then(live)),
            None => self.reader.get(key).map_err(io_read),
        }
    }

    /// Applies one request at `index`; writes go to `overlay` (the batch being built).
    fn apply_request(
        &self,
        req: Request,
        index: u64,
        overlay: &mut BTreeMap<Vec<u8>, Option<StoredRecord>>,
    ) -> Result<Response, RaftStorageError> {
        let put = |value: Vec<u8>| StoredRecord {
            version: Version::Revision(index),
            value: Some(value),
        };
        Ok(match req {
            Request::Put { key, value, .. } => {
                overlay.insert(key, Some(put(value)));
                Response::Written { revision: index }
            }
            Request::Delete { key, .. } => {
                overlay.insert(key, None);
                Response::Written { revision: index }
            }
            Request::Cas {
                key,
                expected,
                new_value,
                ..
            } => {
                let current = self.current(&key, overlay)?;
                let holds = match (&expected, &current) {
                    (Expected::Absent, None) => true,
                    (Expected::Revision(r), Some((_, cur))) => r == cur,
                    (Expected::Value(v), Some((cur, _))) => v == cur,
                    _ => false,
                };
                if holds {
                    overlay.insert(key, Some(put(new_value)));
                    Response::Cas(CasOutcome::Swapped { revision: index })
                } else {
                    Response::Cas(CasOutcome::Mismatch { current })
                }
            }
            Request::Once { id, request } => {
                let key = dedup::outcome_key(id);
                if let Some((bytes, _)) = self.current(&key, overlay)? {
                    if let Some(first) = dedup::recall(&bytes) {
                        return Ok(first);
                    }
                }
                let resp = match *request {
                    // Nested tags are never proposed; apply the inner write once, untagged.
                    Request::Once { request, .. } => {
                        self.apply_request(*request, index, overlay)?
                    }
                    other => self.apply_request(other, index, overlay)?,
                };
                if let Some(outcome) = dedup::remember(&resp) {
                    overlay.insert(key, Some(put(outcome)));
                    overlay.insert(dedup::order_key(index), Some(put(dedup::encode_id(id))));
                }
                resp
            }
            Request::CreateKeyspace(def) => {
                let key = keyspace_key(&def.name);
                // The built-in keyspaces exist from the start without an entry of their own:
                // they count as present, so `cp` or `ap` can never be redefined (that would
                // hide every key already written to them).
                let mut defs = BTreeMap::new();
                for builtin in KeyspaceDef::builtin() {
                    let bytes = codec::encode("keyspace", &builtin).map_err(io_write)?;
                    defs.insert(keyspace_key(&builtin.name), bytes);
                }
                for (k, v, _) in self.reader.scan_prefix(KEYSPACE_PREFIX).map_err(io_read)? {
                    defs.insert(k, v);
                }
                for (k, rec) in overlay
                    .iter()
                    .filter(|(k, _)| k.starts_with(KEYSPACE_PREFIX))
                {
                    match rec.as_ref().and_then(|r| r.value.clone()) {
                        Some(v) => defs.insert(k.clone(), v),
                        None => defs.remove(k),
                    };
                }
                let decode =
                    |v: &Vec<u8>| codec::decode::<KeyspaceDef>("keyspace", v).map_err(io_read);
                let mut outcome = KeyspaceOutcome::Created;
                for (k, v) in &defs {
                    let existing = decode(v)?;
                    if *k == key {
                        outcome = KeyspaceOutcome::NameExists(existing);
                        break;
                    }
                    if existing.id == def.id {
                        outcome = KeyspaceOutcome::IdTaken(existing);
                    }
                }
                if outcome == KeyspaceOutcome::Created {
                    let bytes = codec::encode("keyspace", &def).map_err(io_write)?;
                    overlay.insert(key, Some(put(bytes)));
                }
                Response::Keyspace(outcome)
            }
        })
    }

    /// Drops remembered request ids that fell out of the window (see `cp::dedup`).
    fn forget_old_request_ids(
        &self,
        last_applied: u64,
        overlay: &mut BTreeMap<Vec<u8>, Option<StoredRecord>>,
    ) -> Result<(), RaftStorageError> {
        let start = data_key(&dedup::order_key(0));
        let end = data_key(&dedup::order_key(dedup::window_start(last_applied)));
        // At most one page per apply: the window moves by at most one batch per call.
        let page = self
            .sm
            .range(Bound::Included(&start), Bound::Excluded(&end), SCAN_PAGE)
            .map_err(io_read)?;
        let location = self.reader.records.location().to_string();
        for (k, v) in page {
            let user_key = k[1..].to_vec();
            let rec = record::decode(&v, &user_key, self.sm.name(), &location).map_err(io_read)?;
            if let Some(id) = rec.value.as_deref().and_then(dedup::decode_id) {
                overlay.entry(dedup::outcome_key(id)).or_insert(None);
            }
            overlay.insert(user_key, None);
        }
        Ok(())
    }

    fn meta_ops(&self) -> Result<Vec<BatchOp>, RaftStorageError> {
        Ok(vec![
            BatchOp::Insert(
                SM_APPLIED.to_vec(),
                codec::encode("applied", &self.applied).map_err(io_write)?,
            ),
            BatchOp::Insert(
                SM_MEMBERSHIP.to_vec(),
                codec::encode("membership", &self.membership).map_err(io_write)?,
            ),
        ])
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut overlay = BTreeMap::new();
        let mut responses = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let resp = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(req) => self.apply_request(req, index, &mut overlay)?,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Empty
                }
            };
            self.applied = Some(entry.log_id);
            responses.push(resp);
        }
        if let Some(last) = self.applied {
            self.forget_old_request_ids(last.index, &mut overlay)?;
        }
        let mut ops: Vec<BatchOp> = overlay
            .into_iter()
            .map(|(k, rec)| match rec {
                Some(rec) => BatchOp::Insert(data_key(&k), record::encode(&rec)),
                None => BatchOp::Remove(data_key(&k)),
            })
            .collect();
        ops.extend(self.meta_ops()?);
        // Not flushed here: the log holds every applied entry until a snapshot (which flushes
        // this tree first) lets it be purged, so a lost apply is replayed at startup.
        self.sm.apply_batch(&ops).map_err(io_write)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Captured here, in openraft's state machine task, so no apply runs while we copy: the
        // snapshot is a consistent cut at `applied`.
        let records = scan(&*self.sm, &[DATA_PREFIX], Bound::Excluded(DATA_END)).map(|rows| {
            rows.into_iter()
                .map(|(k, v)| (k[1..].to_vec(), v))
                .collect::<Vec<_>>()
        });
        SnapshotBuilder {
            group: self.group,
            sm: self.sm.clone(),
            snap: self.snap.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            records,
            seq: self.snapshot_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = codec::decode("snapshot", &bytes).map_err(io_read)?;
        if data.format != SNAPSHOT_FORMAT {
            return Err(io_read(CodecError::Decode {
                what: "snapshot",
                message: format!("unknown snapshot format {}", data.format),
            }));
        }
        let location = self.reader.records.location().to_string();
        let mut ops = Vec::with_capacity(data.records.len() + 2);
        // Remove keys the snapshot does not have, in the same batch as the new contents.
        let existing =
            scan(&*self.sm, &[DATA_PREFIX], Bound::Excluded(DATA_END)).map_err(io_read)?;
        let incoming: std::collections::BTreeSet<&[u8]> =
            data.records.iter().map(|(k, _)| k.as_slice()).collect();
        for (k, _) in existing {
            if !incoming.contains(&k[1..]) {
                ops.push(BatchOp::Remove(k));
            }
        }
        for (key, rec) in &data.records {
            // A record corrupted in transit or on the leader is refused, never installed.
            record::decode(rec, key, "snapshot", &location).map_err(io_read)?;
            ops.push(BatchOp::Insert(data_key(key), rec.clone()));
        }
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        ops.extend(self.meta_ops()?);
        self.sm.apply_batch(&ops).map_err(io_write)?;
        self.sm.flush().map_err(io_write)?;
        store_snapshot(&*self.snap, meta, bytes)?;
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(
            get_decoded::<StoredSnapshot>(&*self.snap, KEY_SNAPSHOT, "snapshot")?.map(|s| {
                Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                }
            }),
        )
    }
}

fn store_snapshot(
    snap: &dyn Tree,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> Result<(), RaftStorageError> {
    let stored = StoredSnapshot {
        meta: meta.clone(),
        data,
    };
    let bytes = codec::encode("snapshot", &stored).map_err(io_write)?;
    snap.insert(KEY_SNAPSHOT, &bytes).map_err(io_write)?;
    snap.flush().map_err(io_write)
}

/// Builds a snapshot from the state captured by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    group: u64,
    sm: Arc<dyn Tree>,
    snap: Arc<dyn Tree>,
    applied: Option<LogId>,
    membership: StoredMembership,
    records: Result<Rows, StorageError>,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        crate::metrics::metrics().raft_snapshots.inc();
        let records = std::mem::replace(&mut self.records, Ok(Vec::new())).map_err(io_read)?;
        // The log may be purged up to this snapshot: the state machine must be durable first.
        self.sm.flush().map_err(io_write)?;
        let data = codec::encode(
            "snapshot",
            &SnapshotData {
                format: SNAPSHOT_FORMAT,
                records,
            },
        )
        .map_err(io_write)?;
        let snapshot_id = match self.applied {
            Some(l) => format!(
                "{}-{}-{}-{}",
                self.group, l.leader_id.term, l.index, self.seq
            ),
            None => format!("{}-none-{}", self.group, self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        store_snapshot(&*self.snap, &meta, data.clone())?;
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
