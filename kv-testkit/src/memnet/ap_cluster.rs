//! `ApCluster`: in-process clusters of AP engines for engine tests — one `ApEngine` per node on a
//! `MemNet`, each on its own `SimDisk` with its own `ManualClock`, over `StaticRing`, a ring
//! small enough to pick a key's preference list by hand. Faults are `MemNet` filters and node
//! states (down, suspected); background work is driven by the test, one call at a time.
//!
//! Invariant: a node's engine and its network endpoint are always the same value — `start`
//! replaces both, so a restarted node never answers with the engine of its previous life.

use super::{Fault, Filter, FilterId, Kinds, MemNet, MessageKind, Nodes};
use crate::clock::ManualClock;
use crate::disk::SimDisk;
use kv_server::ap::{ApConfig, ApEngine, ApRecord, ApRing};
use kv_server::types::{Hlc, KeyspaceDef, NodeId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where every node's clock starts, in milliseconds.
pub const START_MS: u64 = 1_000_000;

/// Partitions: the key's first byte mod `partitions`; the preference list of partition p is
/// every node, rotated left by p.
pub struct StaticRing {
    /// The nodes, in the order of partition 0's preference list.
    pub nodes: Vec<NodeId>,
    /// Number of partitions Q.
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

/// Filters the cluster installed, so that undoing one fault leaves the others in place.
#[derive(Default)]
struct Installed {
    /// Write refusals, per refusing node.
    refusals: BTreeMap<NodeId, FilterId>,
    /// Both directions of every partition.
    partitions: Vec<FilterId>,
}

/// An in-process AP cluster (see the module doc).
pub struct ApCluster {
    /// The network every node is on.
    pub net: Arc<MemNet>,
    /// Each node's disk; replace one (and `start` the node) to give a node an empty disk.
    pub disks: BTreeMap<NodeId, SimDisk>,
    /// Each node's clock, all at `START_MS` at first.
    pub clocks: BTreeMap<NodeId, Arc<ManualClock>>,
    /// The ring every node uses.
    pub ring: Arc<StaticRing>,
    /// The keyspace the tests use: the built-in `ap` (N = 3).
    pub ks: KeyspaceDef,
    configure: fn(&mut ApConfig),
    engines: Mutex<BTreeMap<NodeId, ApEngine>>,
    installed: Mutex<Installed>,
}

impl ApCluster {
    /// Nodes 1..=`nodes`, one partition per node, each started with the default `ApConfig`
    /// changed by `configure`.
    pub fn new(nodes: u64, configure: fn(&mut ApConfig)) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let partitions = u32::try_from(nodes).expect("a test cluster has few nodes");
        let c = Self {
            net: MemNet::new(),
            disks: ids
                .iter()
                .map(|id| (*id, SimDisk::new(&format!("node-{id}"))))
                .collect(),
            clocks: ids
                .iter()
                .map(|id| (*id, ManualClock::new(START_MS)))
                .collect(),
            ring: Arc::new(StaticRing {
                nodes: ids.clone(),
                partitions,
            }),
            ks: KeyspaceDef::builtin().remove(1),
            configure,
            engines: Mutex::default(),
            installed: Mutex::default(),
        };
        for id in ids {
            c.start(id);
        }
        c
    }

    fn engines(&self) -> MutexGuard<'_, BTreeMap<NodeId, ApEngine>> {
        self.engines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn installed(&self) -> MutexGuard<'_, Installed> {
        self.installed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (Re)starts node `id` on a fresh mount of its disk (after a `SimDisk::crash`, only what
    /// was flushed is there) and puts it back on the network, up.
    pub fn start(&self, id: NodeId) -> ApEngine {
        let mut config = ApConfig::new(id);
        (self.configure)(&mut config);
        let engine = ApEngine::open(
            config,
            Arc::new(self.disks[&id].open()),
            self.clocks[&id].clone(),
            self.net.ap_transport(id),
            self.net.liveness(id),
            self.ring.clone(),
        )
        .expect("engine opens");
        self.net.add_ap(id, Arc::new(engine.clone()));
        self.engines().insert(id, engine.clone());
        self.net.set_down(id, false);
        engine
    }

    /// Node `id`'s engine (also while it is down: tests read what a killed node kept).
    pub fn node(&self, id: NodeId) -> ApEngine {
        self.engines()[&id].clone()
    }

    /// Makes node `id` unreachable, as a killed process; its engine and disk stay as they are.
    pub fn kill(&self, id: NodeId) {
        self.net.set_down(id, true);
    }

    /// Makes a killed node reachable again, with the engine it had.
    pub fn revive(&self, id: NodeId) {
        self.net.set_down(id, false);
    }

    /// Makes every node report `id` as down (`true`) although it still answers.
    pub fn suspect(&self, id: NodeId, suspected: bool) {
        self.net.suspect(id, suspected);
    }

    /// Makes `id` answer every replica write with an error without storing it (`true`), or
    /// stop; liveness keeps reporting it alive.
    pub fn refuse_writes(&self, id: NodeId, refuse: bool) {
        let mut installed = self.installed();
        if let Some(old) = installed.refusals.remove(&id) {
            self.net.remove_filter(old);
        }
        if refuse {
            let filter = self.net.refuse(id, Kinds::Only(MessageKind::ApWrite));
            installed.refusals.insert(id, filter);
        }
    }

    /// Makes every answer from `id` vanish (its requests are carried out; liveness still
    /// reports it alive): callers time out.
    pub fn hang(&self, id: NodeId) {
        self.net.hang(id);
    }

    /// Drops every message between the two sides, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut installed = self.installed();
        for (from, to) in [(a, b), (b, a)] {
            let cut = Filter::between(Nodes::of(from), Nodes::of(to), Fault::Drop);
            installed.partitions.push(self.net.add_filter(cut));
        }
    }

    /// Removes every partition (refusals and hangs stay).
    pub fn heal(&self) {
        for id in std::mem::take(&mut self.installed().partitions) {
            self.net.remove_filter(id);
        }
    }

    /// The preference list of `key`.
    pub fn pref(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring.preference_list(self.ring.partition_for_key(key))
    }

    /// What `node` stores locally for `key` (tombstones included).
    pub fn local(&self, node: NodeId, key: &[u8]) -> Option<ApRecord> {
        self.node(node)
            .read_replica(self.ks.id, key)
            .expect("local replica read")
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
