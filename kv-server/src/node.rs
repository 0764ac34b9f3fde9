//! The node: configuration, ring, keyspaces, storage and peer connections, and the request
//! paths that the gRPC services call. **Architecture invariant:** every request is validated
//! (key, value, keyspace, options) before anything is read or written.

use crate::ap::engine::{ApConfig, ApEngine, ApRing, Liveness};
use crate::clock::Clock;
use crate::config::{ConfigError, NodeConfig};
use crate::faults::Faults;
use crate::transport::GrpcTransport;
use crate::error::{NodeError, NodeResult};
use crate::membership::Membership;
use crate::ring::Ring;
use crate::storage::record::{RecordTree, StoredRecord};
use crate::storage::{self, Engine};
use crate::types::{KeyspaceDef, Member, NodeId, Version, MAX_KEY_BYTES};
use kv_client::net::Dialer;
use kv_proto::internal::internal_client::InternalClient;
use kv_proto::v1::kv_client::KvClient;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tonic::transport::Channel;

/// Metadata key marking a request forwarded by another node (it is never forwarded again).
pub const FORWARDED_HEADER: &str = "kv-forwarded";

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
    /// Liveness of peers.
    pub membership: Membership,
    /// Wall clock (skewable by fault injection).
    pub clock: Arc<dyn Clock>,
    /// Faults injected on outgoing traffic (`--chaos`).
    pub faults: Faults,
    /// The AP engine (Dynamo-style keyspaces).
    pub ap: ApEngine,
    dialer: Arc<dyn Dialer>,
    channels: Mutex<BTreeMap<NodeId, Channel>>,
    local: Mutex<BTreeMap<u32, RecordTree>>,
    revision: AtomicU64,
}

impl Node {
    /// Builds a node from its config, engine, dialer and clock (engines open, nothing runs yet).
    pub fn new(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        dialer: Arc<dyn Dialer>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, ConfigError> {
        let me = config.validate()?;
        let ring = Arc::new(
            Ring::new(&config.peers, config.partitions, config.tokens_per_node)
                .map_err(|e| ConfigError(e.to_string()))?,
        );
        let keyspaces = KeyspaceDef::builtin()
            .into_iter()
            .map(|k| (k.name.clone(), k))
            .collect();
        let membership = Membership::new(me.id, &config.peers);
        let mut ap_config = ApConfig::new(me.id);
        ap_config.max_value_bytes = config.max_value_bytes;
        let mut ap_error = None;
        let node = Arc::new_cyclic(|weak: &std::sync::Weak<Node>| {
            let transport = Arc::new(GrpcTransport::new(weak.clone()));
            let liveness = Arc::new(NodeLiveness(weak.clone()));
            let ap = ApEngine::open(
                ap_config,
                engine.clone(),
                clock.clone(),
                transport,
                liveness,
                Arc::new(RingView(ring.clone())),
            );
            let ap = ap.unwrap_or_else(|e| {
                ap_error = Some(e.to_string());
                // A placeholder over an empty memory engine; `new` returns the error below.
                ApEngine::open(
                    ApConfig::new(me.id),
                    Arc::new(storage::memory::MemoryEngine::new()),
                    clock.clone(),
                    Arc::new(GrpcTransport::new(weak.clone())),
                    Arc::new(NodeLiveness(weak.clone())),
                    Arc::new(RingView(ring.clone())),
                )
                .expect("an empty memory engine opens")
            });
            Node {
                config,
                me,
                ring,
                keyspaces: RwLock::new(keyspaces),
                engine,
                membership,
                clock,
                faults: Faults::default(),
                ap,
                dialer,
                channels: Mutex::new(BTreeMap::new()),
                local: Mutex::new(BTreeMap::new()),
                revision: AtomicU64::new(0),
            }
        });
        match ap_error {
            Some(e) => Err(ConfigError(format!("opening the AP engine: {e}"))),
            None => Ok(node),
        }
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
        vec![self.ap.spawn_background(keyspaces)]
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
        self.config.peers.iter().find(|m| m.id == id)
    }

    /// A channel to a peer (lazy, cached).
    pub fn channel(&self, id: NodeId) -> NodeResult<Channel> {
        let mut channels = self.channels.lock().expect("channel lock");
        if let Some(ch) = channels.get(&id) {
            return Ok(ch.clone());
        }
        let member = self
            .member(id)
            .ok_or_else(|| NodeError::Internal(format!("unknown node id {id}")))?;
        let ch = self
            .dialer
            .channel(&member.addr)
            .map_err(|e| NodeError::Internal(format!("node {}: {e}", member.name)))?;
        channels.insert(id, ch.clone());
        Ok(ch)
    }

    /// Public-API client to a peer.
    pub fn kv_client(&self, id: NodeId) -> NodeResult<KvClient<Channel>> {
        Ok(KvClient::new(self.channel(id)?))
    }

    /// Internal-API client to a peer.
    pub fn internal_client(&self, id: NodeId) -> NodeResult<InternalClient<Channel>> {
        Ok(InternalClient::new(self.channel(id)?))
    }

    /// Looks up a keyspace, with an error listing those that exist.
    pub fn keyspace(&self, name: &str) -> NodeResult<KeyspaceDef> {
        let map = self.keyspaces.read().expect("keyspace lock");
        map.get(name)
            .cloned()
            .ok_or_else(|| NodeError::KeyspaceNotFound {
                name: name.to_string(),
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
        self.member(id)
            .map(|m| format!("{} ({})", m.name, m.addr))
            .unwrap_or_else(|| format!("node {id}"))
    }

    /// The single-owner store of a keyspace on this node (foundation mode, before replication).
    fn local_tree(&self, ks: &KeyspaceDef) -> NodeResult<RecordTree> {
        let mut map = self.local.lock().expect("local lock");
        if let Some(t) = map.get(&ks.id) {
            return Ok(t.clone());
        }
        let tree = self.engine.open_tree(&format!("owner/{}", ks.id))?;
        let rt = RecordTree::new(tree, self.engine.location());
        map.insert(ks.id, rt.clone());
        Ok(rt)
    }

    /// Reads a key from this node's owner store.
    pub fn local_get(&self, ks: &KeyspaceDef, key: &[u8]) -> NodeResult<Option<StoredRecord>> {
        Ok(self.local_tree(ks)?.get(key)?)
    }

    /// Writes (or deletes, with `None`) a key in this node's owner store; returns its revision.
    pub fn local_put(
        &self,
        ks: &KeyspaceDef,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> NodeResult<u64> {
        let tree = self.local_tree(ks)?;
        let rev = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        tree.put(
            key,
            &StoredRecord {
                version: Version::Revision(rev),
                value,
            },
        )?;
        tree.raw().flush()?;
        Ok(rev)
    }
}

/// Opens the engine a config asks for: sled in `data_dir`, else memory.
pub fn open_engine(config: &NodeConfig) -> Result<Arc<dyn Engine>, storage::StorageError> {
    match &config.data_dir {
        Some(dir) => storage::open_engine(storage::EngineKind::Sled, Some(dir)),
        None => storage::open_engine(storage::EngineKind::Memory, None),
    }
}

/// The node's membership as the AP engine's failure detector.
struct NodeLiveness(std::sync::Weak<Node>);

impl Liveness for NodeLiveness {
    fn is_alive(&self, node: NodeId) -> bool {
        self.0.upgrade().is_some_and(|n| n.membership.is_alive(node))
    }
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
