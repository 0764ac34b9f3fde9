//! Tests of the background tasks as a whole (`spawn_background`), on tokio's paused clock: each
//! job runs on its own, so a hung anti-entropy round does not hold up hint replay, and aborting
//! the one handle stops every job.

use super::engine::{ApConfig, ApEngine};
use super::error::TransportError;
use super::lww::ApRecord;
use super::seams::{ApTransport, Liveness};
use super::testkit::{rec, ManualClock, StaticRing};
use crate::storage::memory::MemoryEngine;
use crate::types::{KeyspaceDef, NodeId};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longer than any wait in these tests: a Merkle call stays hung (not timed out) throughout.
const MERKLE_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// How long a test waits for a condition, in paused (simulated) time: many replay periods.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a waiting test checks its condition, in paused time.
const POLL: Duration = Duration::from_millis(10);

/// A network whose writes and reads reach the other engines at once and whose Merkle calls
/// never answer, as when a peer hangs in the middle of an anti-entropy exchange.
#[derive(Default)]
struct HungMerkleNet {
    engines: Mutex<BTreeMap<NodeId, ApEngine>>,
    /// Merkle calls started (none ever finishes).
    merkle_calls: AtomicUsize,
}

struct Link(Arc<HungMerkleNet>);

impl Link {
    fn engine(&self, to: NodeId) -> Result<ApEngine, TransportError> {
        self.0
            .engines
            .lock()
            .unwrap()
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable {
                node: to,
                reason: "no such node".into(),
            })
    }

    fn hang<T: Send + 'static>(&self) -> BoxFuture<'static, Result<T, TransportError>> {
        self.0.merkle_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(futures::future::pending())
    }
}

fn remote(node: NodeId) -> impl Fn(super::error::ApError) -> TransportError {
    move |e| TransportError::Remote {
        node,
        message: e.to_string(),
    }
}

impl ApTransport for Link {
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let r = self.engine(to).and_then(|e| {
            e.apply_replica(keyspace_id, record, hint_for)
                .map(|_| ())
                .map_err(remote(to))
        });
        Box::pin(async move { r })
    }
    fn read(
        &self,
        to: NodeId,
        keyspace_id: u32,
        key: Vec<u8>,
    ) -> BoxFuture<'static, Result<Option<ApRecord>, TransportError>> {
        let r = self
            .engine(to)
            .and_then(|e| e.read_replica(keyspace_id, &key).map_err(remote(to)));
        Box::pin(async move { r })
    }
    fn merkle_leaves(
        &self,
        _to: NodeId,
        _keyspace_id: u32,
        _partition: u32,
    ) -> BoxFuture<'static, Result<Vec<u64>, TransportError>> {
        self.hang()
    }
    fn merkle_range(
        &self,
        _to: NodeId,
        _keyspace_id: u32,
        _partition: u32,
        _leaves: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ApRecord>, TransportError>> {
        self.hang()
    }
}

struct AllAlive;

impl Liveness for AllAlive {
    fn is_alive(&self, _node: NodeId) -> bool {
        true
    }
}

/// Three nodes that replicate every partition of keyspace `ap`, over `HungMerkleNet`.
fn cluster() -> (Arc<HungMerkleNet>, KeyspaceDef) {
    let net = Arc::new(HungMerkleNet::default());
    let ring = Arc::new(StaticRing {
        nodes: vec![1, 2, 3],
        partitions: 3,
    });
    for id in [1, 2, 3] {
        let mut config = ApConfig::new(id);
        config.merkle_timeout_ms = MERKLE_TIMEOUT_MS;
        let engine = ApEngine::open(
            config,
            Arc::new(MemoryEngine::new()),
            ManualClock::new(1_000_000),
            Arc::new(Link(net.clone())),
            Arc::new(AllAlive),
            ring.clone(),
        )
        .expect("engine opens");
        net.engines.lock().unwrap().insert(id, engine);
    }
    (net, KeyspaceDef::builtin().remove(1))
}

/// Waits in paused time until `done()` holds; fails after `DEADLINE`.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let reached = tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{what}: not reached within {DEADLINE:?}");
}

#[tokio::test(start_paused = true)]
async fn hint_replay_proceeds_while_an_anti_entropy_round_is_blocked() {
    let (net, ks) = cluster();
    let n1 = net.engines.lock().unwrap()[&1].clone();
    let keyspaces = ks.clone();
    let task = n1.spawn_background(Arc::new(move || vec![keyspaces.clone()]));
    // The first anti-entropy round starts at once and hangs in its first Merkle call.
    wait_for("anti-entropy blocked in a Merkle call", || {
        net.merkle_calls.load(Ordering::SeqCst) == 1
    })
    .await;

    // Only now does node 1 take a hint for node 2: a replay that had to wait for the
    // anti-entropy round would not deliver it before the Merkle timeout, an hour away.
    let record = rec("k", 1_000_000, Some("v"));
    n1.apply_replica(ks.id, record.clone(), Some(2)).unwrap();
    assert_eq!(n1.hint_counts(), BTreeMap::from([(2, 1)]));
    wait_for("the hint delivered", || n1.hint_counts().is_empty()).await;
    let n2 = net.engines.lock().unwrap()[&2].clone();
    assert_eq!(n2.read_replica(ks.id, b"k").unwrap(), Some(record));
    assert_eq!(
        net.merkle_calls.load(Ordering::SeqCst),
        1,
        "the anti-entropy round is still in its first call"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn aborting_the_background_handle_stops_every_job() {
    let (net, ks) = cluster();
    let n1 = net.engines.lock().unwrap()[&1].clone();
    let keyspaces = ks.clone();
    let task = n1.spawn_background(Arc::new(move || vec![keyspaces.clone()]));
    wait_for("anti-entropy blocked in a Merkle call", || {
        net.merkle_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // Many replay periods pass (paused time jumps ahead): no replay task is left to deliver.
    n1.apply_replica(ks.id, rec("k", 1_000_000, Some("v")), Some(2))
        .unwrap();
    let replay_period = Duration::from_millis(ApConfig::new(1).hint_replay_interval_ms);
    tokio::time::sleep(10 * replay_period).await;
    assert_eq!(n1.hint_counts(), BTreeMap::from([(2, 1)]));
    assert_eq!(net.merkle_calls.load(Ordering::SeqCst), 1);
}
