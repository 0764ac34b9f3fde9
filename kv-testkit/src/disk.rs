//! `SimDisk`: a simulated disk that loses every write not flushed when its node crashes — the
//! only way a test can catch a missing fsync.
//!
//! A `SimDisk` is the device; it outlives the processes that use it. `SimDisk::open` mounts it
//! as a `kv_server::storage::Engine` (a `SimEngine`), as a node does at start-up. Writes land
//! in a volatile layer that readers see at once; `Tree::flush` makes that tree's earlier writes
//! durable and `Engine::flush` every tree's — exactly what the storage trait promises and no
//! more (sled happens to flush the whole database on a tree flush; code must not rely on it).
//! `SimDisk::crash` is a power loss: everything not flushed is gone, and every engine and tree
//! handle mounted before it fails from then on (the process that held them is dead), so a
//! leftover task of the crashed node cannot write into its next life. Mount again to restart.
//!
//! Invariants: a batch is all-or-nothing, also across a crash; after a crash the disk holds
//! exactly the flushed writes (or, with `crash_keeping`, the flushed writes plus the oldest
//! unflushed ones, in write order — what a disk that persisted some of its cache would hold).

use kv_server::storage::{BatchOp, Engine, Result, StorageError, Tree};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write waiting for a flush, in write order.
#[derive(Debug, Clone)]
enum Pending {
    /// Inserts and removes applied together (a single insert or remove is a batch of one).
    Batch(Vec<BatchOp>),
    /// Every entry of the tree removed.
    Clear,
}

impl Pending {
    fn apply_to(&self, map: &mut Map) {
        match self {
            Pending::Batch(ops) => {
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
            }
            Pending::Clear => map.clear(),
        }
    }
}

/// Counters a test can assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Flush calls (tree or engine) that made at least one write durable.
    pub flushes: u64,
    /// Crashes so far.
    pub crashes: u64,
    /// Writes (inserts, removes, batches, clears) that the last crash discarded.
    pub lost_in_last_crash: usize,
}

#[derive(Default)]
struct DiskState {
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    /// What readers see: durable contents with every pending write applied.
    current: BTreeMap<String, Map>,
    /// What survives a crash.
    durable: BTreeMap<String, Map>,
    /// Unflushed writes of every tree, oldest first.
    pending: Vec<(String, Pending)>,
    stats: DiskStats,
}

impl DiskState {
    fn write(&mut self, tree: &str, write: Pending) {
        write.apply_to(self.current.entry(tree.to_string()).or_default());
        self.pending.push((tree.to_string(), write));
    }

    /// Makes the pending writes of `tree` (every tree when `None`) durable, in write order.
    fn flush(&mut self, tree: Option<&str>) {
        let (flushed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(name, _)| tree.is_none_or(|t| t == name));
        self.pending = kept;
        if flushed.is_empty() {
            return;
        }
        for (name, write) in flushed {
            write.apply_to(self.durable.entry(name).or_default());
        }
        self.stats.flushes += 1;
    }

    fn crash(&mut self, keep_oldest: usize) {
        let pending = std::mem::take(&mut self.pending);
        let kept = keep_oldest.min(pending.len());
        for (name, write) in &pending[..kept] {
            write.apply_to(self.durable.entry(name.clone()).or_default());
        }
        self.current = self.durable.clone();
        self.generation += 1;
        self.stats.crashes += 1;
        self.stats.lost_in_last_crash = pending.len() - kept;
    }
}

/// A simulated disk; cloning shares it (keep a clone outside the node to crash and remount it).
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    location: Arc<str>,
}

impl Default for SimDisk {
    fn default() -> Self {
        Self::new("simdisk")
    }
}

impl SimDisk {
    /// An empty disk; `location` is what its engines report (and errors name).
    pub fn new(location: &str) -> Self {
        Self {
            state: Arc::default(),
            location: location.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A test thread that panicked mid-write poisons the lock; the state is still whole
        // (every write is applied under one lock hold), so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts the disk as a storage engine, as a node starting on it would.
    pub fn open(&self) -> SimEngine {
        SimEngine {
            disk: self.clone(),
            generation: self.lock().generation,
        }
    }

    /// A power loss: every unflushed write is lost and every mounted engine dies.
    pub fn crash(&self) {
        self.lock().crash(0);
    }

    /// A power loss after which the disk kept the `n` oldest unflushed writes (in write order
    /// across trees; a batch counts as one write) and lost the rest.
    pub fn crash_keeping(&self, n: usize) {
        self.lock().crash(n);
    }

    /// Writes not yet flushed.
    pub fn unflushed_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// Flushes, crashes and losses so far.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Runs `f` on the live state, or fails if `generation` has crashed.
    fn with<T>(&self, generation: u64, f: impl FnOnce(&mut DiskState) -> T) -> Result<T> {
        let mut state = self.lock();
        if state.generation != generation {
            return Err(StorageError::Engine {
                location: self.location.to_string(),
                message: format!(
                    "the simulated disk crashed after this handle was mounted (mount {generation}, \
                     disk now at {}): the process holding it is dead",
                    state.generation
                ),
            });
        }
        Ok(f(&mut state))
    }
}

/// One mount of a `SimDisk`: the `Engine` a node runs on until the disk crashes.
#[derive(Clone)]
pub struct SimEngine {
    disk: SimDisk,
    generation: u64,
}

impl SimEngine {
    /// The disk this engine is mounted from.
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }
}

impl Engine for SimEngine {
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
        self.disk.with(self.generation, |s| {
            s.current.entry(name.to_string()).or_default();
        })?;
        Ok(Arc::new(SimTree {
            engine: self.clone(),
            name: name.to_string(),
        }))
    }

    fn flush(&self) -> Result<()> {
        self.disk.with(self.generation, |s| s.flush(None))
    }

    fn location(&self) -> &str {
        &self.disk.location
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

/// One tree of a mounted `SimDisk`.
pub struct SimTree {
    engine: SimEngine,
    name: String,
}

impl SimTree {
    fn read<T>(&self, f: impl FnOnce(&Map) -> T) -> Result<T> {
        let empty = Map::new();
        self.engine.disk.with(self.engine.generation, |s| {
            f(s.current.get(&self.name).unwrap_or(&empty))
        })
    }

    fn write(&self, write: Pending) -> Result<()> {
        self.engine
            .disk
            .with(self.engine.generation, |s| s.write(&self.name, write))
    }
}

impl Tree for SimTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|m| m.get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(Pending::Batch(vec![BatchOp::Insert(
            key.to_vec(),
            value.to_vec(),
        )]))
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.write(Pending::Batch(vec![BatchOp::Remove(key.to_vec())]))
    }

    fn apply_batch(&self, ops: &[BatchOp]) -> Result<()> {
        self.write(Pending::Batch(ops.to_vec()))
    }

    fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if range_is_empty(start, end) {
            // BTreeMap::range panics on an inverted range; the trait answers empty.
            return Ok(Vec::new());
        }
        self.read(|m| {
            m.range::<[u8], _>((start, end))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn last(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.read(|m| m.iter().next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn clear(&self) -> Result<()> {
        self.write(Pending::Clear)
    }

    fn flush(&self) -> Result<()> {
        self.engine
            .disk
            .with(self.engine.generation, |s| s.flush(Some(&self.name)))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
