//! The node: configuration, ring, keyspaces, storage and peer connections, and the request
//! paths that the gRPC services call. **Architecture invariant:** every request is validated
//! (key, value, keyspace, options) before anything is read or written.

use crate::config::{ConfigError, NodeConfig};
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
    pub ring: Ring,
    /// Keyspace definitions by name.
    pub keyspaces: RwLock<BTreeMap<String, KeyspaceDef>>,
    /// The storage engine.
    pub engine: Arc<dyn Engine>,
    /// Liveness of peers.
    pub membership: Membership,
    dialer: Arc<dyn Dialer>,
    channels: Mutex<BTreeMap<NodeId, Channel>>,
    local: Mutex<BTreeMap<u32, RecordTree>>,
    revision: AtomicU64,
}

impl Node {
    /// Builds a node from its config, engine and dialer.
    pub fn new(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        dialer: Arc<dyn Dialer>,
    ) -> Result<Arc<Node>, ConfigError> {
        let me = config.validate()?;
        let ring = Ring::new(&config.peers, config.partitions, config.tokens_per_node)
            .map_err(|e| ConfigError(e.to_string()))?;
        let keyspaces = KeyspaceDef::builtin()
            .into_iter()
            .map(|k| (k.name.clone(), k))
            .collect();
        let membership = Membership::new(me.id, &config.peers);
        Ok(Arc::new(Node {
            config,
            me,
            ring,
            keyspaces: RwLock::new(keyspaces),
            engine,
            membership,
            dialer,
            channels: Mutex::new(BTreeMap::new()),
            local: Mutex::new(BTreeMap::new()),
            revision: AtomicU64::new(0),
        }))
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
