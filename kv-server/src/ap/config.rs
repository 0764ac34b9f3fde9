//! Configuration of one node's AP engine (`ApConfig`), its defaults and named bounds, and the
//! per-request options (`Consistency`, `RequestOptions`).

use super::hints::{DEFAULT_HINT_MAX_AGE_MS, MAX_HINTS_PER_NODE};
use super::hlc::DEFAULT_MAX_CLOCK_OFFSET_MS;
use super::store::DEFAULT_TOMBSTONE_GRACE_MS;
use crate::types::{NodeId, DEFAULT_MAX_VALUE_BYTES};

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
/// Smallest byte budget of one page of a Merkle range answer (a page of small records).
pub const MIN_RANGE_PAGE_BYTES: usize = 1024 * 1024;
/// Most concurrent pushes (writes) to a peer during anti-entropy.
pub const ANTI_ENTROPY_PUSH_CONCURRENCY: usize = 16;
/// Default most writes one coordinator drives at once. A write stays in flight until every
/// replica answered or timed out (after W acks it continues in the background), so with a hung
/// replica each write lingers one write timeout: 4096 covers 4,000 writes/s per coordinator with
/// one replica hung. Each holds its value (up to the value limit) in memory while in flight.
pub const MAX_WRITES_IN_FLIGHT: usize = 4096;

/// Configuration of one node's AP engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApConfig {
    /// This node.
    pub node_id: NodeId,
    /// How far ahead of this node's wall clock a remote timestamp may be before it is refused
    /// (see `hlc`).
    pub max_clock_offset_ms: u64,
    /// How long a tombstone is kept at least (must exceed `hint_max_age_ms`); it is purged only
    /// once every co-replica is known to hold it as well (see `store`).
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
    /// Period of the hint replay task started by `spawn_background`.
    pub hint_replay_interval_ms: u64,
    /// Period of the anti-entropy task started by `spawn_background`.
    pub anti_entropy_interval_ms: u64,
    /// Period of the tombstone purge task started by `spawn_background`.
    pub purge_interval_ms: u64,
    /// Most writes this node coordinates at once; more are refused with `ApError::Overloaded`.
    pub max_writes_in_flight: usize,
}

impl ApConfig {
    /// The defaults for `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
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
            max_writes_in_flight: MAX_WRITES_IN_FLIGHT,
        }
    }

    /// Byte budget of one page of a Merkle range answer: one largest value with its headroom,
    /// or [`MIN_RANGE_PAGE_BYTES`] of smaller records. A page holds at least one record, so it
    /// never exceeds this budget or one record, both below the node-to-node message limit
    /// (`kv_core::limits::max_peer_message_bytes`, four values with headroom).
    pub fn range_page_bytes(&self) -> usize {
        kv_core::limits::max_request_bytes(self.max_value_bytes).max(MIN_RANGE_PAGE_BYTES)
    }
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
