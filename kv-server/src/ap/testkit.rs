//! Test harness for the AP engine: a settable clock, an in-memory network of `ApEngine`s that
//! can kill nodes and cut links (TiKV-style transport filters), a liveness fake that sees exactly
//! what the network lets through, a small static ring, and a disk that keeps only what was
//! flushed (`LossyDisk`).

use super::engine::{ApConfig, ApEngine, ApRing, ApTransport, Liveness, TransportError};
use super::lww::ApRecord;
use crate::clock::Clock;
use crate::storage::memory::MemoryEngine;
use crate::storage::{BatchOp, Engine, Result as StorageResult, Tree};
use crate::types::{Hlc, KeyspaceDef, NodeId};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A clock the test sets by hand.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn set_skew_ms(&self, _skew_ms: i64) {
        // Tests move this clock explicitly; skew has no meaning here.
    }
}

/// Partitions: key's first byte mod `partitions`; preference list of partition p: all nodes
/// rotated by p.
pub struct StaticRing {
    pub nodes: Vec<NodeId>,
    pub partitions: u32,
}

impl ApRing for StaticRing {
    fn partition_for_key(&self, key: &[u8]) -> u32 {
        u32::from(key.first().copied().unwrap_or(0)) % self.partitions
    }
    fn partition_count(&self) -> u32 {
        self.partitions
    }
    fn preference_list(&self, partition: u32) -> Vec<NodeId> {
        let mut v = self.nodes.clone();
        let len = v.len();
        v.rotate_left(partition as usize % len);
        v
    }
}

/// The shared in-memory network.
#[derive(Default)]
pub struct MemNet {
    engines: Mutex<BTreeMap<NodeId, ApEngine>>,
    killed: Mutex<BTreeSet<NodeId>>,
    /// Cut links, stored both ways.
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
    /// Nodes the liveness fake reports down although the network reaches them.
    suspected: Mutex<BTreeSet<NodeId>>,
    /// Nodes that answer every write with an error while liveness still reports them alive.
    refuse_writes: Mutex<BTreeSet<NodeId>>,
    /// Nodes whose answers never come back (the request itself is carried out: a lost ack).
    hang: Mutex<BTreeSet<NodeId>>,
    /// Records carried by `merkle_range` answers.
    pub range_records: AtomicUsize,
    /// Writes delivered (replica, hint, repair, replay and anti-entropy pushes).
    pub writes: AtomicUsize,
}

impl MemNet {
    fn hangs(&self, to: NodeId) -> bool {
        self.hang.lock().unwrap().contains(&to)
    }

    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        !self.killed.lock().unwrap().contains(&to)
            && !self.cut.lock().unwrap().contains(&(from, to))
    }

    fn engine(&self, from: NodeId, to: NodeId) -> Result<ApEngine, TransportError> {
        if !self.reachable(from, to) {
            return Err(TransportError::Unreachable {
                node: to,
                reason: "link cut or node killed by the test".into(),
            });
        }
        self.engines
            .lock()
            .unwrap()
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable {
                node: to,
                reason: "no such node".into(),
            })
    }
}

/// One node's handle on the network.
pub struct MemTransport {
    from: NodeId,
    net: Arc<MemNet>,
}

fn remote(node: NodeId) -> impl Fn(super::engine::ApError) -> TransportError {
    move |e| TransportError::Remote {
        node,
        message: e.to_string(),
    }
}

impl MemTransport {
    /// The answer as a future, or a future that never completes if `to` hangs.
    fn answer<T: Send + 'static>(
        &self,
        to: NodeId,
        r: Result<T, TransportError>,
    ) -> BoxFuture<'static, Result<T, TransportError>> {
        if self.net.hangs(to) {
            Box::pin(futures::future::pending())
        } else {
            Box::pin(async move { r })
        }
    }
}

impl ApTransport for MemTransport {
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let refused = self.net.refuse_writes.lock().unwrap().contains(&to);
        let r = self.net.engine(self.from, to).and_then(|e| {
            if refused {
                return Err(TransportError::Remote {
                    node: to,
                    message: "write refused by the test".into(),
                });
            }
            e.apply_replica(keyspace_id, record, hint_for)
                .map(|_| ())
                .map_err(remote(to))
        });
        if r.is_ok() {
            self.net.writes.fetch_add(1, Ordering::SeqCst);
        }
        self.answer(to, r)
    }
    fn read(
        &self,
        to: NodeId,
        keyspace_id: u32,
        key: Vec<u8>,
    ) -> BoxFuture<'static, Result<Option<ApRecord>, TransportError>> {
        let r = self
            .net
            .engine(self.from, to)
            .and_then(|e| e.read_replica(keyspace_id, &key).map_err(remote(to)));
        self.answer(to, r)
    }
    fn merkle_leaves(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
    ) -> BoxFuture<'static, Result<Vec<u64>, TransportError>> {
        let r = self
            .net
            .engine(self.from, to)
            .and_then(|e| e.merkle_leaves(keyspace_id, partition).map_err(remote(to)));
        Box::pin(async move { r })
    }
    fn merkle_range(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
        leaves: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ApRecord>, TransportError>> {
        let r = self.net.engine(self.from, to).and_then(|e| {
            e.merkle_range(keyspace_id, partition, &leaves)
                .map_err(remote(to))
        });
        if let Ok(records) = &r {
            self.net
                .range_records
                .fetch_add(records.len(), Ordering::SeqCst);
        }
        Box::pin(async move { r })
    }
}

/// A perfect failure detector from one node's point of view: alive iff reachable and not
/// explicitly suspected.
pub struct NetLiveness {
    from: NodeId,
    net: Arc<MemNet>,
}

impl Liveness for NetLiveness {
    fn is_alive(&self, node: NodeId) -> bool {
        node == self.from
            || (self.net.reachable(self.from, node)
                && !self.net.suspected.lock().unwrap().contains(&node))
    }
}

/// An in-process cluster: one `ApEngine` and one `MemoryEngine` ("disk") per node.
pub struct Cluster {
    pub net: Arc<MemNet>,
    pub disks: BTreeMap<NodeId, MemoryEngine>,
    pub clocks: BTreeMap<NodeId, Arc<ManualClock>>,
    pub ring: Arc<StaticRing>,
    pub ks: KeyspaceDef,
    configure: fn(&mut ApConfig),
}

impl Cluster {
    /// `nodes` nodes 1..=nodes, one partition per node, keyspace `ap` (N=3), clocks at 1_000_000.
    pub fn new(nodes: u64, configure: fn(&mut ApConfig)) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let mut c = Self {
            net: Arc::new(MemNet::default()),
            disks: BTreeMap::new(),
            clocks: BTreeMap::new(),
            ring: Arc::new(StaticRing {
                nodes: ids.clone(),
                partitions: nodes as u32,
            }),
            ks: KeyspaceDef::builtin().remove(1),
            configure,
        };
        for id in ids {
            c.disks.insert(id, MemoryEngine::new());
            c.clocks.insert(id, ManualClock::new(1_000_000));
            c.start(id);
        }
        c
    }

    /// (Re)starts a node's engine over its existing disk.
    pub fn start(&self, id: NodeId) -> ApEngine {
        self.start_on(id, Arc::new(self.disks[&id].clone()))
    }

    /// (Re)starts a node's engine over `disk`.
    pub fn start_on(&self, id: NodeId, disk: Arc<dyn Engine>) -> ApEngine {
        let mut config = ApConfig::new(id);
        (self.configure)(&mut config);
        let engine = ApEngine::open(
            config,
            disk,
            self.clocks[&id].clone(),
            Arc::new(MemTransport {
                from: id,
                net: self.net.clone(),
            }),
            Arc::new(NetLiveness {
                from: id,
                net: self.net.clone(),
            }),
            self.ring.clone(),
        )
        .expect("engine opens");
        self.net.engines.lock().unwrap().insert(id, engine.clone());
        self.net.killed.lock().unwrap().remove(&id);
        engine
    }

    pub fn node(&self, id: NodeId) -> ApEngine {
        self.net.engines.lock().unwrap()[&id].clone()
    }

    pub fn kill(&self, id: NodeId) {
        self.net.killed.lock().unwrap().insert(id);
    }

    pub fn revive(&self, id: NodeId) {
        self.net.killed.lock().unwrap().remove(&id);
    }

    /// Makes every node report `id` as down (it still answers if called).
    pub fn suspect(&self, id: NodeId, suspected: bool) {
        let mut s = self.net.suspected.lock().unwrap();
        if suspected {
            s.insert(id);
        } else {
            s.remove(&id);
        }
    }

    /// Makes `id` fail every write sent to it (or stop failing).
    pub fn refuse_writes(&self, id: NodeId, refuse: bool) {
        let mut s = self.net.refuse_writes.lock().unwrap();
        if refuse {
            s.insert(id);
        } else {
            s.remove(&id);
        }
    }

    /// Makes every call to `id` hang (liveness still reports it alive).
    pub fn hang(&self, id: NodeId) {
        self.net.hang.lock().unwrap().insert(id);
    }

    /// Cuts every link between the two sides.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut cut = self.net.cut.lock().unwrap();
        for &x in a {
            for &y in b {
                cut.insert((x, y));
                cut.insert((y, x));
            }
        }
    }

    pub fn heal(&self) {
        self.net.cut.lock().unwrap().clear();
    }

    /// The preference list of `key`.
    pub fn pref(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring.preference_list(self.ring.partition_for_key(key))
    }

    /// What `node` stores locally for `key`.
    pub fn local(&self, node: NodeId, key: &[u8]) -> Option<ApRecord> {
        self.node(node).read_replica(self.ks.id, key).unwrap()
    }
}

/// A record of `key` written at physical time `t` by node 1 (`None` is a tombstone).
pub fn rec(key: &str, t: u64, value: Option<&str>) -> ApRecord {
    ApRecord {
        key: key.as_bytes().to_vec(),
        hlc: Hlc {
            physical_ms: t,
            logical: 0,
            node_id: 1,
        },
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// A disk that keeps only what was flushed: `crash()` gives the disk a restarted node finds.
/// Writes go to a live in-memory engine; a flush copies the live contents (of one tree, or of
/// all) to the durable copy.
#[derive(Clone, Default)]
pub struct LossyDisk {
    live: MemoryEngine,
    durable: Arc<Mutex<BTreeMap<String, Contents>>>,
    names: Arc<Mutex<BTreeSet<String>>>,
}

impl LossyDisk {
    fn persist(&self, name: &str) -> StorageResult<()> {
        let tree = self.live.open_tree(name)?;
        let contents = tree
            .range(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )?
            .into_iter()
            .collect();
        self.durable
            .lock()
            .unwrap()
            .insert(name.to_string(), contents);
        Ok(())
    }

    /// The disk after a crash: the flushed contents only.
    pub fn crash(&self) -> LossyDisk {
        let after = LossyDisk::default();
        for (name, contents) in self.durable.lock().unwrap().iter() {
            let tree = after.live.open_tree(name).unwrap();
            for (k, v) in contents {
                tree.insert(k, v).unwrap();
            }
            after.names.lock().unwrap().insert(name.clone());
        }
        *after.durable.lock().unwrap() = self.durable.lock().unwrap().clone();
        after
    }
}

impl Engine for LossyDisk {
    fn open_tree(&self, name: &str) -> StorageResult<Arc<dyn Tree>> {
        self.names.lock().unwrap().insert(name.to_string());
        Ok(Arc::new(LossyTree {
            inner: self.live.open_tree(name)?,
            disk: self.clone(),
        }))
    }
    fn flush(&self) -> StorageResult<()> {
        let names: Vec<String> = self.names.lock().unwrap().iter().cloned().collect();
        names.iter().try_for_each(|n| self.persist(n))
    }
    fn location(&self) -> &str {
        "lossy memory"
    }
}

/// A tree of a `LossyDisk`.
struct LossyTree {
    inner: Arc<dyn Tree>,
    disk: LossyDisk,
}

impl Tree for LossyTree {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.inner.insert(key, value)
    }
    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.inner.remove(key)
    }
    fn apply_batch(&self, ops: &[BatchOp]) -> StorageResult<()> {
        self.inner.apply_batch(ops)
    }
    fn range(
        &self,
        start: std::ops::Bound<&[u8]>,
        end: std::ops::Bound<&[u8]>,
        limit: usize,
    ) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.range(start, end, limit)
    }
    fn last(&self) -> StorageResult<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last()
    }
    fn clear(&self) -> StorageResult<()> {
        self.inner.clear()
    }
    fn flush(&self) -> StorageResult<()> {
        self.disk.persist(self.inner.name())
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}
