//! The key-value state machine of one CP group (`RaftStateMachine`) and its snapshots, over
//! the group's `sm` and `snap` trees (see `cp::store` for the tree layout and the invariants:
//! one `apply` is one atomic batch; the sm tree is flushed before a snapshot is built from it).
//! Snapshot bodies are `cp::snapshot::SnapshotFile`s, in chunks, never in memory whole. An
//! install writes the new contents in several batches: it is marked in the sm tree first
//! (`SM_INSTALLING`), after the received snapshot was made current and durable, so a crash in
//! the middle is finished at the next open from that snapshot.

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return the same
// type so `?` works without boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use crate::cp::codec::{self, CodecError};
use crate::cp::dedup;
use crate::cp::keys::{
    data_key, get_decoded, io_read, io_write, DATA_END, DATA_PREFIX, KEYSPACE_PREFIX, KEY_SNAPSHOT,
    SCAN_PAGE, SM_APPLIED, SM_MEMBERSHIP,
};
use crate::cp::sm_reader::live;
pub use crate::cp::sm_reader::{LiveRecord, RecordAt, SmReader};
use crate::cp::snapshot::{self, write_body, DataPages, SnapshotFile, SNAPSHOT_SCAN_PAGE};
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
use std::io::{Seek, SeekFrom, Write};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The stored key of a keyspace definition.
pub fn keyspace_key(name: &str) -> Vec<u8> {
    [KEYSPACE_PREFIX, name.as_bytes()].concat()
}

/// The live (key, value, revision) records of a snapshot whose keys start with `prefix`, each
/// checksum-verified (a backup of one keyspace reads a partition's snapshot this way, chunk by
/// chunk; only the matching records are kept).
pub fn snapshot_records(
    file: &mut SnapshotFile,
    prefix: &[u8],
    location: &str,
) -> Result<Vec<LiveRecord>, StorageError> {
    let mut out = Vec::new();
    snapshot::for_each_record(file, |key, rec| -> Result<(), StorageError> {
        if key.starts_with(prefix) {
            if let Some((value, revision)) = live(record::decode(&rec, &key, "snapshot", location)?)
            {
                out.push((key, value, revision));
            }
        }
        Ok(())
    })
    .map_err(|w| match w {
        snapshot::Walk::Bad(e) => StorageError::Corrupt {
            tree: "snapshot".into(),
            key: String::new(),
            location: location.into(),
            reason: e.to_string(),
        },
        snapshot::Walk::Stopped(e) => e,
    })?;
    Ok(out)
}

/// A snapshot stored by an older version: its metadata and whole body in one value (read once,
/// to move it into a slot).
#[derive(serde::Serialize, serde::Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The current snapshot: its metadata and the slot of its body.
#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    slot: u64,
}

/// Key of the current snapshot (`CurrentSnapshot`) in the snap tree.
const KEY_CURRENT: &[u8] = b"meta";
/// Key in the sm tree present while a snapshot install is under way.
const SM_INSTALLING: &[u8] = b"m/installing";
/// Bytes of records written to the sm tree in one batch while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
        let mut store = StateMachineStore {
            group,
            reader: SmReader {
                records: RecordTree::new(sm.clone(), location),
                apply_lock: Arc::new(Mutex::new(())),
                applied: Arc::new(AtomicU64::new(applied.map_or(0, |l| l.index))),
            },
            sm,
            snap,
            applied,
            membership,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        };
        store.move_legacy_snapshot()?;
        if store.sm.get(SM_INSTALLING).map_err(io_read)?.is_some() {
            // A crash came in the middle of an install: finish it from the snapshot, which was
            // made current before the install began.
            let current = store.current_snapshot()?.ok_or_else(|| {
                io_read(CodecError::Decode {
                    what: "snapshot",
                    message: "an install was under way but no snapshot is current".into(),
                })
            })?;
            tracing::warn!(group, "finishing a snapshot install interrupted by a crash");
            store.replace_records(&current.meta, current.slot)?;
        }
        Ok(store)
    }

    /// Moves a snapshot stored whole by an older version into a slot.
    fn move_legacy_snapshot(&mut self) -> Result<(), RaftStorageError> {
        let Some(old) = get_decoded::<LegacySnapshot>(&*self.snap, KEY_SNAPSHOT, "snapshot")?
        else {
            return Ok(());
        };
        let mut file = SnapshotFile::create(self.snap.clone()).map_err(io_write)?;
        file.write_all(&old.data).map_err(io_write)?;
        file.save().map_err(io_write)?;
        self.make_current(&old.meta, file.slot())?;
        self.snap.remove(KEY_SNAPSHOT).map_err(io_write)?;
        self.snap.flush().map_err(io_write)
    }

    /// The current snapshot's metadata and slot.
    fn current_snapshot(&self) -> Result<Option<CurrentSnapshot>, RaftStorageError> {
        get_decoded::<CurrentSnapshot>(&*self.snap, KEY_CURRENT, "snapshot")
    }

    /// Makes the body in `slot` the current snapshot, durably (see the free function).
    fn make_current(&self, meta: &SnapshotMeta, slot: u64) -> Result<(), RaftStorageError> {
        make_current(&self.snap, meta, slot)
    }

    /// Replaces every record with the snapshot's in `slot` (checked first), in batches, and
    /// sets the applied log id and membership from `meta`. Marked in the sm tree while under
    /// way; the snapshot must be current and durable before.
    fn replace_records(&mut self, meta: &SnapshotMeta, slot: u64) -> Result<(), RaftStorageError> {
        let lock = self.reader.apply_lock.clone();
        let _guard = lock.lock().expect("apply lock poisoned");
        self.sm.insert(SM_INSTALLING, &[1]).map_err(io_write)?;
        self.sm.flush().map_err(io_write)?;
        // Every key the state machine holds goes, a page at a time.
        loop {
            let page = self
                .sm
                .range(
                    Bound::Included(&[DATA_PREFIX]),
                    Bound::Excluded(DATA_END),
                    SNAPSHOT_SCAN_PAGE,
                )
                .map_err(io_read)?;
            if page.is_empty() {
                break;
            }
            let ops: Vec<BatchOp> = page.into_iter().map(|(k, _)| BatchOp::Remove(k)).collect();
            self.sm.apply_batch(&ops).map_err(io_write)?;
        }
        let mut file = SnapshotFile::open(self.snap.clone(), slot).map_err(io_read)?;
        let mut ops = Vec::new();
        let mut bytes = 0usize;
        let sm = self.sm.clone();
        snapshot::for_each_record(&mut file, |key, rec| -> Result<(), RaftStorageError> {
            bytes += key.len() + rec.len();
            ops.push(BatchOp::Insert(data_key(&key), rec));
            if bytes >= INSTALL_BATCH_BYTES {
                sm.apply_batch(&std::mem::take(&mut ops))
                    .map_err(io_write)?;
                bytes = 0;
            }
            Ok(())
        })
        .map_err(walk_error)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        ops.extend(self.meta_ops()?);
        ops.push(BatchOp::Remove(SM_INSTALLING.to_vec()));
        self.sm.apply_batch(&ops).map_err(io_write)?;
        self.reader
            .applied
            .store(self.applied.map_or(0, |l| l.index), Ordering::Release);
        self.sm.flush().map_err(io_write)
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
            // FIXME(cp apply over corrupt): a corrupt record read here (CAS, request ids,
            // keyspace definitions) fails the apply and openraft stops this group on this node;
            // the scrub and reads repair records first (cp/engine/repair.rs), but an apply
            // cannot wait for the network. See docs/cap-modes.md, "Corrupt records".
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
        let _guard = self.reader.apply_lock.lock().expect("apply lock poisoned");
        self.sm.apply_batch(&ops).map_err(io_write)?;
        self.reader
            .applied
            .store(self.applied.map_or(0, |l| l.index), Ordering::Release);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Captured here, in openraft's state machine task, so no apply runs while we copy: the
        // snapshot is a consistent cut at `applied`.
        // The body is written here, page by page into chunks, rather than copied in memory.
        let body = SnapshotFile::create(self.snap.clone()).and_then(|mut file| {
            write_body(
                &mut file,
                DataPages::new(self.sm.clone(), &[DATA_PREFIX], DATA_END),
            )?;
            Ok(file.slot())
        });
        SnapshotBuilder {
            group: self.group,
            sm: self.sm.clone(),
            snap: self.snap.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            body,
            seq: self.snapshot_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, RaftStorageError> {
        Ok(Box::new(
            SnapshotFile::create(self.snap.clone()).map_err(io_write)?,
        ))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), RaftStorageError> {
        snapshot.save().map_err(io_write)?;
        if !snapshot.is_in(&self.snap) {
            // A body kept elsewhere (another store's): copied into a slot of ours, a chunk at
            // a time.
            let mut own = SnapshotFile::create(self.snap.clone()).map_err(io_write)?;
            snapshot.seek(SeekFrom::Start(0)).map_err(io_read)?;
            std::io::copy(&mut *snapshot, &mut own).map_err(io_write)?;
            own.save().map_err(io_write)?;
            *snapshot = own;
        }
        // Every record is checked before anything changes: a record corrupted in transit or
        // on the leader is refused, never installed.
        let location = self.reader.records.location().to_string();
        snapshot::for_each_record(&mut snapshot, |key, rec| -> Result<(), RaftStorageError> {
            record::decode(&rec, &key, "snapshot", &location).map_err(io_read)?;
            Ok(())
        })
        .map_err(walk_error)?;
        self.make_current(meta, snapshot.slot())?;
        self.replace_records(meta, snapshot.slot())?;
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, bytes = snapshot.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let Some(current) = self.current_snapshot()? else {
            return Ok(None);
        };
        let file = SnapshotFile::open(self.snap.clone(), current.slot).map_err(io_read)?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// The error of a walk through a snapshot body.
fn walk_error(w: snapshot::Walk<RaftStorageError>) -> RaftStorageError {
    match w {
        snapshot::Walk::Bad(e) => io_read(e),
        snapshot::Walk::Stopped(e) => e,
    }
}

/// Makes the body in `slot` the current snapshot, durably; keeps the previous current one (a
/// sender may still be reading it) and every later slot, and removes the older ones.
fn make_current(
    snap: &Arc<dyn Tree>,
    meta: &SnapshotMeta,
    slot: u64,
) -> Result<(), RaftStorageError> {
    let previous =
        get_decoded::<CurrentSnapshot>(&**snap, KEY_CURRENT, "snapshot")?.map(|c| c.slot);
    let current = CurrentSnapshot {
        meta: meta.clone(),
        slot,
    };
    let bytes = codec::encode("snapshot", &current).map_err(io_write)?;
    snap.insert(KEY_CURRENT, &bytes).map_err(io_write)?;
    snap.flush().map_err(io_write)?;
    let keep: Vec<u64> = std::iter::once(slot).chain(previous).collect();
    snapshot::retain_slots(&**snap, &keep).map_err(io_write)
}

/// Builds a snapshot from the body written by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    group: u64,
    sm: Arc<dyn Tree>,
    snap: Arc<dyn Tree>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// The slot of the body, or why it could not be written.
    body: Result<u64, StorageError>,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        crate::metrics::metrics().raft_snapshots.inc();
        let slot = match &self.body {
            Ok(slot) => *slot,
            Err(e) => return Err(io_write(e.clone())),
        };
        // The log may be purged up to this snapshot: the state machine must be durable first.
        self.sm.flush().map_err(io_write)?;
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
        make_current(&self.snap, &meta, slot)?;
        let file = SnapshotFile::open(self.snap.clone(), slot).map_err(io_read)?;
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, bytes = file.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
