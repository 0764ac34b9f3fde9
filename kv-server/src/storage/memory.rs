//! In-memory engine: a `BTreeMap` per tree behind a mutex. Used by tests and simulations, where
//! sled's background threads would break determinism.

use super::engine::{BatchOp, Engine, Tree};
use super::error::Result;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An engine that keeps everything in memory; cloning shares the data (a simulated disk that
/// survives a simulated crash when the clone is kept outside the host).
#[derive(Clone, Default)]
pub struct MemoryEngine {
    trees: Arc<Mutex<BTreeMap<String, Arc<MemoryTree>>>>,
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Engine for MemoryEngine {
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
        let mut trees = self.trees.lock().expect("memory engine lock poisoned");
        let tree = trees
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(MemoryTree {
                    name: name.to_string(),
                    map: Mutex::new(Map::new()),
                })
            })
            .clone();
        Ok(tree)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn location(&self) -> &str {
        "memory"
    }

    fn tree_names(&self) -> Result<Vec<String>> {
        let trees = self.trees.lock().expect("memory engine lock poisoned");
        Ok(trees.keys().cloned().collect())
    }
}

/// True when no key can lie in the range (start after end, or equal with one side excluded).
fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    use Bound::{Excluded, Included};
    match (start, end) {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) | (Excluded(s), Excluded(e)) => {
            s >= e
        }
        _ => false,
    }
}

/// One in-memory tree.
pub struct MemoryTree {
    name: String,
    map: Mutex<Map>,
}

impl MemoryTree {
    fn map(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().expect("memory tree lock poisoned")
    }
}

impl Tree for MemoryTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.map().remove(key);
        Ok(())
    }

    fn apply_batch(&self, ops: &[BatchOp]) -> Result<()> {
        let mut map = self.map();
        for op in ops {
            match op {
                BatchOp::Insert(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                BatchOp::Remove(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if range_is_empty(start, end) {
            // BTreeMap::range panics on an inverted range; an empty answer is what sled gives.
            return Ok(Vec::new());
        }
        let map = self.map();
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .map()
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn clear(&self) -> Result<()> {
        self.map().clear();
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_ranges_are_empty_not_a_panic() {
        let engine = MemoryEngine::new();
        let t = engine.open_tree("t").unwrap();
        t.insert(b"b", b"1").unwrap();
        let r = t
            .range(Bound::Included(b"c"), Bound::Included(b"a"), 10)
            .unwrap();
        assert!(r.is_empty());
        let r = t
            .range(Bound::Excluded(b"b"), Bound::Excluded(b"b"), 10)
            .unwrap();
        assert!(r.is_empty());
        let r = t
            .range(Bound::Included(b"b"), Bound::Included(b"b"), 10)
            .unwrap();
        assert_eq!(r.len(), 1);
    }
}
