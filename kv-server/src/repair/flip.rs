//! The corruption fault (`kv chaos corrupt`): flips one byte inside stored records of a stopped
//! node's data directory, opened with the storage engine and written back through it. This
//! models corruption that got past the storage engine's own checks (bad memory, a bug) — exactly
//! what each record's crc32 must catch. Bytes flipped at random in sled's files would instead be
//! caught by sled itself (a node that does not start), a different failure.
//!
//! The flip XORs one byte with a non-zero mask: a burst of at most 8 bits, which crc32 always
//! detects, so every flipped record is reported as corrupt on its next read.

use crate::ap::store::ApStore;
use crate::cp::group::META_GROUP;
use crate::cp::keys::{data_key, tree_name, DATA_END};
use crate::cp::state_machine::keyspace_key;
use crate::storage::record::{self, RecordTree};
use crate::storage::{Engine, StorageError};
use crate::types::{KeyspaceDef, Mode};
use std::ops::Bound;
use std::sync::Arc;

/// Most records one `flip_random` call flips.
pub const MAX_FLIPS: usize = 10_000;

/// Which records to flip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These (keyspace name, key) pairs.
    Keys(Vec<(String, Vec<u8>)>),
    /// `count` user records chosen from every keyspace by a generator seeded with `seed`.
    Random {
        /// How many (at most `MAX_FLIPS`).
        count: usize,
        /// The seed: the same seed over the same data flips the same records.
        seed: u64,
    },
}

/// One record that was flipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flipped {
    /// Keyspace name.
    pub keyspace: String,
    /// `cp` or `ap`.
    pub mode: &'static str,
    /// The user key, lossily printed.
    pub key: String,
    /// The storage tree that holds it.
    pub tree: String,
    /// Offset of the flipped byte in the stored record.
    pub offset: usize,
}

/// Why the fault could not be applied (nothing was flipped).
#[derive(Debug, thiserror::Error)]
pub enum FlipError {
    /// The storage engine failed (or the directory is in use by a running node).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A named keyspace does not exist in this node's metadata.
    #[error("no keyspace {name:?} in {location}; keyspaces there: {known}")]
    UnknownKeyspace {
        /// The name asked for.
        name: String,
        /// The data directory.
        location: String,
        /// The keyspaces it knows.
        known: String,
    },
    /// A named key has no record on this node.
    #[error("node data in {location} holds no record of key {key:?} in keyspace {keyspace} (it may not be one of this key's replicas)")]
    NoRecord {
        /// The keyspace.
        keyspace: String,
        /// The key.
        key: String,
        /// The data directory.
        location: String,
    },
    /// More records asked for than the bound.
    #[error("--count {count} is over the limit of {MAX_FLIPS} records")]
    TooMany {
        /// What was asked.
        count: usize,
    },
}

/// One stored user record: where it is and which keyspace it belongs to.
struct Candidate {
    ks: KeyspaceDef,
    tree: String,
    storage_key: Vec<u8>,
    user_key: Vec<u8>,
}

/// The keyspaces this node knows: the built-in ones and those in the metadata group's records.
pub fn keyspaces(engine: &Arc<dyn Engine>) -> Result<Vec<KeyspaceDef>, StorageError> {
    let mut out = KeyspaceDef::builtin();
    let sm = RecordTree::new(
        engine.open_tree(&tree_name(META_GROUP, "sm"))?,
        engine.location(),
    );
    let tree = sm.raw().clone();
    let start = data_key(&keyspace_key(""));
    for (k, v) in tree.range(
        Bound::Included(&start),
        Bound::Excluded(DATA_END),
        MAX_FLIPS,
    )? {
        if !k.starts_with(&start) {
            break;
        }
        let rec = record::decode(&v, &k, tree.name(), engine.location())?;
        if let Some(def) = rec
            .value
            .and_then(|v| crate::cp::codec::decode::<KeyspaceDef>("keyspace", &v).ok())
        {
            if !out.iter().any(|d| d.name == def.name) {
                out.push(def);
            }
        }
    }
    Ok(out)
}

/// Every stored user record of `ks` in this engine (for CP, in every group of the keyspace),
/// or only those of `key`.
fn records_of(
    engine: &Arc<dyn Engine>,
    ks: &KeyspaceDef,
    key: Option<&[u8]>,
) -> Result<Vec<Candidate>, StorageError> {
    let mut out = Vec::new();
    match ks.mode {
        Mode::Ap => {
            let name = ApStore::tree_name(ks.id);
            if !engine.tree_names()?.contains(&name) {
                return Ok(out);
            }
            let tree = engine.open_tree(&name)?;
            let mut after: Option<Vec<u8>> = None;
            loop {
                let lower = match &after {
                    Some(k) => Bound::Excluded(k.as_slice()),
                    None => Bound::Unbounded,
                };
                let page = tree.range(lower, Bound::Unbounded, 1024)?;
                let full = page.len() == 1024;
                for (k, _) in &page {
                    let user = k.get(4..).unwrap_or_default();
                    if key.is_none_or(|want| want == user) {
                        out.push(Candidate {
                            ks: ks.clone(),
                            tree: name.clone(),
                            storage_key: k.clone(),
                            user_key: user.to_vec(),
                        });
                    }
                }
                after = page.last().map(|(k, _)| k.clone());
                if !full {
                    break;
                }
            }
        }
        Mode::Cp => {
            for name in engine.tree_names()? {
                let Some(group) = name
                    .strip_prefix("raft/")
                    .and_then(|r| r.strip_suffix("/sm"))
                    .and_then(|g| g.parse::<u64>().ok())
                else {
                    continue;
                };
                // Every CP keyspace lives in the data groups, its keys prefixed with its id
                // (request-id records carry id 0, never a keyspace's).
                if group == META_GROUP {
                    continue;
                }
                let tree = engine.open_tree(&name)?;
                let prefix = data_key(&ks.id.to_be_bytes());
                let rows = match key {
                    Some(k) => {
                        let stored = [prefix.as_slice(), k].concat();
                        tree.get(&stored)?
                            .map(|v| vec![(stored, v)])
                            .unwrap_or_default()
                    }
                    None => crate::cp::keys::scan(&*tree, &prefix, Bound::Excluded(DATA_END))?
                        .into_iter()
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .collect(),
                };
                for (k, _) in rows {
                    let user = k[prefix.len()..].to_vec();
                    out.push(Candidate {
                        ks: ks.clone(),
                        tree: name.clone(),
                        storage_key: k,
                        user_key: user,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// splitmix64: a small seeded generator, so a seed always picks the same records and bytes.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Flips one byte of each selected record in `engine` (a stopped node's data, opened by the
/// caller) and flushes; returns what was flipped. Nothing is flipped when a named keyspace or
/// key is not found.
pub fn flip(engine: &Arc<dyn Engine>, selection: &Selection) -> Result<Vec<Flipped>, FlipError> {
    let known = keyspaces(engine)?;
    let find = |name: &str| {
        known
            .iter()
            .find(|k| k.name == name)
            .cloned()
            .ok_or_else(|| FlipError::UnknownKeyspace {
                name: name.to_string(),
                location: engine.location().to_string(),
                known: known
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    let (chosen, mut rng) = match selection {
        Selection::Keys(keys) => {
            let mut chosen = Vec::new();
            for (ks, key) in keys {
                let def = find(ks)?;
                let found = records_of(engine, &def, Some(key))?;
                if found.is_empty() {
                    return Err(FlipError::NoRecord {
                        keyspace: ks.clone(),
                        key: String::from_utf8_lossy(key).into_owned(),
                        location: engine.location().to_string(),
                    });
                }
                chosen.extend(found);
            }
            (chosen, 1)
        }
        Selection::Random { count, seed } => {
            if *count > MAX_FLIPS {
                return Err(FlipError::TooMany { count: *count });
            }
            let mut all = Vec::new();
            for ks in &known {
                all.extend(records_of(engine, ks, None)?);
            }
            let mut rng = *seed;
            let mut chosen = Vec::new();
            // A partial Fisher-Yates shuffle: `count` distinct records, in a seeded order.
            for i in 0..(*count).min(all.len()) {
                let j = i + (next(&mut rng) % (all.len() - i) as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(*count);
            chosen.append(&mut all);
            (chosen, rng)
        }
    };
    let mut flipped = Vec::new();
    for c in chosen {
        let tree = engine.open_tree(&c.tree)?;
        let Some(mut bytes) = tree.get(&c.storage_key)? else {
            continue;
        };
        if bytes.is_empty() {
            continue;
        }
        let offset = (next(&mut rng) % bytes.len() as u64) as usize;
        let mask = 1u8 << (next(&mut rng) % 8);
        bytes[offset] ^= mask;
        tree.insert(&c.storage_key, &bytes)?;
        flipped.push(Flipped {
            keyspace: c.ks.name.clone(),
            mode: match c.ks.mode {
                Mode::Cp => "cp",
                Mode::Ap => "ap",
            },
            key: String::from_utf8_lossy(&c.user_key).into_owned(),
            tree: c.tree,
            offset,
        });
    }
    engine.flush()?;
    Ok(flipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ap::lww::ApRecord;
    use crate::storage::memory::MemoryEngine;
    use crate::storage::record::StoredRecord;
    use crate::types::{Hlc, Version};

    fn engine_with_records() -> Arc<dyn Engine> {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let stamp = Arc::new(Hlc::default);
        let ap = ApStore::open(&engine, 2, Arc::new(|_: &[u8]| 0), stamp).unwrap();
        for k in ["a1", "a2"] {
            let r = ApRecord {
                key: k.into(),
                hlc: Hlc {
                    physical_ms: 1,
                    logical: 0,
                    node_id: 1,
                },
                value: Some(b"v".to_vec()),
            };
            ap.apply(&r, 0).unwrap();
        }
        let sm = RecordTree::new(
            engine.open_tree(&tree_name(1 << 32, "sm")).unwrap(),
            "memory",
        );
        let rec = StoredRecord {
            version: Version::Revision(3),
            value: Some(b"v".to_vec()),
        };
        sm.put(&data_key(&[&1u32.to_be_bytes()[..], b"c1"].concat()), &rec)
            .unwrap();
        // A request-id record (keyspace id 0) is never chosen.
        sm.put(&data_key(b"\0\0\0\0req/x"), &rec).unwrap();
        engine
    }

    #[test]
    fn random_flips_are_distinct_user_records_and_named_ones_must_exist() {
        let engine = engine_with_records();
        let flipped = flip(&engine, &Selection::Random { count: 10, seed: 5 }).unwrap();
        let mut keys: Vec<_> = flipped.iter().map(|f| (f.mode, f.key.clone())).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                ("ap", "a1".into()),
                ("ap", "a2".into()),
                ("cp", "c1".into())
            ]
        );
        let ap = ApStore::open(&engine, 2, Arc::new(|_: &[u8]| 0), Arc::new(Hlc::default)).unwrap();
        assert!(ap.is_corrupt(b"a1").unwrap() && ap.is_corrupt(b"a2").unwrap());

        let engine = engine_with_records();
        let named = Selection::Keys(vec![("cp".into(), b"c1".to_vec())]);
        assert_eq!(flip(&engine, &named).unwrap().len(), 1);
        let missing = Selection::Keys(vec![("ap".into(), b"nope".to_vec())]);
        assert!(matches!(
            flip(&engine, &missing),
            Err(FlipError::NoRecord { .. })
        ));
        let unknown = Selection::Keys(vec![("nope".into(), b"a1".to_vec())]);
        let err = flip(&engine, &unknown).unwrap_err().to_string();
        assert!(err.contains("cp, ap"), "{err}");
        assert!(matches!(
            flip(
                &engine,
                &Selection::Random {
                    count: MAX_FLIPS + 1,
                    seed: 1
                }
            ),
            Err(FlipError::TooMany { .. })
        ));
    }
}
