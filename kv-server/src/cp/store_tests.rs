//! Unit tests of the CP group store: the state machine's put/delete/cas semantics, snapshots and
//! reopening. openraft's storage suite runs on every engine (and the crash behaviour on the
//! simulated disk) in `kv-server/tests/storage_conformance.rs`.

use crate::cp::store::open_group;
use crate::cp::types::{CasOutcome, Entry, Expected, LogId, Request, Response};
use crate::storage::memory::MemoryEngine;
use crate::storage::Engine;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
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
    let mut bytes = snap.snapshot.into_inner();
    // Flip a byte of the value ("value-value" sits near the end, before the record's crc).
    let pos = bytes
        .windows(5)
        .position(|w| w == b"value")
        .expect("value in snapshot");
    bytes[pos] ^= 0x20;
    let (_l2, mut follower) = open_group(&engine(), 1).unwrap();
    let err = follower
        .install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(bytes)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(follower.reader().get(b"key").unwrap(), None);
}
