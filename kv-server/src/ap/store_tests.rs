//! Tests of the AP replica store: LWW merge, scans and pages, tombstone purge, corruption.

use super::merkle::{leaf_of, MERKLE_LEAVES};
use super::store::*;
use crate::ap::testkit::rec;
use crate::storage::memory::MemoryEngine;
use crate::storage::{Engine, StorageError};
use crate::types::Hlc;
use std::sync::{Arc, Mutex};

/// Arrival stamps 1, 2, 3, … (physical time), one per call.
fn counter() -> Stamper {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    Arc::new(move || Hlc {
        physical_ms: next.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        logical: 0,
        node_id: 1,
    })
}

fn store(engine: &Arc<dyn Engine>) -> ApStore {
    // Partition = first byte of the key mod 4.
    ApStore::open(
        engine,
        2,
        Arc::new(|k: &[u8]| u32::from(k[0]) % 4),
        counter(),
    )
    .unwrap()
}

#[test]
fn older_writes_never_overwrite_newer_ones() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    assert!(s.apply(&rec("a", 10, Some("new")), 0).unwrap());
    assert!(!s.apply(&rec("a", 5, Some("old")), 0).unwrap());
    assert!(
        !s.apply(&rec("a", 10, Some("new")), 0).unwrap(),
        "re-apply is a no-op"
    );
    assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 10, Some("new"))));
    assert!(s.apply(&rec("a", 11, None), 0).unwrap());
    assert!(
        !s.apply(&rec("a", 10, Some("new")), 0).unwrap(),
        "delete stays"
    );
    assert_eq!(s.read(b"a").unwrap().unwrap().value, None);
    assert_eq!(s.read(b"b").unwrap(), None);
}

#[test]
fn partition_scans_see_only_their_partition_across_pages() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    // 'a' = 97 -> partition 1, 'b' = 98 -> partition 2; enough keys to need several pages.
    let n = SCAN_BATCH * 2 + 7;
    for i in 0..n {
        s.apply(&rec(&format!("a{i:05}"), 1, Some("x")), 0).unwrap();
        s.apply(&rec(&format!("b{i:05}"), 1, Some("y")), 0).unwrap();
    }
    let mut seen = Vec::new();
    s.for_each_in_partition(1, |r| {
        seen.push(r.key);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), n);
    assert!(seen.iter().all(|k| k[0] == b'a'));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let leaves = s.merkle_leaves(1).unwrap();
    assert_ne!(leaves, s.merkle_leaves(2).unwrap());
    assert_eq!(s.merkle_leaves(3).unwrap(), vec![0; MERKLE_LEAVES]);
    let leaf = leaf_of(b"a00000");
    let in_leaf = s.records_in_leaves(1, &[leaf]).unwrap();
    assert!(!in_leaf.is_empty() && in_leaf.iter().all(|r| leaf_of(&r.key) == leaf));
}

#[test]
fn range_pages_stay_within_their_byte_budget_and_cover_every_record_once() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    let big = "x".repeat(100_000);
    // Partition 1 ('a' keys), every leaf; one tombstone among large values.
    for i in 0..30 {
        let value = (i != 7).then_some(big.as_str());
        s.apply(&rec(&format!("a{i:03}"), 1, value), 0).unwrap();
    }
    s.apply(&rec("b-other-partition", 1, Some("y")), 0).unwrap();
    let leaves: Vec<u32> = (0..MERKLE_LEAVES as u32).collect();
    let budget = 250_000;
    let (mut after, mut keys, mut pages) = (None::<Vec<u8>>, Vec::new(), 0);
    loop {
        let page = s.range_page(1, &leaves, after.as_deref(), budget).unwrap();
        pages += 1;
        let bytes: usize = page.records.iter().map(range_record_bytes).sum();
        assert!(bytes <= budget, "page {pages}: {bytes} bytes");
        // Our side of the same interval is exactly what the page holds.
        let ours = s
            .records_in_leaves_between(1, &leaves, after.as_deref(), page.resume_after.as_deref())
            .unwrap();
        assert_eq!(ours, page.records);
        keys.extend(page.records.iter().map(|r| r.key.clone()));
        match page.resume_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let want: Vec<Vec<u8>> = (0..30).map(|i| format!("a{i:03}").into_bytes()).collect();
    assert_eq!(keys, want);
    assert_eq!(pages, 15, "two 100 kB records per 250 kB page");
    // A record larger than the budget still travels, alone.
    let page = s.range_page(1, &leaves, None, 10).unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.resume_after, Some(b"a000".to_vec()));
}

#[test]
fn purge_removes_exactly_the_tombstones_the_rule_accepts() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    s.apply(&rec("a", 100, None), 0).unwrap();
    s.apply(&rec("b", 100, Some("live")), 0).unwrap();
    s.apply(&rec("c", 900, None), 0).unwrap();
    // Each tombstone got its arrival stamp when stored (1 for "a", 2 for "c").
    let stamp = |k: &str| {
        s.tombstone_arrival(k.as_bytes())
            .unwrap()
            .map(|h| h.physical_ms)
    };
    assert_eq!(
        (stamp("a"), stamp("b"), stamp("c")),
        (Some(1), None, Some(2))
    );
    let seen = Mutex::new(Vec::new());
    let purged = s
        .purge_tombstones(|t| {
            seen.lock()
                .unwrap()
                .push((t.key.clone(), t.partition, t.written.physical_ms));
            t.key == b"a"
        })
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        seen.into_inner().unwrap(),
        vec![(b"a".to_vec(), 1, 100), (b"c".to_vec(), 3, 900)],
        "only tombstones are offered, with their partition and timestamp"
    );
    assert_eq!(s.read(b"a").unwrap(), None);
    assert_eq!(stamp("a"), None, "its index entry went with it");
    assert!(s.read(b"c").unwrap().is_some(), "refused tombstone kept");
    assert!(s.read(b"b").unwrap().is_some(), "values are never offered");
    // A value over a tombstone drops its index entry; a newer tombstone is stamped anew.
    s.apply(&rec("c", 901, Some("back")), 0).unwrap();
    assert_eq!(stamp("c"), None);
    s.apply(&rec("c", 902, None), 0).unwrap();
    assert_eq!(stamp("c"), Some(3));
}

#[test]
fn a_tombstone_without_an_index_entry_is_stamped_at_the_next_purge_and_kept() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    s.apply(&rec("a", 100, None), 0).unwrap();
    // As after a crash between the tombstone's write and its stamp's.
    engine
        .open_tree(&ApStore::tombstone_tree_name(2))
        .unwrap()
        .clear()
        .unwrap();
    assert_eq!(
        s.purge_tombstones(|_| true).unwrap(),
        0,
        "no stamp, no purge"
    );
    assert_eq!(
        s.tombstone_arrival(b"a").unwrap().map(|h| h.physical_ms),
        Some(2),
        "stamped at the purge, later than its real arrival"
    );
    assert_eq!(s.purge_tombstones(|_| true).unwrap(), 1);
}

#[test]
fn an_old_tombstone_is_not_stored_for_a_key_this_replica_does_not_hold() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    // Absent key: a tombstone written before the horizon is dropped, a younger one kept.
    assert!(!s.apply(&rec("a", 99, None), 100).unwrap());
    assert_eq!(s.read(b"a").unwrap(), None);
    assert!(s.apply(&rec("b", 100, None), 100).unwrap());
    // A key held with an older value takes the old tombstone: that is the delete it missed.
    s.apply(&rec("c", 10, Some("old")), 0).unwrap();
    assert!(s.apply(&rec("c", 50, None), 100).unwrap());
    assert_eq!(s.read(b"c").unwrap(), Some(rec("c", 50, None)));
    // Old values are never dropped.
    assert!(s.apply(&rec("d", 1, Some("v")), 100).unwrap());
}

#[test]
fn data_survives_reopening_and_corruption_is_reported() {
    let mem = MemoryEngine::new();
    let engine: Arc<dyn Engine> = Arc::new(mem.clone());
    store(&engine).apply(&rec("a", 1, Some("v")), 0).unwrap();
    let reopened: Arc<dyn Engine> = Arc::new(mem);
    let s = store(&reopened);
    assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 1, Some("v"))));
    let tree = reopened.open_tree(&ApStore::tree_name(2)).unwrap();
    let (k, mut v) = tree.last().unwrap().unwrap();
    v[5] ^= 0x40;
    tree.insert(&k, &v).unwrap();
    assert!(matches!(s.read(b"a"), Err(StorageError::Corrupt { .. })));
    // A replica's copy replaces the corrupt one whatever its timestamp: the bad bytes cannot
    // be compared (this one is older than what was stored).
    assert!(s.apply(&rec("a", 0, Some("w")), 0).unwrap());
    assert_eq!(s.read(b"a").unwrap(), Some(rec("a", 0, Some("w"))));
}

/// Flips one byte of `key`'s stored record.
fn flip(engine: &Arc<dyn Engine>, key: &str) {
    let tree = engine.open_tree(&ApStore::tree_name(2)).unwrap();
    let rows = tree
        .range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, 1000)
        .unwrap();
    let (k, mut v) = rows
        .into_iter()
        .find(|(k, _)| &k[4..] == key.as_bytes())
        .unwrap();
    v[3] ^= 0x10;
    tree.insert(&k, &v).unwrap();
}

#[test]
fn corrupt_records_are_replaced_by_any_copy_and_never_leave_the_node() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let s = store(&engine);
    s.apply(&rec("a1", 10, Some("v")), 0).unwrap();
    s.apply(&rec("a2", 10, None), 0).unwrap();
    s.apply(&rec("a3", 10, Some("v")), 0).unwrap();
    let healthy = s.merkle_leaves(1).unwrap();
    flip(&engine, "a1");
    flip(&engine, "a2");
    assert!(s.is_corrupt(b"a1").unwrap() && !s.is_corrupt(b"a3").unwrap());
    // The leaves of the corrupt records differ from a healthy replica's; scans skip them.
    let leaves = s.merkle_leaves(1).unwrap();
    assert_ne!(
        leaves[leaf_of(b"a1") as usize],
        healthy[leaf_of(b"a1") as usize]
    );
    let all: Vec<u32> = (0..MERKLE_LEAVES as u32).collect();
    let page = s.range_page(1, &all, None, 1 << 20).unwrap();
    assert_eq!(
        page.records,
        vec![rec("a3", 10, Some("v"))],
        "nothing corrupt is sent"
    );
    let side = s.local_side(1, &all, None, None).unwrap();
    assert_eq!(side.corrupt, vec![b"a1".to_vec(), b"a2".to_vec()]);
    assert!(s.for_each(|_| Ok(())).is_err(), "a backup still refuses");
    assert_eq!(
        s.purge_tombstones(|_| true).unwrap(),
        0,
        "a corrupt tombstone is never purged"
    );
    let scrub = s.scrub_page(None, 2).unwrap();
    assert_eq!((scrub.checked, scrub.corrupt.len()), (2, 2));
    assert_eq!(
        s.scrub_page(scrub.resume_after.as_deref(), 2)
            .unwrap()
            .checked,
        1
    );
    // An old tombstone (before the forget horizon) removes a corrupt record: nothing and a
    // tombstone that old read the same.
    assert!(s.apply(&rec("a2", 5, None), 100).unwrap());
    assert_eq!(s.read(b"a2").unwrap(), None);
    assert_eq!(s.tombstone_arrival(b"a2").unwrap(), None);
    // `remove_corrupt` removes only a corrupt record.
    assert!(!s.remove_corrupt(b"a3").unwrap());
    assert!(s.remove_corrupt(b"a1").unwrap());
    assert_eq!(s.read(b"a1").unwrap(), None);
    assert_eq!(
        s.merkle_leaves(1).unwrap()[leaf_of(b"a3") as usize],
        healthy[leaf_of(b"a3") as usize]
    );
    // Replacing a corrupt record with a tombstone stamps it like any stored tombstone.
    s.apply(&rec("a4", 10, Some("v")), 0).unwrap();
    flip(&engine, "a4");
    assert!(s.apply(&rec("a4", 1, None), 0).unwrap());
    assert!(s.tombstone_arrival(b"a4").unwrap().is_some());
}
