//! `ApEngine`: the AP coordinator (put/get/delete with sloppy quorums, hinted handoff and read
//! repair) and the replica side (apply, read, Merkle leaves and ranges), plus the background work
//! (hint replay, anti-entropy, tombstone purge) as methods a driver calls.
//!
//! Invariants: a write carries one HLC timestamp chosen by its coordinator and every replica,
//! hint and repair merges it with LWW, so delivery order and duplicates never matter; a write is
//! acknowledged after W acks where a fallback node's durable hint counts as an ack (sloppy
//! quorum); a hint goes only to a node beyond the first N of the preference list and names the
//! intended owner; a failed or timed-out write is *indeterminate* (it may have applied on the
//! replicas that answered). Every remote call has a timeout; every loop a named bound.

use super::hints::{HintError, HintStore, DEFAULT_HINT_MAX_AGE_MS, MAX_HINTS_PER_NODE};
use super::hlc::{HlcClock, DEFAULT_MAX_SKEW_MS};
use super::lww::{self, ApRecord};
use super::merkle;
use super::store::{ApStore, DEFAULT_TOMBSTONE_GRACE_MS};
use crate::clock::Clock;
use crate::storage::{Engine, StorageError};
use crate::types::{Hlc, KeyspaceDef, Mode, NodeId, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default time a replica has to acknowledge a write.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 1_000;
/// Default time a replica has to answer a read.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 1_000;
/// Default time a peer has to answer a Merkle leaves or range request.
pub const DEFAULT_MERKLE_TIMEOUT_MS: u64 = 5_000;
/// Default period of hint replay.
pub const DEFAULT_HINT_REPLAY_INTERVAL_MS: u64 = 1_000;
/// Default period of one anti-entropy round over this node's partitions.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL_MS: u64 = 60_000;
/// Default period of tombstone purging.
pub const DEFAULT_PURGE_INTERVAL_MS: u64 = 60 * 60 * 1000;
/// Most hints sent to one owner per replay round.
pub const HINT_REPLAY_BATCH: usize = 256;
/// Most differing leaves fetched in one Merkle range call.
pub const MERKLE_LEAVES_PER_RANGE_CALL: usize = 32;
/// Most concurrent pushes (writes) to a peer during anti-entropy.
pub const ANTI_ENTROPY_PUSH_CONCURRENCY: usize = 16;

/// Errors of the AP engine.
#[derive(Debug, thiserror::Error)]
pub enum ApError {
    /// Fewer replicas answered than the consistency level needs.
    #[error("AP {op} on partition {partition} unavailable: {answered} of the {needed} required replicas answered; retry later or use a lower consistency level (a failed write may still have applied on the replicas that answered)")]
    Unavailable {
        /// "read" or "write".
        op: &'static str,
        /// Acks (W) or answers (R) required.
        needed: usize,
        /// How many came.
        answered: usize,
        /// The key's partition.
        partition: u32,
    },
    /// The local storage failed or held a corrupt record.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// This node cannot hold more hints for `node`.
    #[error("hint store full for node {node}: {limit} hints pending (MAX_HINTS_PER_NODE); the node has been down too long, repair it or let anti-entropy catch it up")]
    HintsFull {
        /// The intended owner of the hint.
        node: NodeId,
        /// The bound that was hit.
        limit: usize,
    },
    /// The request is malformed (key or value size, consistency level, keyspace mode).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A peer could not be reached during background work.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<HintError> for ApError {
    fn from(e: HintError) -> Self {
        match e {
            HintError::Full { node, limit } => ApError::HintsFull { node, limit },
            HintError::Storage(s) => ApError::Storage(s),
        }
    }
}

/// Errors of one remote call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The node could not be reached (down, partitioned, connection refused).
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// The node did not answer in time (the request may still have been applied).
    #[error("node {node} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The peer.
        node: NodeId,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The node answered with an error.
    #[error("node {node} refused: {message}")]
    Remote {
        /// The peer.
        node: NodeId,
        /// Its error, as text.
        message: String,
    },
}

/// Node-to-node calls of the AP engine (implemented over gRPC elsewhere, in memory in tests).
pub trait ApTransport: Send + Sync + 'static {
    /// Stores `record` on `to` (as a hint for `hint_for` when set).
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
    /// Reads `to`'s replica of `key` (tombstones included).
    fn read(
        &self,
        to: NodeId,
        keyspace_id: u32,
        key: Vec<u8>,
    ) -> BoxFuture<'static, Result<Option<ApRecord>, TransportError>>;
    /// `to`'s Merkle leaf hashes of one partition.
    fn merkle_leaves(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
    ) -> BoxFuture<'static, Result<Vec<u64>, TransportError>>;
    /// `to`'s records of one partition in the given leaves.
    fn merkle_range(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
        leaves: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ApRecord>, TransportError>>;
}

/// The failure detector's view (gossip, built elsewhere).
pub trait Liveness: Send + Sync + 'static {
    /// Whether `node` is currently believed alive.
    fn is_alive(&self, node: NodeId) -> bool;
}

/// What the AP engine needs from the ring.
pub trait ApRing: Send + Sync + 'static {
    /// The partition a key belongs to.
    fn partition_for_key(&self, key: &[u8]) -> u32;
    /// Number of partitions Q.
    fn partition_count(&self) -> u32;
    /// All nodes in preference order for a partition; the first N are its replicas.
    fn preference_list(&self, partition: u32) -> Vec<NodeId>;
}

/// Per-request consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// R = W = 1.
    One,
    /// R = W = majority of N.
    Quorum,
    /// R = W = N.
    All,
    /// Explicit R and W (each 1..=N).
    Explicit {
        /// Replicas a read waits for.
        r: u32,
        /// Acks a write waits for.
        w: u32,
    },
}

/// Options of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Consistency level; `None` uses the keyspace's R and W.
    pub consistency: Option<Consistency>,
}

impl RequestOptions {
    /// Options with this consistency level.
    pub fn with(consistency: Consistency) -> Self {
        Self {
            consistency: Some(consistency),
        }
    }
}

/// Resolves `(r, w)` for a request on an AP keyspace, checking they fit in N.
pub fn resolve_quorums(
    ks: &KeyspaceDef,
    consistency: Option<Consistency>,
) -> Result<(usize, usize), ApError> {
    if ks.mode != Mode::Ap {
        return Err(ApError::InvalidArgument(format!(
            "keyspace {} is not an AP keyspace",
            ks.name
        )));
    }
    let n = ks.replicas as usize;
    let majority = n / 2 + 1;
    let or_majority = |x: u32| if x == 0 { majority } else { x as usize };
    let (r, w) = match consistency {
        None => (
            or_majority(ks.read_replicas),
            or_majority(ks.write_replicas),
        ),
        Some(Consistency::One) => (1, 1),
        Some(Consistency::Quorum) => (majority, majority),
        Some(Consistency::All) => (n, n),
        Some(Consistency::Explicit { r, w }) => (r as usize, w as usize),
    };
    if n == 0 || !(1..=n).contains(&r) || !(1..=n).contains(&w) {
        return Err(ApError::InvalidArgument(format!(
            "R={r} and W={w} must each be between 1 and the keyspace's replication factor N={n} (keyspace {})",
            ks.name
        )));
    }
    Ok((r, w))
}

/// One node a write is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTarget {
    /// Where the write goes.
    pub node: NodeId,
    /// The intended owner when `node` stores it as a hint.
    pub hint_for: Option<NodeId>,
}

/// The write plan: the N replicas, with each one that is down replaced by the next live node
/// beyond N as a hint holder; returns the targets and the unused live fallbacks, in order.
pub fn plan_write(
    preference: &[NodeId],
    n: usize,
    coordinator: NodeId,
    is_alive: impl Fn(NodeId) -> bool,
) -> (Vec<WriteTarget>, VecDeque<NodeId>) {
    let n = n.min(preference.len());
    let mut fallbacks: VecDeque<NodeId> = preference[n..]
        .iter()
        .copied()
        .filter(|&f| is_alive(f))
        .collect();
    let mut targets = Vec::with_capacity(n);
    for &owner in &preference[..n] {
        if is_alive(owner) || owner == coordinator {
            targets.push(WriteTarget {
                node: owner,
                hint_for: None,
            });
        } else {
            // The next live node past the replicas holds the hint; with none left (a cluster
            // of N nodes) the coordinator keeps it, as Cassandra's coordinators do.
            targets.push(WriteTarget {
                node: fallbacks.pop_front().unwrap_or(coordinator),
                hint_for: Some(owner),
            });
        }
    }
    (targets, fallbacks)
}

/// What replay does with one hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintAction {
    /// Send it to its owner.
    Deliver,
    /// Older than the hint window: drop it, anti-entropy repairs the owner.
    Expire,
    /// The owner is down: keep it.
    Wait,
}

/// Decides what to do with a hint written at `hint_ms` (HLC physical time).
pub fn hint_action(owner_alive: bool, hint_ms: u64, now_ms: u64, max_age_ms: u64) -> HintAction {
    if hint_ms.saturating_add(max_age_ms) < now_ms {
        HintAction::Expire
    } else if owner_alive {
        HintAction::Deliver
    } else {
        HintAction::Wait
    }
}

/// Configuration of one node's AP engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApConfig {
    /// This node.
    pub node_id: NodeId,
    /// Skew beyond which remote timestamps are reported (see `hlc`).
    pub max_skew_ms: u64,
    /// How long tombstones are kept (must exceed `hint_max_age_ms` and the anti-entropy period).
    pub tombstone_grace_ms: u64,
    /// Age after which a hint is dropped instead of replayed.
    pub hint_max_age_ms: u64,
    /// Most hints held for one owner.
    pub max_hints_per_node: usize,
    /// Per-replica write timeout.
    pub write_timeout_ms: u64,
    /// Per-replica read timeout.
    pub read_timeout_ms: u64,
    /// Per-call Merkle timeout.
    pub merkle_timeout_ms: u64,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Period of hint replay in `spawn_background`.
    pub hint_replay_interval_ms: u64,
    /// Period of anti-entropy rounds in `spawn_background`.
    pub anti_entropy_interval_ms: u64,
    /// Period of tombstone purging in `spawn_background`.
    pub purge_interval_ms: u64,
}

impl ApConfig {
    /// The defaults for `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
            hint_max_age_ms: DEFAULT_HINT_MAX_AGE_MS,
            max_hints_per_node: MAX_HINTS_PER_NODE,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            merkle_timeout_ms: DEFAULT_MERKLE_TIMEOUT_MS,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            hint_replay_interval_ms: DEFAULT_HINT_REPLAY_INTERVAL_MS,
            anti_entropy_interval_ms: DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
            purge_interval_ms: DEFAULT_PURGE_INTERVAL_MS,
        }
    }
}

/// Outcome of one hint replay round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Hints acknowledged by their owner and deleted.
    pub delivered: usize,
    /// Hints whose send failed (kept for the next round).
    pub failed: usize,
    /// Hints kept because their owner is down.
    pub waiting: usize,
    /// Hints dropped as older than the hint window.
    pub expired: usize,
}

/// Outcome of one anti-entropy exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AntiEntropyStats {
    /// Leaves whose hashes differed.
    pub differing_leaves: usize,
    /// Records received from the peer (its records in the differing leaves).
    pub records_fetched: usize,
    /// Of those, records that superseded ours and were stored.
    pub records_applied: usize,
    /// Our records sent to the peer (newer than its copy, or absent there).
    pub records_pushed: usize,
}

/// Counters for `kv status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApStatus {
    /// Pending hints per intended owner.
    pub hints: BTreeMap<NodeId, usize>,
    /// Remote timestamps seen beyond the skew bound.
    pub skew_events: u64,
    /// Stale replicas written back by read repair.
    pub read_repairs: u64,
}

struct Inner {
    config: ApConfig,
    engine: Arc<dyn Engine>,
    clock: HlcClock,
    transport: Arc<dyn ApTransport>,
    liveness: Arc<dyn Liveness>,
    ring: Arc<dyn ApRing>,
    stores: Mutex<BTreeMap<u32, Arc<ApStore>>>,
    hints: HintStore,
    read_repairs: AtomicU64,
    /// Write drivers still running (they outlive `put` when W < N).
    writes_in_flight: AtomicUsize,
    writes_idle: tokio::sync::Notify,
}

/// One node's AP engine; cloning shares it.
#[derive(Clone)]
pub struct ApEngine {
    inner: Arc<Inner>,
}

async fn with_timeout<T>(
    node: NodeId,
    timeout_ms: u64,
    fut: BoxFuture<'static, Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout { node, timeout_ms }),
    }
}

impl ApEngine {
    /// Opens the engine over `engine` (hints and data already there are picked up).
    pub fn open(
        config: ApConfig,
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn ApTransport>,
        liveness: Arc<dyn Liveness>,
        ring: Arc<dyn ApRing>,
    ) -> Result<Self, ApError> {
        let hints = HintStore::open(&engine, config.max_hints_per_node)?;
        let clock = HlcClock::new(config.node_id, clock, config.max_skew_ms);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                engine,
                clock,
                transport,
                liveness,
                ring,
                stores: Mutex::new(BTreeMap::new()),
                hints,
                read_repairs: AtomicU64::new(0),
                writes_in_flight: AtomicUsize::new(0),
                writes_idle: tokio::sync::Notify::new(),
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// This node's hybrid logical clock.
    pub fn hlc(&self) -> &HlcClock {
        &self.inner.clock
    }

    /// The local replica store of a keyspace (opened on first use).
    pub fn store(&self, keyspace_id: u32) -> Result<Arc<ApStore>, ApError> {
        let mut stores = self.inner.stores.lock().expect("stores lock poisoned");
        if let Some(s) = stores.get(&keyspace_id) {
            return Ok(s.clone());
        }
        let ring = self.inner.ring.clone();
        let store = Arc::new(ApStore::open(
            &self.inner.engine,
            keyspace_id,
            Arc::new(move |k: &[u8]| ring.partition_for_key(k)),
        )?);
        stores.insert(keyspace_id, store.clone());
        Ok(store)
    }

    /// Counters for `kv status`.
    pub fn status(&self) -> ApStatus {
        ApStatus {
            hints: self.inner.hints.counts(),
            skew_events: self.inner.clock.skew_events(),
            read_repairs: self.inner.read_repairs.load(Ordering::Relaxed),
        }
    }

    /// Pending hints held here, per intended owner.
    pub fn hint_counts(&self) -> BTreeMap<NodeId, usize> {
        self.inner.hints.counts()
    }

    // ---- replica side ----

    /// Stores a record sent by a coordinator, a repair or a hint replay; true if it superseded
    /// what was stored. With `hint_for` naming another node it is kept as a durable hint instead.
    pub fn apply_replica(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<bool, ApError> {
        self.inner.clock.observe(record.hlc);
        match hint_for {
            Some(owner) if owner != self.node_id() => {
                self.inner.hints.add(owner, keyspace_id, record)?;
                Ok(true)
            }
            _ => {
                let store = self.store(keyspace_id)?;
                let applied = store.apply(&record)?;
                if applied {
                    // An acknowledged replica write must survive a crash.
                    self.inner.engine.flush()?;
                }
                Ok(applied)
            }
        }
    }

    /// This node's replica of `key` (tombstones included).
    pub fn read_replica(&self, keyspace_id: u32, key: &[u8]) -> Result<Option<ApRecord>, ApError> {
        Ok(self.store(keyspace_id)?.read(key)?)
    }

    /// This node's Merkle leaf hashes of one partition.
    pub fn merkle_leaves(&self, keyspace_id: u32, partition: u32) -> Result<Vec<u64>, ApError> {
        Ok(self.store(keyspace_id)?.merkle_leaves(partition)?)
    }

    /// This node's records of one partition in the given leaves.
    pub fn merkle_range(
        &self,
        keyspace_id: u32,
        partition: u32,
        leaves: &[u32],
    ) -> Result<Vec<ApRecord>, ApError> {
        Ok(self
            .store(keyspace_id)?
            .records_in_leaves(partition, leaves)?)
    }

    // ---- coordinator ----

    /// This node is always alive to itself, whatever the failure detector has converged to.
    fn is_alive(&self, node: NodeId) -> bool {
        node == self.node_id() || self.inner.liveness.is_alive(node)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ApError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(ApError::InvalidArgument(format!(
                "key is {} bytes; keys must be 1..={MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// Writes `value` under `key`; returns the write's timestamp after W acks.
    pub async fn put(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        if value.len() > self.inner.config.max_value_bytes {
            return Err(ApError::InvalidArgument(format!(
                "value is {} bytes; the limit is {} bytes (--max-value-bytes)",
                value.len(),
                self.inner.config.max_value_bytes
            )));
        }
        self.write(ks, preference, key, Some(value), opts).await
    }

    /// Deletes `key` (writes a tombstone); returns the delete's timestamp after W acks.
    pub async fn delete(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        self.write(ks, preference, key, None, opts).await
    }

    async fn write(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Option<Vec<u8>>,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        self.check_key(key)?;
        let (_, w) = resolve_quorums(ks, opts.consistency)?;
        let partition = self.inner.ring.partition_for_key(key);
        let hlc = self.inner.clock.now();
        let record = ApRecord {
            key: key.to_vec(),
            hlc,
            value,
        };
        let (targets, fallbacks) =
            plan_write(preference, ks.replicas as usize, self.node_id(), |n| {
                self.is_alive(n)
            });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // The writes run in their own task: the caller returns after W acks while the remaining
        // replicas (and fallbacks for failed ones) still get the write.
        self.inner.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(
            self.clone()
                .drive_write(ks.id, record, targets, fallbacks, w, done_tx),
        );
        let answered = done_rx.await.unwrap_or(0);
        if answered >= w {
            Ok(hlc)
        } else {
            Err(ApError::Unavailable {
                op: "write",
                needed: w,
                answered,
                partition,
            })
        }
    }

    async fn drive_write(
        self,
        keyspace_id: u32,
        record: ApRecord,
        targets: Vec<WriteTarget>,
        mut fallbacks: VecDeque<NodeId>,
        w: usize,
        done: tokio::sync::oneshot::Sender<usize>,
    ) {
        let mut pending = FuturesUnordered::new();
        for t in targets {
            pending.push(self.send_write(t, keyspace_id, record.clone()));
        }
        let mut done = Some(done);
        // W counts distinct nodes: a coordinator that stores a replica and a hint acks once.
        let mut acked: BTreeSet<NodeId> = BTreeSet::new();
        while let Some((target, result)) = pending.next().await {
            match result {
                Ok(()) => {
                    acked.insert(target.node);
                    let acks = acked.len();
                    if acks >= w {
                        if let Some(d) = done.take() {
                            let _ = d.send(acks);
                        }
                    }
                }
                Err(e) => {
                    let owner = target.hint_for.unwrap_or(target.node);
                    tracing::warn!(node_id = self.node_id(), to = target.node, owner, error = %e, "AP write failed; trying a fallback");
                    // Each fallback is used at most once, which bounds this loop.
                    // With no fallback left the coordinator keeps the hint (once: a failure of
                    // its own store is not retried).
                    let holder = match fallbacks.pop_front() {
                        Some(f) => Some(f),
                        None if target.node != self.node_id() => Some(self.node_id()),
                        None => None,
                    };
                    if let Some(node) = holder {
                        let t = WriteTarget {
                            node,
                            hint_for: Some(owner),
                        };
                        pending.push(self.send_write(t, keyspace_id, record.clone()));
                    }
                }
            }
        }
        if let Some(d) = done.take() {
            let _ = d.send(acked.len());
        }
        if self.inner.writes_in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.writes_idle.notify_waiters();
        }
    }

    /// Waits until every write this node coordinated has finished with all of its replicas and
    /// fallbacks (a write returns after W acks; the rest continues in the background).
    pub async fn wait_writes_idle(&self) {
        loop {
            let notified = self.inner.writes_idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a notification between the check and the await is kept.
            notified.as_mut().enable();
            if self.inner.writes_in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn send_write(
        &self,
        target: WriteTarget,
        keyspace_id: u32,
        record: ApRecord,
    ) -> BoxFuture<'static, (WriteTarget, Result<(), TransportError>)> {
        if target.node == self.node_id() {
            let result = self
                .apply_replica(keyspace_id, record, target.hint_for)
                .map(|_| ())
                .map_err(|e| TransportError::Remote {
                    node: target.node,
                    message: e.to_string(),
                });
            return Box::pin(async move { (target, result) });
        }
        let fut = self
            .inner
            .transport
            .write(target.node, keyspace_id, record, target.hint_for);
        let timeout_ms = self.inner.config.write_timeout_ms;
        Box::pin(async move { (target, with_timeout(target.node, timeout_ms, fut).await) })
    }

    fn send_read(
        &self,
        node: NodeId,
        keyspace_id: u32,
        key: &[u8],
    ) -> BoxFuture<'static, (NodeId, Result<Option<ApRecord>, TransportError>)> {
        if node == self.node_id() {
            let result = self
                .read_replica(keyspace_id, key)
                .map_err(|e| TransportError::Remote {
                    node,
                    message: e.to_string(),
                });
            return Box::pin(async move { (node, result) });
        }
        let fut = self.inner.transport.read(node, keyspace_id, key.to_vec());
        let timeout_ms = self.inner.config.read_timeout_ms;
        Box::pin(async move { (node, with_timeout(node, timeout_ms, fut).await) })
    }

    /// Reads `key` from R replicas: the newest value and its timestamp (`None` if absent or
    /// deleted); replicas that answered with an older or missing record are repaired.
    pub async fn get(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        opts: RequestOptions,
    ) -> Result<Option<(Vec<u8>, Hlc)>, ApError> {
        self.check_key(key)?;
        let (r, _) = resolve_quorums(ks, opts.consistency)?;
        let partition = self.inner.ring.partition_for_key(key);
        let n = (ks.replicas as usize).min(preference.len());
        // The coordinator's own replica first, when it has one: it answers without the network.
        let me = self.node_id();
        let mut candidates: VecDeque<NodeId> = preference[..n]
            .iter()
            .copied()
            .filter(|&node| node == me)
            .chain(
                preference[..n]
                    .iter()
                    .copied()
                    .filter(|&node| node != me && self.is_alive(node)),
            )
            .collect();
        let mut pending = FuturesUnordered::new();
        while pending.len() < r {
            match candidates.pop_front() {
                Some(node) => pending.push(self.send_read(node, ks.id, key)),
                None => break,
            }
        }
        let mut answers: Vec<(NodeId, Option<ApRecord>)> = Vec::with_capacity(r);
        while let Some((node, result)) = pending.next().await {
            match result {
                Ok(rec) => answers.push((node, rec)),
                Err(e) => {
                    tracing::warn!(node_id = self.node_id(), to = node, error = %e, "AP read failed; asking another replica");
                    if let Some(next) = candidates.pop_front() {
                        pending.push(self.send_read(next, ks.id, key));
                    }
                }
            }
        }
        if answers.len() < r {
            return Err(ApError::Unavailable {
                op: "read",
                needed: r,
                answered: answers.len(),
                partition,
            });
        }
        let newest = answers
            .iter()
            .filter_map(|(_, rec)| rec.as_ref())
            .fold(None, |acc: Option<ApRecord>, rec| {
                Some(lww::merge_opt(acc.as_ref(), rec))
            });
        let Some(newest) = newest else {
            return Ok(None);
        };
        self.inner.clock.observe(newest.hlc);
        self.read_repair(ks.id, &newest, &answers).await;
        Ok(newest.value.map(|v| (v, newest.hlc)))
    }

    /// Writes `newest` back to every answering replica whose copy it supersedes.
    async fn read_repair(
        &self,
        keyspace_id: u32,
        newest: &ApRecord,
        answers: &[(NodeId, Option<ApRecord>)],
    ) {
        let stale: Vec<NodeId> = answers
            .iter()
            .filter(|(_, rec)| rec.as_ref().is_none_or(|r| lww::supersedes(newest, r)))
            .map(|(node, _)| *node)
            .collect();
        let repairs: FuturesUnordered<_> = stale
            .into_iter()
            .map(|node| {
                self.send_write(
                    WriteTarget {
                        node,
                        hint_for: None,
                    },
                    keyspace_id,
                    newest.clone(),
                )
            })
            .collect();
        let results: Vec<_> = repairs.collect().await;
        for (target, result) in results {
            match result {
                Ok(()) => {
                    self.inner.read_repairs.fetch_add(1, Ordering::Relaxed);
                }
                // Best effort: anti-entropy repairs what read repair could not.
                Err(e) => {
                    tracing::warn!(node_id = self.node_id(), to = target.node, error = %e, "read repair failed")
                }
            }
        }
    }

    // ---- background work ----

    /// Sends pending hints to their owners that are alive; deletes each one only after its
    /// owner acknowledged it. Hints older than the hint window are dropped.
    pub async fn replay_hints_once(&self) -> Result<ReplayStats, ApError> {
        let mut stats = ReplayStats::default();
        let now_ms = self.inner.clock.wall_ms();
        for owner in self.inner.hints.counts().into_keys() {
            let alive = self.inner.liveness.is_alive(owner);
            for hint in self.inner.hints.pending_for(owner, HINT_REPLAY_BATCH)? {
                match hint_action(
                    alive,
                    hint.record.hlc.physical_ms,
                    now_ms,
                    self.inner.config.hint_max_age_ms,
                ) {
                    HintAction::Wait => stats.waiting += 1,
                    HintAction::Expire => {
                        tracing::warn!(
                            node_id = self.node_id(),
                            owner,
                            "hint expired; anti-entropy will repair the owner"
                        );
                        self.inner.hints.remove(&hint)?;
                        stats.expired += 1;
                    }
                    HintAction::Deliver => {
                        let fut = self.inner.transport.write(
                            owner,
                            hint.keyspace_id,
                            hint.record.clone(),
                            None,
                        );
                        match with_timeout(owner, self.inner.config.write_timeout_ms, fut).await {
                            Ok(()) => {
                                self.inner.hints.remove(&hint)?;
                                stats.delivered += 1;
                            }
                            Err(e) => {
                                tracing::info!(node_id = self.node_id(), owner, error = %e, "hint replay failed; will retry");
                                stats.failed += 1;
                                // The owner is not answering: the rest of its hints wait too.
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Exchanges one partition with `peer`: compares Merkle leaves, fetches the peer's records in
    /// differing leaves and merges them here, and pushes ours that the peer lacks or has older.
    pub async fn anti_entropy_once(
        &self,
        keyspace_id: u32,
        partition: u32,
        peer: NodeId,
    ) -> Result<AntiEntropyStats, ApError> {
        let timeout_ms = self.inner.config.merkle_timeout_ms;
        let store = self.store(keyspace_id)?;
        let ours = store.merkle_leaves(partition)?;
        let fut = self
            .inner
            .transport
            .merkle_leaves(peer, keyspace_id, partition);
        let theirs = with_timeout(peer, timeout_ms, fut).await?;
        let differing = merkle::diff_leaves(&ours, &theirs);
        let mut stats = AntiEntropyStats {
            differing_leaves: differing.len(),
            ..Default::default()
        };
        for chunk in differing.chunks(MERKLE_LEAVES_PER_RANGE_CALL) {
            let fut =
                self.inner
                    .transport
                    .merkle_range(peer, keyspace_id, partition, chunk.to_vec());
            let their_records = with_timeout(peer, timeout_ms, fut).await?;
            stats.records_fetched += their_records.len();
            let our_records = store.records_in_leaves(partition, chunk)?;
            let their_by_key: BTreeMap<&[u8], &ApRecord> = their_records
                .iter()
                .map(|r| (r.key.as_slice(), r))
                .collect();
            let to_push: Vec<ApRecord> = our_records
                .into_iter()
                .filter(|r| {
                    their_by_key
                        .get(r.key.as_slice())
                        .is_none_or(|t| lww::supersedes(r, t))
                })
                .collect();
            for r in &their_records {
                self.inner.clock.observe(r.hlc);
                if store.apply(r)? {
                    stats.records_applied += 1;
                }
            }
            // One flush per batch rather than per record (replica writes flush one by one).
            self.inner.engine.flush()?;
            let pushes = futures::stream::iter(to_push.into_iter().map(|r| {
                let fut = self.inner.transport.write(peer, keyspace_id, r, None);
                with_timeout(peer, self.inner.config.write_timeout_ms, fut)
            }))
            .buffer_unordered(ANTI_ENTROPY_PUSH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            for p in pushes {
                p?;
                stats.records_pushed += 1;
            }
        }
        Ok(stats)
    }

    /// Purges tombstones older than the grace period from every open keyspace store.
    pub fn purge_tombstones_once(&self) -> Result<usize, ApError> {
        let now_ms = self.inner.clock.wall_ms();
        let stores: Vec<_> = self
            .inner
            .stores
            .lock()
            .expect("stores lock poisoned")
            .values()
            .cloned()
            .collect();
        let mut purged = 0;
        for s in stores {
            purged += s.purge_tombstones(now_ms, self.inner.config.tombstone_grace_ms)?;
        }
        Ok(purged)
    }

    /// One anti-entropy round: every partition of every AP keyspace that this node replicates,
    /// against one live co-replica chosen by `round` (so rounds rotate through peers).
    pub async fn anti_entropy_round(&self, keyspaces: &[KeyspaceDef], round: usize) {
        for ks in keyspaces.iter().filter(|k| k.mode == Mode::Ap) {
            for partition in 0..self.inner.ring.partition_count() {
                let pref = self.inner.ring.preference_list(partition);
                let n = (ks.replicas as usize).min(pref.len());
                if !pref[..n].contains(&self.node_id()) {
                    continue;
                }
                let peers: Vec<NodeId> = pref[..n]
                    .iter()
                    .copied()
                    .filter(|&p| p != self.node_id() && self.inner.liveness.is_alive(p))
                    .collect();
                if peers.is_empty() {
                    continue;
                }
                let peer = peers[round % peers.len()];
                if let Err(e) = self.anti_entropy_once(ks.id, partition, peer).await {
                    tracing::warn!(node_id = self.node_id(), keyspace_id = ks.id, partition, peer, error = %e, "anti-entropy failed");
                }
            }
        }
    }

    /// Runs hint replay, anti-entropy and tombstone purging on tokio intervals until aborted;
    /// `keyspaces` yields the current keyspace definitions.
    pub fn spawn_background(
        &self,
        keyspaces: Arc<dyn Fn() -> Vec<KeyspaceDef> + Send + Sync>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let cfg = this.inner.config.clone();
        tokio::spawn(async move {
            let mut replay =
                tokio::time::interval(Duration::from_millis(cfg.hint_replay_interval_ms));
            let mut entropy =
                tokio::time::interval(Duration::from_millis(cfg.anti_entropy_interval_ms));
            let mut purge = tokio::time::interval(Duration::from_millis(cfg.purge_interval_ms));
            for i in [&mut replay, &mut entropy, &mut purge] {
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let mut round = 0usize;
            loop {
                tokio::select! {
                    _ = replay.tick() => {
                        if let Err(e) = this.replay_hints_once().await {
                            tracing::warn!(node_id = this.node_id(), error = %e, "hint replay failed");
                        }
                    }
                    _ = entropy.tick() => {
                        this.anti_entropy_round(&keyspaces(), round).await;
                        round = round.wrapping_add(1);
                    }
                    _ = purge.tick() => {
                        if let Err(e) = this.purge_tombstones_once() {
                            tracing::warn!(node_id = this.node_id(), error = %e, "tombstone purge failed");
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_replaces_down_replicas_with_the_next_live_fallbacks() {
        let pref = [1, 2, 3, 4, 5, 6];
        let (targets, rest) = plan_write(&pref, 3, 1, |n| n != 2 && n != 4);
        assert_eq!(
            targets,
            vec![
                WriteTarget {
                    node: 1,
                    hint_for: None
                },
                WriteTarget {
                    node: 5,
                    hint_for: Some(2)
                },
                WriteTarget {
                    node: 3,
                    hint_for: None
                },
            ]
        );
        assert_eq!(rest, VecDeque::from([6]));
        // No fallback left (a 3-node cluster): the coordinator keeps the hint.
        let (targets, rest) = plan_write(&[1, 2, 3], 3, 1, |n| n != 3);
        assert_eq!(
            targets[2],
            WriteTarget {
                node: 1,
                hint_for: Some(3)
            }
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn quorums_resolve_from_levels_and_keyspace_defaults() {
        let mut ks = KeyspaceDef::builtin().remove(1);
        assert_eq!(resolve_quorums(&ks, None).unwrap(), (2, 2));
        assert_eq!(
            resolve_quorums(&ks, Some(Consistency::One)).unwrap(),
            (1, 1)
        );
        assert_eq!(
            resolve_quorums(&ks, Some(Consistency::All)).unwrap(),
            (3, 3)
        );
        assert_eq!(
            resolve_quorums(&ks, Some(Consistency::Explicit { r: 1, w: 3 })).unwrap(),
            (1, 3)
        );
        let err = resolve_quorums(&ks, Some(Consistency::Explicit { r: 4, w: 1 })).unwrap_err();
        assert!(err.to_string().contains("N=3"), "{err}");
        ks.read_replicas = 1;
        ks.write_replicas = 3;
        assert_eq!(resolve_quorums(&ks, None).unwrap(), (1, 3));
        let cp = KeyspaceDef::builtin().remove(0);
        assert!(matches!(
            resolve_quorums(&cp, None),
            Err(ApError::InvalidArgument(_))
        ));
    }

    #[test]
    fn hint_actions() {
        assert_eq!(hint_action(true, 100, 150, 100), HintAction::Deliver);
        assert_eq!(hint_action(false, 100, 150, 100), HintAction::Wait);
        assert_eq!(hint_action(true, 100, 201, 100), HintAction::Expire);
        assert_eq!(hint_action(false, 100, 201, 100), HintAction::Expire);
    }
}
