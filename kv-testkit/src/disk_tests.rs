//! What the simulated disk promises: flushed writes survive a crash, unflushed ones do not,
//! batches stay whole, and a crashed mount can no longer touch the disk.

use super::*;

fn all(tree: &dyn Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree.range(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn an_unflushed_write_is_gone_after_a_crash_while_a_flushed_one_survives() {
    let disk = SimDisk::new("node-1");
    let engine = disk.open();
    let t = engine.open_tree("data").unwrap();
    t.insert(b"flushed", b"1").unwrap();
    t.flush().unwrap();
    t.insert(b"unflushed", b"2").unwrap();
    // Before the crash a reader sees both: the volatile layer is what the node reads.
    assert_eq!(all(&*t), vec![kv("flushed", "1"), kv("unflushed", "2")]);
    assert_eq!(disk.unflushed_writes(), 1);

    disk.crash();
    let t = disk.open().open_tree("data").unwrap();
    assert_eq!(t.get(b"flushed").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        t.get(b"unflushed").unwrap(),
        None,
        "the unflushed write survived"
    );
    assert_eq!(disk.stats().lost_in_last_crash, 1);
    assert_eq!(disk.unflushed_writes(), 0);
}

#[test]
fn an_unflushed_overwrite_or_remove_reverts_to_the_flushed_value() {
    let disk = SimDisk::default();
    let t = disk.open().open_tree("data").unwrap();
    t.insert(b"a", b"old").unwrap();
    t.insert(b"b", b"kept").unwrap();
    t.flush().unwrap();
    t.insert(b"a", b"new").unwrap();
    t.remove(b"b").unwrap();
    t.clear().unwrap();
    assert!(all(&*t).is_empty());
    disk.crash();
    let t = disk.open().open_tree("data").unwrap();
    assert_eq!(all(&*t), vec![kv("a", "old"), kv("b", "kept")]);
}

#[test]
fn a_tree_flush_covers_only_that_tree_and_an_engine_flush_covers_all() {
    let disk = SimDisk::default();
    let engine = disk.open();
    let log = engine.open_tree("log").unwrap();
    let sm = engine.open_tree("sm").unwrap();
    log.insert(b"1", b"entry").unwrap();
    sm.insert(b"k", b"applied").unwrap();
    log.flush().unwrap();
    disk.crash();
    let engine = disk.open();
    assert_eq!(
        engine.open_tree("log").unwrap().get(b"1").unwrap(),
        Some(b"entry".to_vec())
    );
    assert_eq!(
        engine.open_tree("sm").unwrap().get(b"k").unwrap(),
        None,
        "flushing one tree must not make another durable"
    );

    engine.open_tree("sm").unwrap().insert(b"k", b"v").unwrap();
    engine
        .open_tree("other")
        .unwrap()
        .insert(b"o", b"x")
        .unwrap();
    engine.flush().unwrap();
    disk.crash();
    let engine = disk.open();
    assert_eq!(
        engine.open_tree("sm").unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(
        engine.open_tree("other").unwrap().get(b"o").unwrap(),
        Some(b"x".to_vec())
    );
}

#[test]
fn a_crash_keeping_some_writes_keeps_the_oldest_and_never_half_a_batch() {
    let disk = SimDisk::default();
    let engine = disk.open();
    let t = engine.open_tree("t").unwrap();
    let u = engine.open_tree("u").unwrap();
    t.insert(b"first", b"1").unwrap();
    u.apply_batch(&[
        BatchOp::Insert(b"a".to_vec(), b"2".to_vec()),
        BatchOp::Insert(b"b".to_vec(), b"2".to_vec()),
    ])
    .unwrap();
    t.insert(b"third", b"3").unwrap();
    disk.crash_keeping(2);
    let engine = disk.open();
    assert_eq!(
        all(&*engine.open_tree("t").unwrap()),
        vec![kv("first", "1")]
    );
    assert_eq!(
        all(&*engine.open_tree("u").unwrap()),
        vec![kv("a", "2"), kv("b", "2")]
    );
    assert_eq!(disk.stats().lost_in_last_crash, 1);

    // Keeping more than is pending keeps everything.
    engine.open_tree("t").unwrap().insert(b"x", b"y").unwrap();
    disk.crash_keeping(10);
    assert_eq!(
        disk.open().open_tree("t").unwrap().get(b"x").unwrap(),
        Some(b"y".to_vec())
    );
}

#[test]
fn handles_of_a_crashed_mount_fail_and_cannot_write_into_the_next_life() {
    let disk = SimDisk::new("node-7");
    let old_engine = disk.open();
    let old_tree = old_engine.open_tree("data").unwrap();
    old_tree.insert(b"k", b"v").unwrap();
    old_tree.flush().unwrap();
    disk.crash();

    let err = old_tree.insert(b"k", b"zombie").unwrap_err();
    assert!(
        matches!(&err, StorageError::Engine { location, .. } if location == "node-7"),
        "{err:?}"
    );
    assert!(err.to_string().contains("crashed"), "{err}");
    assert!(old_tree.get(b"k").is_err());
    assert!(old_tree.flush().is_err());
    assert!(old_engine.flush().is_err());
    assert!(old_engine.open_tree("other").is_err());

    let new = disk.open();
    assert_eq!(new.location(), "node-7");
    assert_eq!(
        new.open_tree("data").unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn flush_counts_only_flushes_that_made_something_durable() {
    let disk = SimDisk::default();
    let engine = disk.open();
    let t = engine.open_tree("t").unwrap();
    engine.flush().unwrap();
    t.flush().unwrap();
    assert_eq!(disk.stats().flushes, 0);
    t.insert(b"k", b"v").unwrap();
    engine.open_tree("other").unwrap().flush().unwrap();
    assert_eq!(
        disk.stats().flushes,
        0,
        "another tree's flush covers nothing here"
    );
    t.flush().unwrap();
    assert_eq!(disk.stats().flushes, 1);
    assert_eq!(disk.unflushed_writes(), 0);
}

#[test]
fn the_simulated_disk_passes_the_storage_suite() {
    crate::storage_suite::run_all(|| {
        crate::storage_suite::EngineFixture::new(SimDisk::new("simdisk").open())
    });
}
