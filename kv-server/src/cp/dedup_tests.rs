//! At-most-once writes through the state machine: a retried request id gets its first outcome,
//! across snapshots, and is forgotten only past the window.

use crate::cp::dedup::REQUEST_ID_WINDOW;
use crate::cp::state_machine::StateMachineStore;
use crate::cp::store::open_group;
use crate::cp::types::{CasOutcome, Entry, Expected, LogId, Request, RequestId, Response};
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

fn once(seq: u64, request: Request) -> Request {
    Request::Once {
        id: RequestId { client_id: 77, seq },
        request: Box::new(request),
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        keyspace: 1,
        key: key.into(),
        value: value.into(),
    }
}

/// A counter increment as a client does it: swap `from` for `from + 1`.
fn incr(from: u64) -> Request {
    Request::Cas {
        keyspace: 1,
        key: b"counter".to_vec(),
        expected: Expected::Value(from.to_string().into_bytes()),
        new_value: (from + 1).to_string().into_bytes(),
    }
}

fn sm() -> StateMachineStore {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    open_group(&engine, 1).unwrap().1
}

#[tokio::test]
async fn a_retried_write_returns_its_first_outcome_and_applies_once() {
    let mut sm = sm();
    let reader = sm.reader();
    let out = sm
        .apply([
            entry(1, once(1, put("counter", "0"))),
            entry(2, once(2, incr(0))),
            // The retry of seq 2 after a connection reset: it must not count as a mismatch.
            entry(3, once(2, incr(0))),
            // The retry of the put: it must not write again (no new revision).
            entry(4, once(1, put("counter", "0"))),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Response::Written { revision: 1 },
            Response::Cas(CasOutcome::Swapped { revision: 2 }),
            Response::Cas(CasOutcome::Swapped { revision: 2 }),
            Response::Written { revision: 1 },
        ]
    );
    assert_eq!(reader.get(b"counter").unwrap(), Some((b"1".to_vec(), 2)));
    // Untagged writes are not deduplicated (old log entries and AP-style callers).
    let out = sm
        .apply([entry(5, put("k", "v")), entry(6, put("k", "v"))])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Response::Written { revision: 5 },
            Response::Written { revision: 6 }
        ]
    );
}

#[tokio::test]
async fn a_cas_that_did_not_swap_is_evaluated_again_on_retry() {
    let mut sm = sm();
    let out = sm
        .apply([
            entry(1, once(1, incr(0))),
            entry(2, put("counter", "0")),
            entry(3, once(1, incr(0))),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Response::Cas(CasOutcome::Mismatch { current: None })
    );
    assert_eq!(out[2], Response::Cas(CasOutcome::Swapped { revision: 3 }));
}

#[tokio::test]
async fn remembered_ids_travel_in_snapshots() {
    let mut leader = sm();
    leader
        .apply([entry(1, once(9, put("a", "1")))])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut follower = sm();
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let out = follower
        .apply([entry(2, once(9, put("a", "1")))])
        .await
        .unwrap();
    assert_eq!(out, vec![Response::Written { revision: 1 }]);
}

#[tokio::test]
async fn ids_are_forgotten_only_past_the_window() {
    let mut sm = sm();
    sm.apply([entry(1, once(1, put("a", "first")))])
        .await
        .unwrap();
    // Fill the window with other tagged writes, a batch at a time as Raft applies them.
    let mut index = 2;
    let last_remembered = 1 + REQUEST_ID_WINDOW;
    while index <= last_remembered {
        let end = (index + 999).min(last_remembered);
        let batch: Vec<Entry> = (index..=end)
            .map(|i| entry(i, once(1_000_000 + i, put("b", "x"))))
            .collect();
        sm.apply(batch).await.unwrap();
        index = end + 1;
    }
    // Still inside the window: the retry gets the first outcome.
    let out = sm
        .apply([
            entry(index, once(1, put("a", "again"))),
            entry(index + 1, put("c", "x")),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Response::Written { revision: 1 });
    // One more batch moves the window past index 1: the id is forgotten, the write applies.
    let out = sm
        .apply([entry(index + 2, once(1, put("a", "again")))])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Response::Written {
            revision: index + 2
        }]
    );
}
