//! Storage conformance: kv-testkit's storage suite and openraft's storage suite, each run on
//! every engine — memory, sled (in a temporary directory) and the simulated disk — so the
//! engines cannot drift apart. Then what only some engines can show: sled's reopen, lock and
//! on-disk corruption; the simulated disk's crash, through the CP group store.

use kv_server::cp::state_machine::StateMachineStore;
use kv_server::cp::store::{open_group, LogStore};
use kv_server::cp::types::{Entry, LogId, RaftStorageError, Request, TypeConfig};
use kv_server::storage::memory::MemoryEngine;
use kv_server::storage::record::{RecordTree, StoredRecord};
use kv_server::storage::sled::SledEngine;
use kv_server::storage::{open_engine, Engine, EngineKind};
use kv_server::types::Version;
use kv_testkit::disk::SimDisk;
use kv_testkit::storage_conformance;
use kv_testkit::storage_suite::{self, EngineFixture};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder, Vote};
use std::sync::Arc;

fn memory() -> EngineFixture {
    EngineFixture::new(MemoryEngine::new())
}

fn sled() -> EngineFixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    EngineFixture::with_guard(SledEngine::open(dir.path()).expect("sled opens"), dir)
}

fn sim_disk() -> EngineFixture {
    EngineFixture::new(SimDisk::new("simdisk").open())
}

storage_conformance!(memory_engine, memory);
storage_conformance!(sled_engine, sled);
storage_conformance!(sim_disk_engine, sim_disk);

// ---- restarts ----

#[test]
fn memory_restart_keeps_flushed_writes() {
    // The memory engine survives a "restart" only through a clone kept outside the node.
    let engine = MemoryEngine::new();
    let disk = engine.clone();
    storage_suite::restart_keeps_flushed_writes(Arc::new(engine), |old| {
        drop(old);
        Arc::new(disk)
    });
}

#[test]
fn sled_reopen_keeps_flushed_data_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledEngine::open(dir.path()).unwrap();
    storage_suite::restart_keeps_flushed_writes(Arc::new(first), |old| {
        // sled holds the directory's lock until every handle is gone.
        drop(old);
        Arc::new(SledEngine::open(dir.path()).unwrap())
    });
}

#[test]
fn sim_disk_crash_keeps_flushed_writes() {
    let disk = SimDisk::new("simdisk");
    storage_suite::restart_keeps_flushed_writes(Arc::new(disk.open()), |old| {
        disk.crash();
        drop(old);
        Arc::new(disk.open())
    });
}

// ---- sled only ----

#[test]
fn sled_refuses_a_directory_in_use_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledEngine::open(dir.path()).unwrap();
    let err = SledEngine::open(dir.path())
        .err()
        .expect("second open must fail");
    let msg = err.to_string();
    let location = dir.path().display().to_string();
    assert!(
        msg.contains(&format!(
            "data directory {location} is in use by another kv process (lock held)"
        )) && msg.contains("--data-dir"),
        "{msg}"
    );
}

#[test]
fn sled_reports_a_record_corrupted_on_disk_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().display().to_string();
    {
        let engine = SledEngine::open(dir.path()).unwrap();
        let records = RecordTree::new(engine.open_tree("records").unwrap(), engine.location());
        let record = StoredRecord {
            version: Version::Revision(1),
            value: Some(b"v".to_vec()),
        };
        records.put(b"key-9", &record).unwrap();
        storage_suite::flip_a_byte(records.raw().as_ref(), b"key-9");
        engine.flush().unwrap();
    }
    let engine = SledEngine::open(dir.path()).unwrap();
    assert_eq!(engine.location(), location);
    let records = RecordTree::new(engine.open_tree("records").unwrap(), engine.location());
    storage_suite::assert_corrupt(&records, b"key-9", &location);
}

#[test]
fn open_engine_picks_the_engine_and_needs_a_dir_for_sled() {
    let dir = tempfile::tempdir().unwrap();
    let sled = open_engine(EngineKind::Sled, Some(dir.path())).unwrap();
    assert_eq!(sled.location(), dir.path().display().to_string());
    assert_eq!(
        open_engine(EngineKind::Memory, None).unwrap().location(),
        "memory"
    );
    let err = open_engine(EngineKind::Sled, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--data-dir"), "{err}");
    assert_eq!("sled".parse::<EngineKind>(), Ok(EngineKind::Sled));
    assert_eq!("memory".parse::<EngineKind>(), Ok(EngineKind::Memory));
    assert!("rocks".parse::<EngineKind>().unwrap_err().contains("rocks"));
}

// ---- openraft's storage suite on every engine ----

/// Builds each CP group store on a fresh engine from a fixture, kept alive with the store.
struct GroupStoreBuilder(fn() -> EngineFixture);

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, EngineFixture> for GroupStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(EngineFixture, LogStore, StateMachineStore), RaftStorageError> {
        let fixture = (self.0)();
        let (log, sm) = open_group(&fixture.engine, 7)?;
        Ok((fixture, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_memory_engine() {
    Suite::test_all(GroupStoreBuilder(memory)).expect("openraft storage suite on memory");
}

#[test]
fn openraft_storage_suite_passes_on_the_sled_engine() {
    Suite::test_all(GroupStoreBuilder(sled)).expect("openraft storage suite on sled");
}

#[test]
fn openraft_storage_suite_passes_on_the_simulated_disk() {
    Suite::test_all(GroupStoreBuilder(sim_disk)).expect("openraft storage suite on the sim disk");
}

// ---- the CP group store across a power loss ----

fn put(index: u64, key: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::Put {
            keyspace: 1,
            key: key.into(),
            value: b"v".to_vec(),
        }),
    }
}

/// A vote is durable when `save_vote` returns (else a node could vote twice in one term).
#[tokio::test]
async fn a_saved_vote_survives_a_crash() {
    let disk = SimDisk::new("node-1");
    let engine: Arc<dyn Engine> = Arc::new(disk.open());
    let (mut log, _sm) = open_group(&engine, 3).unwrap();
    let vote = Vote::new(4, 2);
    log.save_vote(&vote).await.unwrap();
    disk.crash();
    let engine: Arc<dyn Engine> = Arc::new(disk.open());
    let (mut log, _sm) = open_group(&engine, 3).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
}

/// Applies are not flushed (the log replays them), but one apply is one batch: a crash loses
/// it whole — records and applied index together. Building a snapshot flushes the state
/// machine first, so the log may be purged up to it.
#[tokio::test]
async fn a_crash_loses_unflushed_applies_whole_and_keeps_what_a_snapshot_covers() {
    let disk = SimDisk::new("node-1");
    let engine: Arc<dyn Engine> = Arc::new(disk.open());
    let (_log, mut sm) = open_group(&engine, 3).unwrap();
    sm.apply([put(1, "a"), put(2, "b")]).await.unwrap();
    assert_eq!(sm.reader().get(b"a").unwrap(), Some((b"v".to_vec(), 1)));
    disk.crash();

    let engine: Arc<dyn Engine> = Arc::new(disk.open());
    let (_log, mut sm) = open_group(&engine, 3).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    assert_eq!(sm.reader().get(b"a").unwrap(), None);

    sm.apply([put(1, "a"), put(2, "b")]).await.unwrap();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    sm.apply([put(3, "c")]).await.unwrap();
    disk.crash();

    let engine: Arc<dyn Engine> = Arc::new(disk.open());
    let (_log, mut sm) = open_group(&engine, 3).unwrap();
    let applied = sm.applied_state().await.unwrap().0;
    assert_eq!(applied, snapshot.meta.last_log_id);
    assert_eq!(applied.map(|l| l.index), Some(2));
    assert_eq!(sm.reader().get(b"b").unwrap(), Some((b"v".to_vec(), 2)));
    assert_eq!(sm.reader().get(b"c").unwrap(), None);
    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(current.meta, snapshot.meta);
}
