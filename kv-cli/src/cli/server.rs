//! `kv server`: the flags of one node.

use clap::Args;
use std::path::PathBuf;

/// `kv server` flags.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This node's name (must appear in --peers).
    #[arg(long)]
    pub name: String,
    /// Address of the client API (defaults to this node's client address in --peers).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the peer API, node-to-node traffic (defaults to this node's peer address in
    /// --peers; a node given one address serves both APIs on it).
    #[arg(long)]
    pub peer_listen: Option<String>,
    /// All nodes of the cluster: name=client-host:port/peer-host:port,... (identical on every
    /// node; name=host:port serves both APIs on one port).
    #[arg(long)]
    pub peers: String,
    /// Tokens and their roles, one per line: TOKEN NAME GRANTS (see docs/security.md).
    /// Without it every client may do everything.
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA, naming the node (SAN).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present certificates it signed.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Cluster name; nodes with another name are refused.
    #[arg(long, default_value = "kv")]
    pub cluster_name: String,
    /// Data directory (sled). Without it data lives in memory and is lost on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of partitions Q (a power of two).
    #[arg(long, default_value_t = kv_server::types::DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = kv_server::types::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Accept fault-injection requests (drop/delay traffic, skew the clock).
    #[arg(long)]
    pub chaos: bool,
    /// AP anti-entropy period (Merkle tree exchange between replicas), in milliseconds.
    #[arg(long, default_value_t = kv_server::ap::engine::DEFAULT_ANTI_ENTROPY_INTERVAL_MS)]
    pub anti_entropy_interval_ms: u64,
    /// HTTP address for /metrics, /healthz, /readyz, the status page (/) and the JSON API
    /// (/v1/kv/...); off when not given. See docs/operations.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Log line format: text for people, json for log collectors (one object per line).
    #[arg(long, value_enum, default_value_t = crate::arg_enums::LogFormat::Text)]
    pub log_format: crate::arg_enums::LogFormat,
}
