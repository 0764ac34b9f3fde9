//! Node configuration: identity, peers, cluster name, data directory and limits. Validated once
//! at start-up; a bad value is refused with a message that names it.

use crate::types::{
    Member, NodeId, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PARTITIONS, DEFAULT_TOKENS_PER_NODE,
};
use kv_core::net::validate_addr;
use std::path::PathBuf;
use std::time::Duration;

/// Default request deadline when the client sends none.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most peers a static cluster may list.
pub const MAX_PEERS: usize = 64;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name; must appear in `peers`.
    pub name: String,
    /// Cluster name; nodes of different clusters refuse each other.
    pub cluster_name: String,
    /// The full static peer list (this node included), identical on every node.
    pub peers: Vec<Member>,
    /// Where data lives; `None` keeps everything in memory (tests, simulation).
    pub data_dir: Option<PathBuf>,
    /// Q: fixed partitions (power of two).
    pub partitions: u32,
    /// T: virtual tokens per node.
    pub tokens_per_node: u32,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Accept fault-injection admin requests.
    pub chaos: bool,
    /// Deadline for requests that carry none.
    pub default_timeout: Duration,
    /// AP: period of anti-entropy rounds (Merkle tree exchange), in milliseconds.
    pub anti_entropy_interval_ms: u64,
    /// AP: period of hint replay, in milliseconds.
    pub hint_replay_interval_ms: u64,
    /// **Deliberate bug, tests only:** linearizable CP reads skip the read index, so an
    /// isolated old leader serves stale data. Exists to prove the checker catches it.
    pub unsafe_skip_read_index: bool,
}

/// A configuration error, naming the offending setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    /// A config for node `name` of a cluster with the given peers and defaults elsewhere.
    pub fn new(name: &str, cluster_name: &str, peers: Vec<Member>) -> Self {
        Self {
            name: name.to_string(),
            cluster_name: cluster_name.to_string(),
            peers,
            data_dir: None,
            partitions: DEFAULT_PARTITIONS,
            tokens_per_node: DEFAULT_TOKENS_PER_NODE,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            chaos: false,
            default_timeout: DEFAULT_REQUEST_TIMEOUT,
            anti_entropy_interval_ms: crate::ap::engine::DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
            hint_replay_interval_ms: crate::ap::engine::DEFAULT_HINT_REPLAY_INTERVAL_MS,
            unsafe_skip_read_index: false,
        }
    }

    /// Checks the config; returns this node's member entry.
    pub fn validate(&self) -> Result<Member, ConfigError> {
        if self.cluster_name.is_empty() {
            return Err(ConfigError("--cluster-name must not be empty".into()));
        }
        if self.peers.is_empty() || self.peers.len() > MAX_PEERS {
            return Err(ConfigError(format!(
                "--peers lists {} nodes; a cluster has 1 to {MAX_PEERS}",
                self.peers.len()
            )));
        }
        for p in &self.peers {
            validate_addr(&p.addr).map_err(|e| ConfigError(format!("peer {}: {e}", p.name)))?;
        }
        for (i, a) in self.peers.iter().enumerate() {
            for b in &self.peers[i + 1..] {
                if a.name == b.name || a.addr == b.addr {
                    return Err(ConfigError(format!(
                        "--peers lists {}={} and {}={}: names and addresses must be unique",
                        a.name, a.addr, b.name, b.addr
                    )));
                }
            }
        }
        if !self.partitions.is_power_of_two() || self.partitions < 2 {
            return Err(ConfigError(format!(
                "--partitions {} must be a power of two >= 2",
                self.partitions
            )));
        }
        if self.anti_entropy_interval_ms == 0 || self.hint_replay_interval_ms == 0 {
            return Err(ConfigError(
                "--anti-entropy-interval-ms and the hint replay interval must be positive".into(),
            ));
        }
        if self.max_value_bytes == 0 {
            return Err(ConfigError("--max-value-bytes must be positive".into()));
        }
        self.peers
            .iter()
            .find(|m| m.name == self.name)
            .cloned()
            .ok_or_else(|| {
                ConfigError(format!(
                    "--name {} is not in --peers ({}); a node must list itself",
                    self.name,
                    self.peers
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The peer list as "name=address" strings, in configuration order (sent at handshake).
    pub fn peer_strings(&self) -> Vec<String> {
        self.peers
            .iter()
            .map(|m| format!("{}={}", m.name, m.addr))
            .collect()
    }
}

/// Parses "n1=127.0.0.1:7001,n2=127.0.0.1:7002"; ids are 1-based positions.
pub fn parse_peers(spec: &str) -> Result<Vec<Member>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in spec.split(',').filter(|s| !s.trim().is_empty()).enumerate() {
        let (name, addr) = item.trim().split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "peer {item:?} is malformed: expected name=host:port, e.g. n1=127.0.0.1:7001"
            ))
        })?;
        if name.is_empty() {
            return Err(ConfigError(format!("peer {item:?} has an empty name")));
        }
        validate_addr(addr).map_err(|e| ConfigError(format!("peer {name}: {e}")))?;
        out.push(Member {
            id: (i + 1) as NodeId,
            name: name.to_string(),
            addr: addr.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_positional_ids() {
        let peers = parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1:7002").unwrap();
        assert_eq!(peers[1].id, 2);
        assert_eq!(peers[1].name, "n2");
    }

    #[test]
    fn malformed_peer_address_names_the_peer() {
        let err = parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1").unwrap_err();
        assert!(err.to_string().contains("peer n2"), "{err}");
        assert!(err.to_string().contains("malformed address"), "{err}");
        let err = parse_peers("n1").unwrap_err();
        assert!(err.to_string().contains("name=host:port"), "{err}");
    }

    #[test]
    fn node_must_list_itself_and_partitions_must_be_power_of_two() {
        let peers = parse_peers("n1=127.0.0.1:7001").unwrap();
        let err = NodeConfig::new("n9", "c", peers.clone())
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("n9"), "{err}");
        let mut cfg = NodeConfig::new("n1", "c", peers);
        cfg.partitions = 12;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("power of two"));
    }
}
