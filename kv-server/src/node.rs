//! The node: configuration, ring, keyspaces, storage, the engines and the peer links they share,
//! and the request paths that the gRPC services call. The peer links are built first and handed
//! to the engines' transports and to the node; nothing the node owns points back at it.
//! **Architecture invariant:** every request is validated (key, value, keyspace, options)
//! before anything is read or written.

use crate::ap::{ApConfig, ApEngine, ApRing};
use crate::clock::Clock;
use crate::config::{ConfigError, NodeConfig};
use crate::cp::{CpConfig, CpEngine, GroupSpec};
use crate::error::{echo, NodeError, NodeResult};
use crate::peers::PeerLinks;
use crate::ring::Ring;
use crate::storage::{self, Engine};
use crate::transport::GrpcTransport;
use crate::types::{KeyspaceDef, Member, NodeId, MAX_KEY_BYTES};
use kv_core::limits::MAX_KEYSPACE_NAME_BYTES;
use kv_core::net::Dialer;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Delay from start to the scrub's first pass over this node's records.
pub const SCRUB_FIRST_DELAY: std::time::Duration = std::time::Duration::from_secs(3);
/// Time between scrub passes.
pub const SCRUB_PERIOD: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);
/// Time before another pass when one left corrupt records unrepaired.
pub const SCRUB_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Metadata key marking a request forwarded by another node (it is never forwarded again).
pub const FORWARDED_HEADER: &str = "kv-forwarded";
/// Keyspace id whose Raft groups every CP keyspace uses (the built-in `cp`).
pub const CP_GROUP_KEYSPACE: u32 = 1;
/// Replication factor of CP keyspaces in this release (their groups are shared).
pub const CP_REPLICAS: u32 = 3;

/// How often a node re-reads keyspace definitions from its metadata replica.
pub const KEYSPACE_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A running node's state, shared by its services and background tasks.
pub struct Node {
    /// Validated configuration.
    pub config: NodeConfig,
    /// This node.
    pub me: Member,
    /// The ring every node computes from the same membership.
    pub ring: Arc<Ring>,
    /// Keyspace definitions by name.
    pub keyspaces: RwLock<BTreeMap<String, KeyspaceDef>>,
    /// The storage engine.
    pub engine: Arc<dyn Engine>,
    /// Links to the peers: channels, injected faults (`--chaos`) and liveness.
    pub links: Arc<PeerLinks>,
    /// Wall clock (skewable by fault injection).
    pub clock: Arc<dyn Clock>,
    /// The AP engine (Dynamo-style keyspaces).
    pub ap: ApEngine,
    cp: OnceLock<CpEngine>,
    /// One permit per write this node may handle at once (`NodeConfig::max_writes_in_flight`).
    writes: Arc<Semaphore>,
}

impl Node {
    /// Builds a node from its config, engine, dialer and clock (engines open, nothing runs yet),
    /// with peer links of its own over `dialer`.
    pub fn new(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        dialer: Arc<dyn Dialer>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, ConfigError> {
        let me = config.validate()?;
        let links = Arc::new(
            PeerLinks::new(me.id, &config.peers, dialer)
                .with_max_value_bytes(config.max_value_bytes),
        );
        Node::with_links(config, links, engine, clock)
    }

    /// Builds a node over peer links made beforehand (they must be this node's, for the same
    /// peer list); engines open, nothing runs yet.
    pub fn with_links(
        config: NodeConfig,
        links: Arc<PeerLinks>,
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, ConfigError> {
        let me = config.validate()?;
        let same_peers = links.members().count() == config.peers.len()
            && config.peers.iter().all(|m| links.member(m.id) == Some(m));
        if links.max_value_bytes() != config.max_value_bytes {
            return Err(ConfigError(format!(
                "the peer links were built for values of {} bytes and --max-value-bytes is {}",
                links.max_value_bytes(),
                config.max_value_bytes
            )));
        }
        if links.me() != me.id || !same_peers {
            return Err(ConfigError(format!(
                "the peer links were built for node id {} and another peer list; node {} (id {}) needs links for its own --peers",
                links.me(),
                me.name,
                me.id
            )));
        }
        let config_writes = config.max_writes_in_flight;
        let ring = Arc::new(
            Ring::new(&config.peers, config.partitions, config.tokens_per_node)
                .map_err(|e| ConfigError(e.to_string()))?,
        );
        let keyspaces = KeyspaceDef::builtin()
            .into_iter()
            .map(|k| (k.name.clone(), k))
            .collect();
        let mut ap_config = ApConfig::new(me.id);
        ap_config.max_value_bytes = config.max_value_bytes;
        ap_config.anti_entropy_interval_ms = config.anti_entropy_interval_ms;
        ap_config.hint_replay_interval_ms = config.hint_replay_interval_ms;
        let transport = GrpcTransport::new(links.clone());
        let ap = ApEngine::open(
            ap_config,
            engine.clone(),
            clock.clone(),
            Arc::new(transport.clone()),
            Arc::new(transport),
            Arc::new(RingView(ring.clone())),
        )
        .map_err(|e| ConfigError(format!("opening the AP engine: {e}")))?;
        Ok(Arc::new(Node {
            config,
            me,
            ring,
            keyspaces: RwLock::new(keyspaces),
            engine,
            links,
            clock,
            ap,
            cp: OnceLock::new(),
            writes: Arc::new(Semaphore::new(config_writes)),
        }))
    }

    /// Starts the CP engine: one Raft group per partition of the built-in `cp` keyspace (every
    /// CP keyspace shares them; the state machine namespaces keys by keyspace) plus the
    /// metadata group of all nodes.
    /// Its AppendEntries byte budget is derived from the node's value limit, whatever
    /// `cp_config` says.
    pub async fn start_cp(&self, mut cp_config: CpConfig) -> Result<(), NodeError> {
        cp_config.max_append_bytes =
            kv_core::limits::max_raft_append_bytes(self.config.max_value_bytes);
        let groups = self.cp_group_specs();
        let transport = Arc::new(GrpcTransport::with_raft_rpc_timeout(
            self.links.clone(),
            std::time::Duration::from_millis(cp_config.rpc_timeout_ms),
        ));
        let cp = CpEngine::start(
            self.me.id,
            self.engine.clone(),
            transport.clone(),
            cp_config,
            groups,
        )
        .await
        .map_err(|e| NodeError::Internal(format!("starting the CP engine: {e}")))?;
        cp.set_record_fetcher(transport);
        if self.config.unsafe_skip_read_index {
            tracing::warn!("UNSAFE: CP reads skip the read index (test-only deliberate bug)");
            cp.set_unsafe_skip_read_index(true);
        }
        if self.cp.set(cp).is_err() {
            return Err(NodeError::Internal(
                "the CP engine was already started".into(),
            ));
        }
        Ok(())
    }

    /// The Raft groups of this cluster (identical on every node).
    pub fn cp_group_specs(&self) -> Vec<GroupSpec> {
        let mut groups: Vec<GroupSpec> = (0..self.ring.partition_count())
            .map(|p| GroupSpec {
                keyspace: CP_GROUP_KEYSPACE,
                partition: p,
                members: self.ring.replicas(p, CP_REPLICAS as usize).to_vec(),
            })
            .collect();
        groups.push(GroupSpec::meta(
            self.config.peers.iter().map(|m| m.id).collect(),
        ));
        groups
    }

    /// The CP engine, once started.
    pub fn cp(&self) -> NodeResult<&CpEngine> {
        self.cp.get().ok_or_else(|| {
            NodeError::Unavailable(format!(
                "node {} is starting: its Raft groups are not running yet; retry shortly",
                self.me.name
            ))
        })
    }

    /// Members of the Raft group serving partition `p` of CP keyspaces.
    pub fn cp_members(&self, partition: u32) -> &[NodeId] {
        self.ring.replicas(partition, CP_REPLICAS as usize)
    }

    /// Re-reads keyspace definitions from this node's replica of the metadata group.
    pub async fn refresh_keyspaces(&self) -> NodeResult<()> {
        let defs = self
            .cp()?
            .list_keyspaces(true)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let mut map = self.keyspaces.write().expect("keyspace lock");
        for d in defs {
            map.insert(d.name.clone(), d);
        }
        Ok(())
    }

    /// Starts background work (AP hint replay, anti-entropy, tombstone purge).
    pub fn start_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        let keyspaces = Arc::new(move || {
            weak.upgrade()
                .map(|n| {
                    n.keyspaces
                        .read()
                        .expect("keyspace lock")
                        .values()
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        });
        let weak = Arc::downgrade(self);
        let refresh = tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEYSPACE_REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let _ = node.refresh_keyspaces().await;
            }
        });
        let weak = Arc::downgrade(self);
        let scrub = tokio::spawn(async move {
            // The first pass soon after start (a byte flipped while the node was down is found
            // then), later ones every period; a pass that left records unrepaired (their
            // replicas were not reachable yet) is followed sooner by another.
            let mut wait = SCRUB_FIRST_DELAY;
            loop {
                tokio::time::sleep(wait).await;
                let Some(node) = weak.upgrade() else { return };
                let keyspaces: Vec<KeyspaceDef> = node
                    .keyspaces
                    .read()
                    .expect("keyspace lock")
                    .values()
                    .cloned()
                    .collect();
                let options = crate::repair::scrub::ScrubOptions {
                    records_per_second: crate::repair::scrub::DEFAULT_SCRUB_RECORDS_PER_SECOND,
                    // Engines that flush inline (memory, simulated disks) are read inline too.
                    offload: node.engine.group_commit().is_some(),
                };
                let stats =
                    crate::repair::scrub::scrub_pass(&node.ap, node.cp.get(), &keyspaces, options)
                        .await;
                if stats.corrupt > 0 {
                    tracing::warn!(node = %node.me.name, checked = stats.checked, corrupt = stats.corrupt, repaired = stats.repaired, unrepaired = stats.unrepaired, "scrub pass found corrupt records");
                }
                wait = if stats.unrepaired > 0 {
                    SCRUB_RETRY
                } else {
                    SCRUB_PERIOD
                };
            }
        });
        vec![self.ap.spawn_background(keyspaces), refresh, scrub]
    }

    /// The keyspace with this id.
    pub fn keyspace_by_id(&self, id: u32) -> NodeResult<KeyspaceDef> {
        self.keyspaces
            .read()
            .expect("keyspace lock")
            .values()
            .find(|k| k.id == id)
            .cloned()
            .ok_or_else(|| NodeError::InvalidArgument(format!("unknown keyspace id {id}")))
    }

    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.links.member(id)
    }

    /// Admits one more write, or refuses it when `max_writes_in_flight` writes are already
    /// being handled here; the write holds the permit until it is answered.
    pub fn admit_write(&self) -> NodeResult<OwnedSemaphorePermit> {
        self.writes.clone().try_acquire_owned().map_err(|_| {
            NodeError::ResourceExhausted(format!(
                "node {} is handling {} writes, its limit (max_writes_in_flight); retry with backoff or spread writes over more nodes",
                self.me.name, self.config.max_writes_in_flight
            ))
        })
    }

    /// Writes being handled on this node now.
    pub fn writes_in_flight(&self) -> usize {
        self.config.max_writes_in_flight - self.writes.available_permits()
    }

    /// Checks a keyspace name against the length limit (before it is looked up or echoed).
    pub fn validate_keyspace_name(&self, name: &str) -> NodeResult<()> {
        if name.len() > MAX_KEYSPACE_NAME_BYTES {
            return Err(NodeError::InvalidArgument(format!(
                "keyspace name is {} bytes, over the limit of {MAX_KEYSPACE_NAME_BYTES} bytes",
                name.len()
            )));
        }
        Ok(())
    }

    /// Looks up a keyspace (re-reading the metadata on a miss), with an error listing those
    /// that exist.
    pub async fn keyspace(&self, name: &str) -> NodeResult<KeyspaceDef> {
        self.validate_keyspace_name(name)?;
        let known = self
            .keyspaces
            .read()
            .expect("keyspace lock")
            .get(name)
            .cloned();
        if let Some(k) = known {
            return Ok(k);
        }
        let _ = self.refresh_keyspaces().await;
        let map = self.keyspaces.read().expect("keyspace lock");
        map.get(name)
            .cloned()
            .ok_or_else(|| NodeError::KeyspaceNotFound {
                name: echo(name),
                existing: map.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Checks a key against the limits.
    pub fn validate_key(&self, key: &[u8]) -> NodeResult<()> {
        if key.is_empty() {
            return Err(NodeError::InvalidArgument(
                "key is empty; keys are 1 to 1024 bytes".into(),
            ));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(NodeError::InvalidArgument(format!(
                "key is {} bytes, over the limit of {MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// Checks a value against the configured limit.
    pub fn validate_value(&self, value: &[u8]) -> NodeResult<()> {
        let max = self.config.max_value_bytes;
        if value.len() > max {
            return Err(NodeError::InvalidArgument(format!(
                "value is {} bytes, over the limit of {max} bytes (--max-value-bytes)",
                value.len()
            )));
        }
        Ok(())
    }

    /// Describes a node for error messages: "n2 (127.0.0.1:7002)".
    pub fn describe(&self, id: NodeId) -> String {
        self.links.describe(id)
    }
}

/// Why a node's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is invalid, or the data directory belongs to another node.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine failed to open.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

/// Opens the engine a config asks for: sled in `data_dir`, else memory. A data directory is
/// refused when its stored identity (`config::Identity`) is another node's, another cluster's
/// or another peer order's; a new one gets this node's identity.
pub fn open_engine(config: &NodeConfig) -> Result<Arc<dyn Engine>, OpenError> {
    let Some(dir) = &config.data_dir else {
        return Ok(storage::open_engine(storage::EngineKind::Memory, None)?);
    };
    let me = config.validate()?;
    let identity = crate::config::Identity::of(config, &me);
    crate::config::check_identity(dir, &identity)?;
    let engine = storage::open_engine(storage::EngineKind::Sled, Some(dir))?;
    // Stored once the engine holds the directory's lock, so two processes never race on it.
    crate::config::store_identity(dir, &identity)?;
    Ok(engine)
}

/// The ring as the AP engine sees it.
struct RingView(Arc<Ring>);

impl ApRing for RingView {
    fn partition_for_key(&self, key: &[u8]) -> u32 {
        self.0.partition_for_key(key)
    }
    fn partition_count(&self) -> u32 {
        self.0.partition_count()
    }
    fn preference_list(&self, partition: u32) -> Vec<NodeId> {
        self.0.preference_list(partition).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::storage::memory::MemoryEngine;
    use std::collections::BTreeSet;

    fn config(name: &str) -> NodeConfig {
        let peers = crate::config::parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1:7002").unwrap();
        NodeConfig::new(name, "c", peers)
    }

    fn links_for(cfg: &NodeConfig, me: NodeId) -> Arc<PeerLinks> {
        Arc::new(PeerLinks::new(
            me,
            &cfg.peers,
            Arc::new(kv_core::net::TcpDialer),
        ))
    }

    fn build(cfg: NodeConfig, links: Arc<PeerLinks>) -> Result<Arc<Node>, ConfigError> {
        Node::with_links(
            cfg,
            links,
            Arc::new(MemoryEngine::new()),
            Arc::new(SystemClock::default()),
        )
    }

    #[tokio::test]
    async fn the_node_uses_the_links_it_is_given() {
        let cfg = config("n1");
        let links = links_for(&cfg, 1);
        links.faults().set(BTreeSet::from([2]), BTreeMap::new());
        let node = build(cfg, links.clone()).unwrap();
        assert!(Arc::ptr_eq(&node.links, &links));
        assert!(
            node.links.faults().drops(2),
            "faults set before the node apply to it"
        );
        assert_eq!(node.describe(2), "n2 (127.0.0.1:7002)");
    }

    #[test]
    fn a_node_refuses_a_data_directory_written_under_another_identity() {
        let dir = tempfile::tempdir().unwrap();
        let with_peers = |spec: &str, name: &str| {
            let mut cfg = NodeConfig::new(name, "c", crate::config::parse_peers(spec).unwrap());
            cfg.data_dir = Some(dir.path().to_path_buf());
            cfg
        };
        let peers = "n1=127.0.0.1:7001,n2=127.0.0.1:7002";
        drop(open_engine(&with_peers(peers, "n1")).expect("first start"));
        drop(open_engine(&with_peers(peers, "n1")).expect("restart"));
        let err = open_engine(&with_peers("n2=127.0.0.1:7002,n1=127.0.0.1:7001", "n1"))
            .err()
            .expect("reordered peers");
        assert!(matches!(err, OpenError::Config(_)), "{err}");
        assert!(err.to_string().contains("original order"), "{err}");
        let err = open_engine(&with_peers(peers, "n2"))
            .err()
            .expect("another node's directory");
        assert!(err.to_string().contains("belongs to node n1"), "{err}");
    }

    #[tokio::test]
    async fn links_of_another_node_or_peer_list_are_refused() {
        let cfg = config("n1");
        let err = build(cfg.clone(), links_for(&cfg, 2))
            .err()
            .expect("wrong node");
        assert!(err.to_string().contains("node n1 (id 1)"), "{err}");
        let other = NodeConfig::new(
            "n1",
            "c",
            crate::config::parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1:7999").unwrap(),
        );
        let err = build(cfg, links_for(&other, 1)).err().expect("wrong peers");
        assert!(err.to_string().contains("peer list"), "{err}");
    }
}
