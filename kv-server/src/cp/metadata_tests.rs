//! The metadata group's keyspace definitions: the built-in keyspaces can never be redefined.

use crate::cp::store::open_group;
use crate::cp::types::{Entry, KeyspaceOutcome, LogId, Request, Response};
use crate::storage::memory::MemoryEngine;
use crate::storage::Engine;
use crate::types::{KeyspaceDef, Mode};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use std::sync::Arc;

fn entry(index: u64, req: Request) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(req),
    }
}

#[tokio::test]
async fn a_builtin_keyspace_cannot_be_redefined_even_before_anything_was_created() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (_log, mut sm) = open_group(&engine, 0).unwrap();
    let builtin = KeyspaceDef::builtin();
    let cp = builtin.iter().find(|k| k.name == "cp").unwrap().clone();
    let ap = builtin.iter().find(|k| k.name == "ap").unwrap().clone();
    // What `kv keyspace create cp --mode ap` proposes: the name of a built-in, a fresh id.
    let cp_as_ap = KeyspaceDef {
        id: 3,
        mode: Mode::Ap,
        ..cp.clone()
    };
    let ap_as_cp = KeyspaceDef {
        id: 4,
        mode: Mode::Cp,
        ..ap.clone()
    };
    let taken_id = KeyspaceDef {
        name: "orders".into(),
        ..ap.clone()
    };
    let out = sm
        .apply([
            entry(1, Request::CreateKeyspace(cp_as_ap)),
            entry(2, Request::CreateKeyspace(ap_as_cp)),
            entry(3, Request::CreateKeyspace(taken_id)),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Response::Keyspace(KeyspaceOutcome::NameExists(cp)),
            Response::Keyspace(KeyspaceOutcome::NameExists(ap.clone())),
            Response::Keyspace(KeyspaceOutcome::IdTaken(ap)),
        ]
    );
    // Nothing was stored: the definitions listed are still only the built-ins' (none stored).
    let stored = sm
        .reader()
        .scan_prefix(crate::cp::keys::KEYSPACE_PREFIX)
        .unwrap();
    assert!(stored.is_empty(), "stored {} definitions", stored.len());
}
