//! Types every layer of the node shares: node ids, keyspace definitions, versions and limits.

use serde::{Deserialize, Serialize};

/// A node's id: its 1-based position in the cluster's peer list (identical on every node).
pub type NodeId = u64;

pub use kv_core::limits::{
    DEFAULT_MAX_VALUE_BYTES, DEFAULT_PARTITIONS, DEFAULT_REPLICAS, DEFAULT_TOKENS_PER_NODE,
    MAX_KEY_BYTES,
};

/// One member of the static cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// 1-based position in the peer list.
    pub id: NodeId,
    /// Human name, unique in the cluster (e.g. "n1").
    pub name: String,
    /// Address of its client API ("host:port"): what clients and the `Ring` call see.
    pub addr: String,
    /// Address of its peer API (node-to-node traffic); equal to `addr` for a node that serves
    /// both APIs on one port (simulations, or a one-address `--peers` entry).
    pub peer_addr: String,
}

/// Replication mode of a keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// One Raft group per partition: linearizable, unavailable on a minority side.
    Cp,
    /// Dynamo-style: sloppy quorum, hinted handoff, last-write-wins.
    Ap,
}

/// A keyspace definition (cluster metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceDef {
    /// Unique name.
    pub name: String,
    /// Small integer id, unique in the cluster; namespaces storage and Raft groups.
    pub id: u32,
    /// CP or AP.
    pub mode: Mode,
    /// Replication factor N.
    pub replicas: u32,
    /// AP default read quorum R (0 = majority of N).
    pub read_replicas: u32,
    /// AP default write quorum W (0 = majority of N).
    pub write_replicas: u32,
}

impl KeyspaceDef {
    /// The keyspaces every cluster starts with: `cp` (id 1) and `ap` (id 2), N=3.
    pub fn builtin() -> Vec<KeyspaceDef> {
        vec![
            KeyspaceDef {
                name: "cp".into(),
                id: 1,
                mode: Mode::Cp,
                replicas: DEFAULT_REPLICAS,
                read_replicas: 0,
                write_replicas: 0,
            },
            KeyspaceDef {
                name: "ap".into(),
                id: 2,
                mode: Mode::Ap,
                replicas: DEFAULT_REPLICAS,
                read_replicas: 0,
                write_replicas: 0,
            },
        ]
    }
}

/// Hybrid logical clock timestamp. The derived order (physical_ms, logical, node_id) is total,
/// so last-write-wins ties break on node id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Wall-clock milliseconds (the largest seen).
    pub physical_ms: u64,
    /// Counter among events with the same physical_ms.
    pub logical: u32,
    /// The node that issued the timestamp.
    pub node_id: NodeId,
}

/// The version a write committed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// CP: the Raft log index of the write.
    Revision(u64),
    /// AP: the coordinator's timestamp.
    Hlc(Hlc),
}
