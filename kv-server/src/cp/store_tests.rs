//! Unit tests of the CP group store: the state machine's put/delete/cas semantics, snapshots and
//! reopening. openraft's storage suite runs on every engine (and the crash behaviour on the
//! simulated disk) in `kv-server/tests/storage_conformance.rs`.

use crate::cp::store::open_group;
use crate::cp::types::{CasOutcome, Entry, Expected, LogId, Request, Response};
use crate::storage::memory::MemoryEngine;
use crate::storage::Engine;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

fn entry(index: u64, req: Request) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(req),
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        keyspace: 1,
        key: key.into(),
        value: value.into(),
    }
}

fn cas(key: &str, expected: Expected, new_value: &str) -> Request {
    Request::Cas {
        keyspace: 1,
        key: key.into(),
        expected,
        new_value: new_value.into(),
    }
}

fn engine() -> Arc<dyn Engine> {
    Arc::new(MemoryEngine::new())
}

#[tokio::test]
async fn apply_sets_revisions_and_cas_compares_against_the_current_record() {
    let engine = engine();
    let (_log, mut sm) = open_group(&engine, 1).unwrap();
    let reader = sm.reader();
    // One batch: later entries see earlier ones (the overlay), as one-by-one apply would.
    let out = sm
        .apply([
            entry(1, put("a", "1")),
            entry(2, cas("a", Expected::Revision(1), "2")),
            entry(3, cas("a", Expected::Revision(1), "x")),
            entry(4, cas("b", Expected::Absent, "b1")),
            entry(5, cas("b", Expected::Absent, "x")),
            entry(6, cas("b", Expected::Value(b"b1".to_vec()), "b2")),
            entry(7, cas("b", Expected::Value(b"nope".to_vec()), "x")),
            entry(
                8,
                Request::Delete {
                    keyspace: 1,
                    key: b"b".to_vec(),
                },
            ),
            entry(9, cas("b", Expected::Revision(6), "x")),
        ])
        .await
        .unwrap();
    let swapped = |revision| Response::Cas(CasOutcome::Swapped { revision });
    let mismatch = |current: Option<(&str, u64)>| {
        Response::Cas(CasOutcome::Mismatch {
            current: current.map(|(v, r)| (v.as_bytes().to_vec(), r)),
        })
    };
    assert_eq!(
        out,
        vec![
            Response::Written { revision: 1 },
            swapped(2),
            mismatch(Some(("2", 2))),
            swapped(4),
            mismatch(Some(("b1", 4))),
            swapped(6),
            mismatch(Some(("b2", 6))),
            Response::Written { revision: 8 },
            mismatch(None),
        ]
    );
    assert_eq!(reader.get(b"a").unwrap(), Some((b"2".to_vec(), 2)));
    assert_eq!(reader.get(b"b").unwrap(), None);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(9));
}

#[tokio::test]
async fn reopening_the_same_engine_keeps_records_and_applied_state() {
    let engine = engine();
    {
        let (_log, mut sm) = open_group(&engine, 3).unwrap();
        sm.apply([entry(1, put("k", "v")), entry(2, put("j", "w"))])
            .await
            .unwrap();
    }
    let (_log, mut sm) = open_group(&engine, 3).unwrap();
    assert_eq!(sm.reader().get(b"k").unwrap(), Some((b"v".to_vec(), 1)));
    assert_eq!(
        sm.applied_state().await.unwrap().0.map(|l| l.index),
        Some(2)
    );
    // Groups are namespaced: another group over the same engine sees nothing.
    let (_log, other) = open_group(&engine, 4).unwrap();
    assert_eq!(other.reader().get(b"k").unwrap(), None);
}

#[tokio::test]
async fn installing_a_snapshot_replaces_the_state_machine() {
    let (_l1, mut leader) = open_group(&engine(), 1).unwrap();
    leader
        .apply([entry(1, put("a", "1")), entry(2, put("b", "2"))])
        .await
        .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));

    let (_l2, mut follower) = open_group(&engine(), 1).unwrap();
    follower.apply([entry(1, put("stale", "x"))]).await.unwrap();
    let mut rx = follower.begin_receiving_snapshot().await.unwrap();
    *rx = *snap.snapshot;
    follower.install_snapshot(&snap.meta, rx).await.unwrap();
    let reader = follower.reader();
    assert_eq!(reader.get(b"a").unwrap(), Some((b"1".to_vec(), 1)));
    assert_eq!(reader.get(b"b").unwrap(), Some((b"2".to_vec(), 2)));
    assert_eq!(reader.get(b"stale").unwrap(), None);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snap.meta.last_log_id
    );
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test]
async fn a_snapshot_with_a_corrupt_record_is_refused() {
    let (_l1, mut leader) = open_group(&engine(), 1).unwrap();
    leader
        .apply([entry(1, put("key", "value-value"))])
        .await
        .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut body = snap.snapshot;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes).unwrap();
    // Flip a byte of the value ("value-value" sits near the end, before the record's crc).
    let pos = bytes
        .windows(5)
        .position(|w| w == b"value")
        .expect("value in snapshot");
    bytes[pos] ^= 0x20;
    body.seek(SeekFrom::Start(pos as u64)).unwrap();
    body.write_all(&bytes[pos..pos + 1]).unwrap();
    let (_l2, mut follower) = open_group(&engine(), 1).unwrap();
    let err = follower
        .install_snapshot(&snap.meta, body)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(follower.reader().get(b"key").unwrap(), None);
}

/// Every value of one of group 1's trees, by key, with its length.
fn tree_values(engine: &Arc<dyn Engine>, part: &str) -> Vec<(Vec<u8>, usize)> {
    let tree = engine
        .open_tree(&crate::cp::keys::tree_name(1, part))
        .unwrap();
    tree.range(
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        usize::MAX,
    )
    .unwrap()
    .into_iter()
    .map(|(k, v)| (k, v.len()))
    .collect()
}

#[tokio::test]
async fn a_snapshot_larger_than_a_chunk_is_stored_in_chunks_and_installs_elsewhere() {
    use crate::cp::snapshot::CHUNK_BYTES;
    let leader_engine = engine();
    let (_l1, mut leader) = open_group(&leader_engine, 1).unwrap();
    // 40 values of 100 kB: about four chunks of body.
    let value = "v".repeat(100_000);
    let entries: Vec<Entry> = (1..=40)
        .map(|i| entry(i, put(&format!("k{i:02}"), &value)))
        .collect();
    leader.apply(entries).await.unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let stored = tree_values(&leader_engine, "snap");
    assert!(
        stored.iter().all(|(_, len)| *len <= CHUNK_BYTES),
        "a stored value over one chunk: {:?}",
        stored.iter().map(|(_, l)| l).max()
    );
    assert!(stored.iter().filter(|(_, len)| *len > 1000).count() >= 4);

    // Received through a slot of the follower's own snap tree, as over the network.
    let follower_engine = engine();
    let (_l2, mut follower) = open_group(&follower_engine, 1).unwrap();
    let mut rx = follower.begin_receiving_snapshot().await.unwrap();
    let mut body = snap.snapshot;
    std::io::copy(&mut *body, &mut *rx).unwrap();
    follower.install_snapshot(&snap.meta, rx).await.unwrap();
    let reader = follower.reader();
    for i in 1..=40 {
        let got = reader.get(format!("k{i:02}").as_bytes()).unwrap();
        assert_eq!(got, Some((value.clone().into_bytes(), i)), "k{i:02}");
    }
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test]
async fn an_install_interrupted_by_a_crash_is_finished_at_the_next_open() {
    let (_l1, mut leader) = open_group(&engine(), 1).unwrap();
    leader
        .apply([entry(1, put("a", "1")), entry(2, put("b", "2"))])
        .await
        .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let engine = engine();
    let (_l2, mut follower) = open_group(&engine, 1).unwrap();
    follower.apply([entry(1, put("stale", "x"))]).await.unwrap();
    let mut rx = follower.begin_receiving_snapshot().await.unwrap();
    *rx = *snap.snapshot;
    follower.install_snapshot(&snap.meta, rx).await.unwrap();
    drop(follower);
    // Put the state machine back as a crash in the middle of that install would leave it: the
    // install mark set, a record of the snapshot missing, an old record still there.
    let sm = engine
        .open_tree(&crate::cp::keys::tree_name(1, "sm"))
        .unwrap();
    sm.insert(b"m/installing", &[1]).unwrap();
    sm.remove(&crate::cp::keys::data_key(b"b")).unwrap();
    let stale = sm.get(&crate::cp::keys::data_key(b"a")).unwrap().unwrap();
    sm.insert(&crate::cp::keys::data_key(b"stale"), &stale)
        .unwrap();

    let (_l3, mut reopened) = open_group(&engine, 1).unwrap();
    let reader = reopened.reader();
    assert_eq!(reader.get(b"a").unwrap(), Some((b"1".to_vec(), 1)));
    assert_eq!(reader.get(b"b").unwrap(), Some((b"2".to_vec(), 2)));
    assert_eq!(reader.get(b"stale").unwrap(), None);
    assert_eq!(sm.get(b"m/installing").unwrap(), None);
    assert_eq!(
        reopened.applied_state().await.unwrap().0,
        snap.meta.last_log_id
    );
}

#[tokio::test]
async fn a_snapshot_stored_whole_by_an_older_version_is_moved_into_chunks() {
    // What an older version stored: the metadata and a format-1 body in one value.
    #[derive(serde::Serialize)]
    struct OldBody {
        format: u8,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    }
    #[derive(serde::Serialize)]
    struct OldSnapshot {
        meta: crate::cp::types::SnapshotMeta,
        data: Vec<u8>,
    }
    let old_engine = engine();
    let (_l1, mut old) = open_group(&old_engine, 1).unwrap();
    old.apply([entry(1, put("a", "1"))]).await.unwrap();
    let meta = old
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
        .meta;
    drop(old);
    let tree = |part: &str| {
        old_engine
            .open_tree(&crate::cp::keys::tree_name(1, part))
            .unwrap()
    };
    let record = tree("sm")
        .get(&crate::cp::keys::data_key(b"a"))
        .unwrap()
        .unwrap();
    let body = crate::cp::codec::encode(
        "snapshot",
        &OldBody {
            format: 1,
            records: vec![(b"a".to_vec(), record)],
        },
    )
    .unwrap();
    let snap_tree = tree("snap");
    snap_tree.clear().unwrap();
    let whole = OldSnapshot {
        meta: meta.clone(),
        data: body,
    };
    snap_tree
        .insert(
            crate::cp::keys::KEY_SNAPSHOT,
            &crate::cp::codec::encode("snapshot", &whole).unwrap(),
        )
        .unwrap();

    let (_l2, mut reopened) = open_group(&old_engine, 1).unwrap();
    assert_eq!(snap_tree.get(crate::cp::keys::KEY_SNAPSHOT).unwrap(), None);
    let current = reopened.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    // A format-1 body (also what an older leader sends) installs.
    let (_l3, mut follower) = open_group(&engine(), 1).unwrap();
    let mut rx = follower.begin_receiving_snapshot().await.unwrap();
    let mut body = current.snapshot;
    std::io::copy(&mut *body, &mut *rx).unwrap();
    follower.install_snapshot(&meta, rx).await.unwrap();
    assert_eq!(
        follower.reader().get(b"a").unwrap(),
        Some((b"1".to_vec(), 1))
    );
}
