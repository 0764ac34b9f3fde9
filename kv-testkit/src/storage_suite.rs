//! The storage conformance suite: every case is written once against `&dyn Engine`, and every
//! engine (memory, sled, the simulated disk, and any engine added later) runs all of them, so
//! the engines cannot drift apart (TiKV's `engine_traits` tests, in spirit).
//!
//! Use it from a test target with [`crate::storage_conformance!`] (one `#[test]` per case) or
//! call [`run_all`]. Cases that need more than the trait — reopening a directory, a second
//! process's lock — live beside the engine's own tests; [`restart_keeps_flushed_writes`] takes
//! the restart as a closure so that every engine that can restart runs it.

use kv_server::storage::record::{RecordTree, StoredRecord};
use kv_server::storage::{BatchOp, Engine, StorageError, Tree};
use kv_server::types::Version;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Batches the writer applies while a reader checks atomicity.
pub const ATOMICITY_BATCHES: u64 = 2_000;
/// Proptest cases of the model test per engine (sled opens a database per case).
pub const MODEL_CASES: u32 = 48;

/// One case of the suite: it gets a fresh engine and panics on a violation.
pub type Case = fn(&dyn Engine);

/// Every case that needs only a fresh engine, by name.
pub const CASES: &[(&str, Case)] = &[
    ("get_insert_remove", get_insert_remove),
    ("range_bounds_and_limit", range_bounds_and_limit),
    ("last", last),
    (
        "batch_applies_every_op_in_order",
        batch_applies_every_op_in_order,
    ),
    ("batch_is_atomic_to_readers", batch_is_atomic_to_readers),
    ("trees_are_independent", trees_are_independent),
    (
        "corrupt_record_is_reported_not_returned",
        corrupt_record_is_reported_not_returned,
    ),
];

/// An engine under test and whatever must outlive it (a temporary directory).
pub struct EngineFixture {
    /// The engine the cases run on.
    pub engine: Arc<dyn Engine>,
    // Declared after `engine` so it drops after it: the directory outlives the database.
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl EngineFixture {
    /// A fixture of an engine that needs nothing else.
    pub fn new(engine: impl Engine) -> Self {
        Self {
            engine: Arc::new(engine),
            _guard: None,
        }
    }

    /// A fixture that keeps `guard` (e.g. a `tempfile::TempDir`) until the engine is dropped.
    pub fn with_guard(engine: impl Engine, guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            engine: Arc::new(engine),
            _guard: Some(Box::new(guard)),
        }
    }
}

/// Runs every case of [`CASES`] on a fresh engine from `make`, then the model test.
pub fn run_all(make: impl Fn() -> EngineFixture) {
    for (name, case) in CASES {
        eprintln!("storage conformance case {name}");
        case(&*make().engine);
    }
    model_test(make, MODEL_CASES);
}

/// Generates a module `$name` with one `#[test]` per case of the suite, each on a fresh
/// engine from `$make` (a closure returning an [`EngineFixture`]), plus the model test.
#[macro_export]
macro_rules! storage_conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::storage_conformance!(@cases $make;
                get_insert_remove,
                range_bounds_and_limit,
                last,
                batch_applies_every_op_in_order,
                batch_is_atomic_to_readers,
                trees_are_independent,
                corrupt_record_is_reported_not_returned,
            );
            #[test]
            fn matches_the_model() {
                $crate::storage_suite::model_test($make, $crate::storage_suite::MODEL_CASES);
            }
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(#[test]
        fn $case() {
            let fixture = ($make)();
            $crate::storage_suite::$case(&*fixture.engine);
        })*

        /// A case added to `CASES` but not to this macro would silently not run here.
        #[test]
        fn every_case_of_the_suite_runs() {
            let generated: &[&str] = &[$(stringify!($case)),*];
            let listed: Vec<&str> = $crate::storage_suite::CASES.iter().map(|c| c.0).collect();
            assert_eq!(generated, listed.as_slice());
        }
    };
}

fn entry(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

fn keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| k.as_slice()).collect()
}

fn all(t: &dyn Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    t.range(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
}

/// Point reads and writes; removing a missing key is fine; an empty value is a value.
pub fn get_insert_remove(engine: &dyn Engine) {
    let t = engine.open_tree("data").unwrap();
    assert_eq!(t.get(b"k").unwrap(), None);
    t.insert(b"k", b"v1").unwrap();
    assert_eq!(t.get(b"k").unwrap(), Some(b"v1".to_vec()));
    t.insert(b"k", b"v2").unwrap();
    assert_eq!(t.get(b"k").unwrap(), Some(b"v2".to_vec()));
    t.remove(b"k").unwrap();
    assert_eq!(t.get(b"k").unwrap(), None);
    // Removing a missing key is not an error.
    t.remove(b"k").unwrap();
    // Empty values are values, not absence.
    t.insert(b"empty", b"").unwrap();
    assert_eq!(t.get(b"empty").unwrap(), Some(Vec::new()));
    assert_eq!(t.name(), "data");
}

/// Ranges are byte-wise ordered, honour both bounds and the limit.
pub fn range_bounds_and_limit(engine: &dyn Engine) {
    let t = engine.open_tree("data").unwrap();
    for k in [&b"a"[..], b"ab", b"b", b"c", b"d", &[0x00], &[0xff, 0x00]] {
        t.insert(k, k).unwrap();
    }
    let everything = all(&*t);
    // Byte-wise lexicographic order: a prefix sorts before its extensions.
    assert_eq!(
        keys(&everything),
        vec![&[0x00][..], b"a", b"ab", b"b", b"c", b"d", &[0xff, 0x00]]
    );
    assert!(everything.iter().all(|(k, v)| k == v));
    let r = |s: Bound<&[u8]>, e: Bound<&[u8]>, limit| {
        let got = t.range(s, e, limit).unwrap();
        keys(&got).iter().map(|k| k.to_vec()).collect::<Vec<_>>()
    };
    let v = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    use Bound::{Excluded, Included, Unbounded};
    assert_eq!(r(Included(b"b"), Excluded(b"d"), 10), v(&[b"b", b"c"]));
    assert_eq!(r(Excluded(b"b"), Included(b"d"), 10), v(&[b"c", b"d"]));
    assert_eq!(r(Included(b"a"), Included(b"a"), 10), v(&[b"a"]));
    assert_eq!(r(Excluded(b"a"), Excluded(b"b"), 10), v(&[b"ab"]));
    assert_eq!(r(Included(b"aa"), Unbounded, 2), v(&[b"ab", b"b"]));
    assert_eq!(r(Unbounded, Excluded(b"a"), 10), v(&[&[0x00]]));
    assert_eq!(r(Included(&[0xff, 0x01]), Unbounded, 10), v(&[]));
    assert_eq!(r(Unbounded, Unbounded, 0), v(&[]));
    assert_eq!(r(Unbounded, Unbounded, 3), v(&[&[0x00], b"a", b"ab"]));
    // An inverted range is empty, never a panic.
    assert_eq!(r(Included(b"c"), Included(b"a"), 10), v(&[]));
    assert_eq!(r(Excluded(b"b"), Excluded(b"b"), 10), v(&[]));
}

/// `last` follows inserts and removes.
pub fn last(engine: &dyn Engine) {
    let t = engine.open_tree("data").unwrap();
    assert_eq!(t.last().unwrap(), None);
    t.insert(b"b", b"2").unwrap();
    t.insert(b"a", b"1").unwrap();
    t.insert(b"c", b"3").unwrap();
    assert_eq!(t.last().unwrap(), Some(entry(b"c", b"3")));
    t.remove(b"c").unwrap();
    assert_eq!(t.last().unwrap(), Some(entry(b"b", b"2")));
}

/// A batch applies every op, in order (the later op on a key wins); an empty batch is fine.
pub fn batch_applies_every_op_in_order(engine: &dyn Engine) {
    let t = engine.open_tree("data").unwrap();
    t.insert(b"gone", b"x").unwrap();
    t.apply_batch(&[
        BatchOp::Insert(b"a".to_vec(), b"1".to_vec()),
        BatchOp::Insert(b"b".to_vec(), b"1".to_vec()),
        BatchOp::Remove(b"gone".to_vec()),
        // Within a batch the later op on a key wins.
        BatchOp::Insert(b"b".to_vec(), b"2".to_vec()),
        BatchOp::Insert(b"c".to_vec(), b"1".to_vec()),
        BatchOp::Remove(b"c".to_vec()),
    ])
    .unwrap();
    assert_eq!(all(&*t), vec![entry(b"a", b"1"), entry(b"b", b"2")]);
    t.apply_batch(&[]).unwrap();
    assert_eq!(all(&*t).len(), 2);
}

/// A reader never sees half a batch. The writer sets "a" and "b" to the same increasing counter
/// in one batch; reading "a" then "b", the later read of "b" can never be older than "a".
pub fn batch_is_atomic_to_readers(engine: &dyn Engine) {
    let t = engine.open_tree("data").unwrap();
    let put = |t: &Arc<dyn Tree>, i: u64| {
        t.apply_batch(&[
            BatchOp::Insert(b"a".to_vec(), i.to_be_bytes().to_vec()),
            BatchOp::Insert(b"b".to_vec(), i.to_be_bytes().to_vec()),
        ])
        .unwrap()
    };
    put(&t, 0);
    let read = |t: &Arc<dyn Tree>, k: &[u8]| {
        u64::from_be_bytes(t.get(k).unwrap().unwrap().try_into().unwrap())
    };
    std::thread::scope(|s| {
        let writer_tree = t.clone();
        let writer = s.spawn(move || {
            for i in 1..=ATOMICITY_BATCHES {
                put(&writer_tree, i);
            }
        });
        while !writer.is_finished() {
            let a = read(&t, b"a");
            let b = read(&t, b"b");
            assert!(b >= a, "saw a={a} then b={b}: half a batch was visible");
        }
    });
    assert_eq!(read(&t, b"a"), ATOMICITY_BATCHES);
    assert_eq!(read(&t, b"b"), ATOMICITY_BATCHES);
}

/// Trees do not share keys; clearing one leaves the others; reopening a tree gives its data.
pub fn trees_are_independent(engine: &dyn Engine) {
    let one = engine.open_tree("one").unwrap();
    let two = engine.open_tree("two").unwrap();
    one.insert(b"k", b"1").unwrap();
    two.insert(b"k", b"2").unwrap();
    assert_eq!(one.get(b"k").unwrap(), Some(b"1".to_vec()));
    assert_eq!(two.get(b"k").unwrap(), Some(b"2".to_vec()));
    one.clear().unwrap();
    assert_eq!(one.get(b"k").unwrap(), None);
    assert_eq!(one.last().unwrap(), None);
    assert_eq!(two.get(b"k").unwrap(), Some(b"2".to_vec()));
    // Opening a tree again gives the same data.
    let two_again = engine.open_tree("two").unwrap();
    assert_eq!(two_again.get(b"k").unwrap(), Some(b"2".to_vec()));
    two_again.insert(b"j", b"3").unwrap();
    assert_eq!(two.get(b"j").unwrap(), Some(b"3".to_vec()));
    two.flush().unwrap();
    engine.flush().unwrap();
}

/// A record whose checksum fails is an error naming key and location, never a value.
pub fn corrupt_record_is_reported_not_returned(engine: &dyn Engine) {
    let records = RecordTree::new(engine.open_tree("records").unwrap(), engine.location());
    let record = StoredRecord {
        version: Version::Revision(7),
        value: Some(b"hello".to_vec()),
    };
    records.put(b"user:1", &record).unwrap();
    assert_eq!(records.get(b"user:1").unwrap(), Some(record));
    flip_a_byte(records.raw().as_ref(), b"user:1");
    assert_corrupt(&records, b"user:1", engine.location());
}

/// Flips one byte of the value stored under `key` (inside a record's payload).
pub fn flip_a_byte(tree: &dyn Tree, key: &[u8]) {
    let mut raw = tree.get(key).unwrap().unwrap();
    raw[12] ^= 0x5a;
    tree.insert(key, &raw).unwrap();
}

/// Asserts that reading `key` fails as `Corrupt`, naming the key and `location`.
pub fn assert_corrupt(records: &RecordTree, key: &[u8], location: &str) {
    let err = records.get(key).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    let key = String::from_utf8_lossy(key);
    assert!(
        msg.contains(key.as_ref()) && msg.contains(location),
        "message must name key {key} and location {location}: {msg}"
    );
}

/// Flushed writes and batches, in several trees, are there after a restart. `restart` stops
/// the engine it is given (drop it, or crash its disk) and returns the engine started again
/// over the same data; every tree handle is dropped before it runs.
pub fn restart_keeps_flushed_writes(
    first: Arc<dyn Engine>,
    restart: impl FnOnce(Arc<dyn Engine>) -> Arc<dyn Engine>,
) {
    {
        let t = first.open_tree("data").unwrap();
        t.insert(b"k", b"v").unwrap();
        t.apply_batch(&[
            BatchOp::Insert(b"b1".to_vec(), b"1".to_vec()),
            BatchOp::Insert(b"b2".to_vec(), b"2".to_vec()),
        ])
        .unwrap();
        t.flush().unwrap();
        first
            .open_tree("other")
            .unwrap()
            .insert(b"o", b"x")
            .unwrap();
        first.flush().unwrap();
    }
    let engine = restart(first);
    let t = engine.open_tree("data").unwrap();
    assert_eq!(
        t.range(Bound::Unbounded, Bound::Unbounded, 10).unwrap(),
        vec![entry(b"b1", b"1"), entry(b"b2", b"2"), entry(b"k", b"v")]
    );
    let other = engine.open_tree("other").unwrap();
    assert_eq!(other.get(b"o").unwrap(), Some(b"x".to_vec()));
}

/// One operation of the model test.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// `Tree::insert`.
    Insert(Vec<u8>, Vec<u8>),
    /// `Tree::remove`.
    Remove(Vec<u8>),
    /// `Tree::apply_batch`.
    Batch(Vec<BatchOp>),
    /// `Tree::clear`.
    Clear,
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so that operations collide on keys.
    proptest::collection::vec(0u8..4, 0..3)
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        (small_key(), any::<Vec<u8>>()).prop_map(|(k, v)| BatchOp::Insert(k, v)),
        small_key().prop_map(BatchOp::Remove),
    ]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (small_key(), any::<Vec<u8>>()).prop_map(|(k, v)| ModelOp::Insert(k, v)),
        3 => small_key().prop_map(ModelOp::Remove),
        2 => proptest::collection::vec(batch_op(), 0..5).prop_map(ModelOp::Batch),
        1 => Just(ModelOp::Clear),
    ]
}

/// Applies `ops` to the engine and to a `BTreeMap` model; every read must agree.
pub fn matches_the_model(engine: &dyn Engine, ops: &[ModelOp], probe: &[u8], limit: usize) {
    let t = engine.open_tree("model").unwrap();
    let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    for op in ops {
        match op {
            ModelOp::Insert(k, v) => {
                t.insert(k, v).unwrap();
                model.insert(k.clone(), v.clone());
            }
            ModelOp::Remove(k) => {
                t.remove(k).unwrap();
                model.remove(k);
            }
            ModelOp::Batch(batch) => {
                t.apply_batch(batch).unwrap();
                for b in batch {
                    match b {
                        BatchOp::Insert(k, v) => model.insert(k.clone(), v.clone()),
                        BatchOp::Remove(k) => model.remove(k),
                    };
                }
            }
            ModelOp::Clear => {
                t.clear().unwrap();
                model.clear();
            }
        }
        assert_eq!(t.get(probe).unwrap(), model.get(probe).cloned());
    }
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all(&*t), want);
    let want_from: Vec<_> = model
        .range::<[u8], _>((Bound::Included(probe), Bound::Unbounded))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        t.range(Bound::Included(probe), Bound::Unbounded, limit)
            .unwrap(),
        want_from
    );
    assert_eq!(
        t.last().unwrap(),
        model
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone()))
    );
}

/// Runs [`matches_the_model`] on `cases` random operation sequences, each on a fresh engine;
/// a failure panics with the shrunk sequence.
pub fn model_test(make: impl Fn() -> EngineFixture, cases: u32) {
    let config = Config {
        cases,
        // Shrunk failures are kept as named regression cases by hand, not in files.
        failure_persistence: None,
        ..Config::default()
    };
    let strategy = (
        proptest::collection::vec(model_op(), 0..40),
        small_key(),
        0usize..6,
    );
    TestRunner::new(config)
        .run(&strategy, |(ops, probe, limit)| {
            matches_the_model(&*make().engine, &ops, &probe, limit);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("the engine disagrees with the model: {e}"));
}
