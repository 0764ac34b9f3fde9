//! Snapshot bodies in chunks: a body several chunks long reads back as written from any
//! offset, records round-trip through the body format, damage is detected, and slots are
//! removed with all their chunks.

use super::*;
use crate::storage::memory::MemoryEngine;
use crate::storage::Engine;

fn tree() -> Arc<dyn Tree> {
    MemoryEngine::new().open_tree("raft/1/snap").unwrap()
}

/// Every stored value of the tree, by key (to check no value is larger than a chunk).
fn values(tree: &dyn Tree) -> Vec<(Vec<u8>, usize)> {
    tree.range(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.len()))
        .collect()
}

#[test]
fn a_body_of_several_chunks_is_stored_in_chunks_and_reads_back_from_any_offset() {
    let t = tree();
    let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 12_345))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut f = SnapshotFile::create(t.clone()).unwrap();
    // Written in odd pieces, as openraft's receiver does with network chunks.
    for piece in data.chunks(300_001) {
        f.write_all(piece).unwrap();
    }
    f.save().unwrap();
    assert_eq!(f.len(), data.len() as u64);
    assert!(values(&*t).iter().all(|(_, len)| *len <= CHUNK_BYTES));
    assert_eq!(values(&*t).iter().filter(|(k, _)| k[0] == b'k').count(), 3);

    let mut r = SnapshotFile::open(t.clone(), f.slot()).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert!(back == data, "read back differs");
    // Seek across a chunk boundary, as openraft's sender does per network chunk.
    let at = CHUNK_BYTES as u64 - 10;
    r.seek(SeekFrom::Start(at)).unwrap();
    let mut piece = [0u8; 20];
    r.read_exact(&mut piece).unwrap();
    assert_eq!(&piece[..], &data[at as usize..at as usize + 20]);
    assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), data.len() as u64);
    // Overwriting at an offset (a resent network chunk) changes only those bytes.
    let mut w = SnapshotFile::open(t.clone(), f.slot()).unwrap();
    w.seek(SeekFrom::Start(at)).unwrap();
    w.write_all(&[7u8; 20]).unwrap();
    w.save().unwrap();
    let mut again = Vec::new();
    SnapshotFile::open(t.clone(), f.slot())
        .unwrap()
        .read_to_end(&mut again)
        .unwrap();
    assert_eq!(again.len(), data.len());
    assert_eq!(&again[at as usize..at as usize + 20], &[7u8; 20]);

    remove_slot(&*t, f.slot()).unwrap();
    assert!(
        values(&*t).iter().all(|(k, _)| k == KEY_NEXT_SLOT),
        "{:?}",
        values(&*t)
    );
}

#[test]
fn records_round_trip_and_a_damaged_body_is_refused() {
    let t = tree();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
        .map(|i| (format!("key-{i}").into_bytes(), vec![i as u8; 50_000]))
        .collect();
    let mut f = SnapshotFile::create(t.clone()).unwrap();
    let n = write_body(&mut f, records.clone().into_iter().map(Ok)).unwrap();
    assert_eq!(n, 50);
    let mut seen = Vec::new();
    for_each_record(&mut f, |k, v| -> Result<(), ()> {
        seen.push((k, v));
        Ok(())
    })
    .unwrap();
    assert!(seen == records);

    // Truncated: the end mark and count are missing.
    let len = f.len();
    let mut cut = SnapshotFile::create(t.clone()).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    std::io::copy(&mut (&mut f).take(len - 12), &mut cut).unwrap();
    cut.save().unwrap();
    let err = for_each_record(&mut cut, |_, _| -> Result<(), ()> { Ok(()) }).unwrap_err();
    assert!(matches!(err, Walk::Bad(_)), "{err:?}");

    // A length far beyond any record: refused before allocating it.
    let mut huge = SnapshotFile::create(t.clone()).unwrap();
    huge.write_all(&[SNAPSHOT_FORMAT]).unwrap();
    huge.write_all(&(MAX_SNAPSHOT_ITEM_BYTES + 1).to_be_bytes())
        .unwrap();
    huge.save().unwrap();
    let err = for_each_record(&mut huge, |_, _| -> Result<(), ()> { Ok(()) }).unwrap_err();
    assert!(matches!(err, Walk::Bad(_)), "{err:?}");

    // Slots older than the kept ones go; a later one (still being written) stays.
    let later = SnapshotFile::create(t.clone()).unwrap();
    retain_slots(&*t, &[cut.slot(), huge.slot()]).unwrap();
    let slots: Vec<Vec<u8>> = values(&*t)
        .into_iter()
        .filter(|(k, _)| k[0] == b's')
        .map(|(k, _)| k)
        .collect();
    let want: Vec<Vec<u8>> = [cut.slot(), huge.slot(), later.slot()]
        .into_iter()
        .map(|s| slot_key(b's', s))
        .collect();
    assert_eq!(slots, want);
    assert!(values(&*t)
        .iter()
        .all(|(k, _)| k[0] != b'k' || k[1..9] != f.slot().to_be_bytes()));
}
