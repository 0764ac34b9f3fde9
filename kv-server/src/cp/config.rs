//! `CpConfig`: the settings of a node's CP engine and the openraft `Config` every group of it
//! runs with (timeouts, snapshots, and the bounds of one replication message).

use crate::cp::error::CpError;
use openraft::{Config, SnapshotPolicy};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the CP engine (timeouts in milliseconds).
#[derive(Debug, Clone)]
pub struct CpConfig {
    /// Cluster name (openraft's `cluster_name`, shows in its traces).
    pub cluster_name: String,
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Whether one node-wide tick sends the heartbeats of every group this node leads at once
    /// (`cp::heartbeat`), so they leave together and share one batch call per peer; `false`
    /// leaves each group's heartbeat on its own openraft timer.
    pub shared_heartbeat: bool,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Deadline applied to client calls that are given none.
    pub request_timeout_ms: u64,
    /// Upper bound on one Raft RPC.
    pub rpc_timeout_ms: u64,
    /// Pause before re-contacting an unreachable peer.
    pub unreachable_backoff_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind the snapshot when purging (room for slow followers).
    pub log_entries_kept_after_snapshot: u64,
    /// Root seed of the election timeouts (mixed with node and group ids): `Some` makes
    /// elections repeat in simulations; `None` (the default) draws from OS randomness.
    pub rng_seed: Option<u64>,
    /// Byte budget of one AppendEntries message; a larger batch is split (openraft is told
    /// `PayloadTooLarge`). `Node::start_cp` derives it from the node's value limit.
    pub max_append_bytes: usize,
    /// Most entries in one AppendEntries message.
    pub max_payload_entries: u64,
}

/// Default most entries per AppendEntries: small entries batch well below it, and a lagging
/// follower catches up in messages that each fit one heartbeat interval.
pub const DEFAULT_MAX_PAYLOAD_ENTRIES: u64 = 64;

impl Default for CpConfig {
    fn default() -> Self {
        Self {
            cluster_name: "kv".into(),
            heartbeat_interval_ms: 100,
            shared_heartbeat: true,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            request_timeout_ms: 3000,
            rpc_timeout_ms: 1000,
            unreachable_backoff_ms: 200,
            snapshot_every_entries: 10_000,
            log_entries_kept_after_snapshot: 1000,
            rng_seed: None,
            max_append_bytes: kv_core::limits::max_raft_append_bytes(
                kv_core::limits::DEFAULT_MAX_VALUE_BYTES,
            ),
            max_payload_entries: DEFAULT_MAX_PAYLOAD_ENTRIES,
        }
    }
}

impl CpConfig {
    pub(crate) fn raft_config(&self) -> Result<Arc<Config>, CpError> {
        let config = Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            // The shared tick sends them instead (openraft still tracks `heartbeat_interval`).
            enable_heartbeat: !self.shared_heartbeat,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            purge_batch_size: 1,
            max_payload_entries: self.max_payload_entries,
            // Below every node-to-node message limit (`kv_core::limits`).
            snapshot_max_chunk_size: kv_core::limits::RAFT_SNAPSHOT_CHUNK_BYTES as u64,
            ..Default::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|e| CpError::Config(e.to_string()))
    }

    /// The default request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
