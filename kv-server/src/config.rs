//! Node configuration: identity, peers, cluster name, data directory and limits. Validated once
//! at start-up; a bad value is refused with a message that names it.

use crate::types::{
    Member, NodeId, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PARTITIONS, DEFAULT_TOKENS_PER_NODE,
};
use kv_core::limits::DEFAULT_MAX_WRITES_IN_FLIGHT;
use kv_core::net::validate_addr;
use std::path::{Path, PathBuf};
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
    /// Largest value accepted, in bytes. Every gRPC message limit derives from it
    /// (`kv_core::limits`).
    pub max_value_bytes: usize,
    /// Most writes this node handles at once; past it writes get `RESOURCE_EXHAUSTED`.
    pub max_writes_in_flight: usize,
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
            max_writes_in_flight: DEFAULT_MAX_WRITES_IN_FLIGHT,
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
        // Names are written one per line in the data directory's identity file.
        if self.cluster_name.chars().any(char::is_control) {
            return Err(ConfigError(
                "--cluster-name must not contain control characters".into(),
            ));
        }
        if let Some(p) = self
            .peers
            .iter()
            .find(|p| p.name.chars().any(char::is_control))
        {
            return Err(ConfigError(format!(
                "peer name {:?} contains control characters",
                p.name
            )));
        }
        if self.peers.is_empty() || self.peers.len() > MAX_PEERS {
            return Err(ConfigError(format!(
                "--peers lists {} nodes; a cluster has 1 to {MAX_PEERS}",
                self.peers.len()
            )));
        }
        for p in &self.peers {
            validate_addr(&p.addr).map_err(|e| ConfigError(format!("peer {}: {e}", p.name)))?;
            validate_addr(&p.peer_addr)
                .map_err(|e| ConfigError(format!("peer {} (peer address): {e}", p.name)))?;
        }
        for (i, a) in self.peers.iter().enumerate() {
            for b in &self.peers[i + 1..] {
                let a_addrs = [&a.addr, &a.peer_addr];
                if a.name == b.name || a_addrs.contains(&&b.addr) || a_addrs.contains(&&b.peer_addr)
                {
                    return Err(ConfigError(format!(
                        "--peers lists {} and {}: names and addresses must be unique",
                        peer_string(a),
                        peer_string(b)
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
        if self.max_writes_in_flight == 0 {
            return Err(ConfigError("max_writes_in_flight must be positive".into()));
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
        self.peers.iter().map(peer_string).collect()
    }
}

/// Separates a member's client address from its peer address in a `--peers` entry.
pub const PEER_ADDR_SEPARATOR: char = '/';

/// A member as a `--peers` entry: "name=client" when both APIs share one address, else
/// "name=client/peer".
pub fn peer_string(m: &Member) -> String {
    if m.addr == m.peer_addr {
        format!("{}={}", m.name, m.addr)
    } else {
        format!("{}={}{PEER_ADDR_SEPARATOR}{}", m.name, m.addr, m.peer_addr)
    }
}

/// Name of the file in the data directory that says whose data it is.
pub const IDENTITY_FILE: &str = "kv-identity";
/// Format of the identity file.
const IDENTITY_FORMAT: &str = "1";

/// Whose data a data directory holds: written at a node's first start, checked at every later
/// one. A node's id is its position in `--peers`, and its Raft votes and logs are kept under
/// that id: a reordered peer list or another node's `--data-dir` would reuse them as someone
/// else's. Addresses are not part of it: a node may move to another address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Cluster name.
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// This node's id (its position in the peer list).
    pub id: NodeId,
    /// Every member's name, in peer-list (id) order.
    pub peer_names: Vec<String>,
}

impl Identity {
    /// The identity `config` gives this node (`me` is its validated member entry).
    pub fn of(config: &NodeConfig, me: &Member) -> Identity {
        Identity {
            cluster: config.cluster_name.clone(),
            node: me.name.clone(),
            id: me.id,
            peer_names: config.peers.iter().map(|m| m.name.clone()).collect(),
        }
    }

    /// Fingerprint of the peer list's names in order (which fixes every node's id).
    pub fn peers_fingerprint(&self) -> u64 {
        kv_core::placement::key_hash(self.peer_names.join(",").as_bytes())
    }

    fn encode(&self) -> String {
        format!(
            "format={IDENTITY_FORMAT}\ncluster={}\nnode={}\nid={}\npeer_names={}\npeers_fingerprint={:016x}\n",
            self.cluster,
            self.node,
            self.id,
            self.peer_names.join(","),
            self.peers_fingerprint()
        )
    }

    fn decode(text: &str) -> Result<Identity, String> {
        let fields: std::collections::BTreeMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once('=')).collect();
        let field = |k: &str| fields.get(k).copied().ok_or(format!("no {k} line"));
        if field("format")? != IDENTITY_FORMAT {
            return Err(format!("unknown format {:?}", field("format")?));
        }
        let identity = Identity {
            cluster: field("cluster")?.to_string(),
            node: field("node")?.to_string(),
            id: field("id")?
                .parse()
                .map_err(|_| "malformed id".to_string())?,
            peer_names: field("peer_names")?
                .split(',')
                .map(str::to_string)
                .collect(),
        };
        if field("peers_fingerprint")? != format!("{:016x}", identity.peers_fingerprint()) {
            return Err("the peer names do not match their fingerprint".into());
        }
        Ok(identity)
    }

    /// Why a node with identity `self` must not use data written by `stored`, if it must not.
    fn mismatch(&self, stored: &Identity, dir: &Path) -> Option<String> {
        let dir = dir.display();
        if stored.cluster != self.cluster || stored.node != self.node {
            return Some(format!(
                "data directory {dir} belongs to node {} (id {}) of cluster {:?}, and this is node {} of cluster {:?}: give every node its own --data-dir",
                stored.node, stored.id, stored.cluster, self.node, self.cluster
            ));
        }
        if stored.id != self.id || stored.peers_fingerprint() != self.peers_fingerprint() {
            return Some(format!(
                "data directory {dir} was created when --peers listed [{}] (node {} had id {}); now it lists [{}] (id {}). A node's id is its position in --peers: list the peers in their original order",
                stored.peer_names.join(","),
                stored.node,
                stored.id,
                self.peer_names.join(","),
                self.id
            ));
        }
        None
    }
}

/// Reads the identity stored in `dir`; `None` when the directory has none yet.
pub fn read_identity(dir: &Path) -> Result<Option<Identity>, ConfigError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Identity::decode(&text).map(Some).map_err(|e| {
            ConfigError(format!(
                "{} is damaged ({e}); it says which node the data directory belongs to",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError(format!("reading {}: {e}", path.display()))),
    }
}

/// Refuses a data directory that belongs to another node, cluster or peer order.
pub fn check_identity(dir: &Path, mine: &Identity) -> Result<(), ConfigError> {
    match read_identity(dir)? {
        Some(stored) => match mine.mismatch(&stored, dir) {
            Some(why) => Err(ConfigError(why)),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Stores `mine` in `dir` unless an identity is already there (checked by `check_identity`);
/// written to a temporary file, synced and renamed, so a crash leaves either none or all of it.
pub fn store_identity(dir: &Path, mine: &Identity) -> Result<(), ConfigError> {
    use std::io::Write;
    if read_identity(dir)?.is_some() {
        return Ok(());
    }
    let io = |what: &str, e: std::io::Error| {
        ConfigError(format!("{what} in data directory {}: {e}", dir.display()))
    };
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating the identity file", e))?;
    file.write_all(mine.encode().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| io("writing the identity file", e))?;
    std::fs::rename(&tmp, dir.join(IDENTITY_FILE))
        .map_err(|e| io("naming the identity file", e))?;
    // The rename is durable only once the directory itself is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", e))
}

/// Parses "n1=127.0.0.1:7001/127.0.0.1:7101,n2=..." (client address, then peer address) or
/// "n1=127.0.0.1:7001,..." (one address serving both APIs); ids are 1-based positions.
pub fn parse_peers(spec: &str) -> Result<Vec<Member>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in spec.split(',').filter(|s| !s.trim().is_empty()).enumerate() {
        let (name, addrs) = item.trim().split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "peer {item:?} is malformed: expected name=host:port/peerhost:peerport, e.g. n1=127.0.0.1:7001/127.0.0.1:7101"
            ))
        })?;
        if name.is_empty() {
            return Err(ConfigError(format!("peer {item:?} has an empty name")));
        }
        let (addr, peer_addr) = addrs
            .split_once(PEER_ADDR_SEPARATOR)
            .unwrap_or((addrs, addrs));
        validate_addr(addr).map_err(|e| ConfigError(format!("peer {name}: {e}")))?;
        validate_addr(peer_addr)
            .map_err(|e| ConfigError(format!("peer {name} (peer address): {e}")))?;
        out.push(Member {
            id: (i + 1) as NodeId,
            name: name.to_string(),
            addr: addr.to_string(),
            peer_addr: peer_addr.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(spec: &str, name: &str) -> Identity {
        let cfg = NodeConfig::new(name, "c", parse_peers(spec).unwrap());
        let me = cfg.validate().unwrap();
        Identity::of(&cfg, &me)
    }

    #[test]
    fn a_data_directory_refuses_another_node_cluster_or_peer_order() {
        let dir = tempfile::tempdir().unwrap();
        let peers = "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003";
        let n1 = identity(peers, "n1");
        check_identity(dir.path(), &n1).expect("a fresh directory takes anyone");
        store_identity(dir.path(), &n1).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(n1.clone()));
        check_identity(dir.path(), &n1).expect("the same node restarts");
        let moved = identity(
            "n1=127.0.0.1:8001,n2=127.0.0.1:8002,n3=127.0.0.1:8003",
            "n1",
        );
        check_identity(dir.path(), &moved).expect("addresses may change");

        let swapped = identity(peers, "n2");
        let err = check_identity(dir.path(), &swapped)
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to node n1 (id 1)"), "{err}");
        assert!(err.contains("its own --data-dir"), "{err}");

        let reordered = identity(
            "n3=127.0.0.1:7003,n1=127.0.0.1:7001,n2=127.0.0.1:7002",
            "n1",
        );
        let err = check_identity(dir.path(), &reordered)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[n1,n2,n3]") && err.contains("[n3,n1,n2]"),
            "{err}"
        );
        assert!(err.contains("original order"), "{err}");
        // The same position but other neighbours: the other nodes' ids changed.
        let renamed = identity(
            "n1=127.0.0.1:7001,n3=127.0.0.1:7003,n2=127.0.0.1:7002",
            "n1",
        );
        assert!(check_identity(dir.path(), &renamed).is_err());

        let mut other_cluster = n1.clone();
        other_cluster.cluster = "d".into();
        assert!(check_identity(dir.path(), &other_cluster).is_err());

        store_identity(dir.path(), &swapped).unwrap();
        assert_eq!(
            read_identity(dir.path()).unwrap(),
            Some(n1),
            "an identity is never overwritten"
        );
    }

    #[test]
    fn a_damaged_identity_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let n1 = identity("n1=127.0.0.1:7001", "n1");
        store_identity(dir.path(), &n1).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("peer_names=n1", "peer_names=n9")).unwrap();
        let err = check_identity(dir.path(), &n1).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        let peers = parse_peers("n1=127.0.0.1:7001").unwrap();
        let err = NodeConfig::new("n1", "a\nb", peers).validate().unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
    }

    #[test]
    fn peers_parse_with_positional_ids() {
        let peers = parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1:7002").unwrap();
        assert_eq!(peers[1].id, 2);
        assert_eq!(peers[1].name, "n2");
        assert_eq!(
            peers[1].peer_addr, "127.0.0.1:7002",
            "one address serves both"
        );
    }

    #[test]
    fn a_peer_entry_may_give_the_peer_port_apart() {
        let spec = "n1=127.0.0.1:7001/127.0.0.1:7101,n2=127.0.0.1:7002/127.0.0.1:7102";
        let peers = parse_peers(spec).unwrap();
        assert_eq!(peers[0].addr, "127.0.0.1:7001");
        assert_eq!(peers[0].peer_addr, "127.0.0.1:7101");
        let cfg = NodeConfig::new("n1", "c", peers);
        cfg.validate().unwrap();
        assert_eq!(
            cfg.peer_strings().join(","),
            spec,
            "the handshake compares both"
        );
        let err = parse_peers("n1=127.0.0.1:7001/7101").unwrap_err();
        assert!(err.to_string().contains("peer n1 (peer address)"), "{err}");
        let clash = parse_peers("n1=127.0.0.1:7001/127.0.0.1:7002,n2=127.0.0.1:7002").unwrap();
        let err = NodeConfig::new("n1", "c", clash).validate().unwrap_err();
        assert!(err.to_string().contains("must be unique"), "{err}");
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
