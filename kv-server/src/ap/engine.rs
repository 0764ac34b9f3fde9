//! `ApEngine`, one node's AP engine: the state its parts share and how it is opened. The parts
//! are in sibling files, each an `impl ApEngine` block: `coordinator.rs` (put/get/delete with
//! sloppy quorums, hinted handoff and read repair; `stragglers.rs` finishes a write's sends after
//! its caller was answered), `replica.rs` (what a replica answers) and
//! `background.rs` (hint replay, anti-entropy, tombstone purge, each its own task); the decisions
//! they carry out are the pure functions of `plan.rs`.
//!
//! Invariants: a write carries one HLC timestamp chosen by its coordinator and every replica,
//! hint and repair merges it with LWW, so delivery order and duplicates never matter; a write is
//! acknowledged after W acks where a fallback node's durable hint counts as an ack (sloppy
//! quorum); a hint goes only to a node beyond the first N of the preference list and names the
//! intended owner; a failed or timed-out write is *indeterminate* (it may have applied on the
//! replicas that answered); a record whose timestamp is beyond the maximum clock offset is
//! neither stored, returned nor passed on here. Every remote call has a timeout; every loop and
//! the writes in flight a named bound.

use super::flush::GroupFlush;
use super::hints::HintStore;
use super::hlc::{HlcClock, LATEST};
use super::store::ApStore;
use super::stragglers::Stragglers;
use crate::clock::Clock;
use crate::storage::Engine;
use crate::types::{Hlc, NodeId};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// What the engine is configured and plugged with, also reachable as `ap::engine::…`: the path
// that callers outside `ap/` used before the engine was split into files.
pub use super::config::*;
pub use super::error::{ApError, TransportError};
pub use super::seams::{ApRing, ApTransport, Liveness};

/// Counters for `kv status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApStatus {
    /// Pending hints per intended owner.
    pub hints: BTreeMap<NodeId, usize>,
    /// Remote timestamps seen more than half the maximum clock offset ahead (refused included).
    pub skew_events: u64,
    /// Remote timestamps refused as beyond the maximum clock offset.
    pub clock_refusals: u64,
    /// Stale replicas written back by read repair.
    pub read_repairs: u64,
}

/// The state shared by the coordinator, the replica side and the background tasks.
pub(super) struct Inner {
    pub(super) config: ApConfig,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) clock: Arc<HlcClock>,
    pub(super) transport: Arc<dyn ApTransport>,
    pub(super) liveness: Arc<dyn Liveness>,
    pub(super) ring: Arc<dyn ApRing>,
    pub(super) stores: Mutex<BTreeMap<u32, Arc<ApStore>>>,
    pub(super) hints: HintStore,
    pub(super) read_repairs: AtomicU64,
    /// Write drivers still running (they outlive `put` when W < N); at most
    /// `config.max_writes_in_flight`.
    pub(super) writes_in_flight: AtomicUsize,
    pub(super) writes_idle: tokio::sync::Notify,
    /// Finishes the sends writes leave running after their caller was answered.
    pub(super) stragglers: Stragglers,
    /// Group commit of replica writes.
    pub(super) flusher: GroupFlush,
    /// Per (keyspace, partition, co-replica): the local stamp taken at the start of the latest
    /// anti-entropy exchange with it that completed (every record we held then, the peer now
    /// holds or holds something newer). Kept in memory: after a restart no tombstone is purged
    /// before a fresh exchange with every co-replica, which only delays purging.
    pub(super) synced: Mutex<BTreeMap<(u32, u32, NodeId), Hlc>>,
}

/// One node's AP engine; cloning shares it.
#[derive(Clone)]
pub struct ApEngine {
    pub(super) inner: Arc<Inner>,
}

/// Awaits one remote call, turning an expired `timeout_ms` into `TransportError::Timeout`.
pub(super) async fn with_timeout<T>(
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
        if config.tombstone_grace_ms <= config.hint_max_age_ms {
            // A hint of an older value could then outlive the tombstone and bring the value back.
            return Err(ApError::InvalidArgument(format!(
                "the tombstone grace period ({} ms) must be longer than the hint window ({} ms)",
                config.tombstone_grace_ms, config.hint_max_age_ms
            )));
        }
        let hints = HintStore::open(&engine, config.max_hints_per_node)?;
        let clock = Arc::new(HlcClock::new(
            config.node_id,
            clock,
            config.max_clock_offset_ms,
        ));
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
                stragglers: Stragglers::default(),
                flusher: GroupFlush::default(),
                synced: Mutex::new(BTreeMap::new()),
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
        let clock = self.inner.clock.clone();
        let store = Arc::new(ApStore::open(
            &self.inner.engine,
            keyspace_id,
            Arc::new(move |k: &[u8]| ring.partition_for_key(k)),
            // An exhausted clock stamps the latest time there is: the tombstone is then never
            // taken for one an exchange already covered.
            Arc::new(move || clock.now().unwrap_or(LATEST)),
        )?);
        stores.insert(keyspace_id, store.clone());
        Ok(store)
    }

    /// Counters for `kv status`.
    pub fn status(&self) -> ApStatus {
        ApStatus {
            hints: self.inner.hints.counts(),
            skew_events: self.inner.clock.skew_events(),
            clock_refusals: self.inner.clock.refusals(),
            read_repairs: self.inner.read_repairs.load(Ordering::Relaxed),
        }
    }

    /// Pending hints held here, per intended owner.
    pub fn hint_counts(&self) -> BTreeMap<NodeId, usize> {
        self.inner.hints.counts()
    }

    /// Tombstones written before this HLC physical time are past the grace period: a replica
    /// that holds nothing for their key does not take them (see `ApStore::apply`).
    pub(super) fn forget_before_ms(&self) -> u64 {
        self.inner
            .clock
            .wall_ms()
            .saturating_sub(self.inner.config.tombstone_grace_ms)
    }

    /// This node is always alive to itself, whatever the failure detector has converged to.
    pub(super) fn is_alive(&self, node: NodeId) -> bool {
        node == self.node_id() || self.inner.liveness.is_alive(node)
    }
}
