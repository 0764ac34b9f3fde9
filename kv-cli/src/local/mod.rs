//! `kv local`: a cluster of real `kv server` processes on loopback, kept in one folder (found
//! by `dir`: `--dir`, `KV_DIR`, `./.kv-local`, then a per-user default). The folder holds
//! `cluster.json` (names, addresses, pids, whether fault injection is on), one data directory
//! and one log per node. Recovers from a crashed earlier run: stale pids are detected and the
//! missing nodes restarted on their old ports with their old data. Process control (spawning,
//! signals, liveness, readiness) lives in `process`.

pub mod dir;
mod process;

pub use dir::ClusterDir;
pub use process::pid_alive;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Name of the file describing the local cluster.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Cluster name of local clusters.
pub const LOCAL_CLUSTER_NAME: &str = "kv-local";
/// How long `kv local up` / `start` wait for the cluster to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping a node waits for it to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed node may take to disappear from the process table.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of the local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalNode {
    /// Node name.
    pub name: String,
    /// Listen address.
    pub addr: String,
    /// Process id when started.
    pub pid: Option<u32>,
}

impl LocalNode {
    /// True when its process runs.
    pub fn running(&self) -> bool {
        self.pid.is_some_and(pid_alive)
    }
}

/// The local cluster's description, saved as `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalCluster {
    /// Nodes in peer-list order.
    pub nodes: Vec<LocalNode>,
    /// Nodes run with `--chaos` (fault injection allowed); kept for restarts.
    #[serde(default)]
    pub chaos: bool,
}

impl LocalCluster {
    /// Reads `dir/cluster.json`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<LocalCluster>> {
        let path = dir.join(CLUSTER_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a valid cluster file; remove it (kv local down --purge)",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CLUSTER_FILE);
        let tmp = dir.join(format!("{CLUSTER_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The nodes' addresses (values for --endpoints / KV_ENDPOINTS).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The index of node `name`, if there is one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node names, comma separated (for messages).
    pub fn names(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn peers_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.addr))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Options of `kv local up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes (for a new cluster).
    pub nodes: usize,
    /// First port (for a new cluster); 0 picks free ports.
    pub base_port: u16,
    /// Run the nodes with fault injection allowed (and remember it).
    pub chaos: bool,
}

/// Starts (or restarts the missing nodes of) the local cluster in `dir` and waits until it is
/// ready. `progress` receives one line per step, for people.
pub async fn up(dir: &Path, opts: &UpOptions, progress: &dyn Fn(&str)) -> Result<LocalCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cluster = match LocalCluster::load(dir)? {
        Some(c) => c,
        None => new_cluster(opts)?,
    };
    cluster.chaos |= opts.chaos;
    // Check every port first, so a busy port starts nothing.
    for node in &cluster.nodes {
        if !node.running() && !process::port_free(&node.addr) {
            bail!(
                "port of node {} ({}) is in use by another process; stop it (see `ss -ltnp`), or remove {} and run `kv local up --base-port PORT` to use other ports",
                node.name,
                node.addr,
                dir.join(CLUSTER_FILE).display()
            );
        }
    }
    for i in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[i];
        if let Some(pid) = node.pid {
            if pid_alive(pid) {
                continue;
            }
            progress(&format!(
                "{}: stale pid {pid} from an earlier run (process gone); restarting",
                node.name
            ));
            node.pid = None;
        }
        start_one(dir, &mut cluster, i, progress)?;
    }
    cluster.save(dir)?;
    progress(&format!(
        "waiting until every node sees every other (up to {} s)...",
        READY_TIMEOUT.as_secs()
    ));
    process::wait_ready(&cluster, dir).await?;
    Ok(cluster)
}

fn new_cluster(opts: &UpOptions) -> Result<LocalCluster> {
    let mut nodes = Vec::new();
    for i in 0..opts.nodes {
        let port = if opts.base_port == 0 {
            process::pick_free_port()?
        } else {
            u16::try_from(i)
                .ok()
                .and_then(|i| opts.base_port.checked_add(i))
                .ok_or_else(|| anyhow!("--base-port {} too high", opts.base_port))?
        };
        nodes.push(LocalNode {
            name: format!("n{}", i + 1),
            addr: format!("127.0.0.1:{port}"),
            pid: None,
        });
    }
    Ok(LocalCluster {
        nodes,
        chaos: opts.chaos,
    })
}

/// Spawns node `i` (not running) and records its pid in `cluster` (not yet saved).
fn start_one(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let peers = cluster.peers_arg();
    let chaos = cluster.chaos;
    let node = &mut cluster.nodes[i];
    let (pid, log) = process::spawn_server(dir, node, &peers, chaos)?;
    node.pid = Some(pid);
    progress(&format!(
        "started {} on {} (pid {pid}, log {})",
        node.name,
        node.addr,
        log.display()
    ));
    Ok(())
}

/// Stops every node (SIGTERM, then SIGKILL after `STOP_TIMEOUT`); with `purge`, deletes the
/// folder. Returns how many nodes were running.
pub fn down(dir: &Path, purge: bool) -> Result<usize> {
    let Some(mut cluster) = LocalCluster::load(dir)? else {
        if purge && dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        return Ok(0);
    };
    let mut stopped = 0;
    for node in cluster.nodes.iter_mut() {
        if let Some(pid) = node.pid.take() {
            if process::terminate(pid, process::Signal::Term)? {
                stopped += 1;
            }
        }
    }
    if purge {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    } else {
        cluster.save(dir)?;
    }
    Ok(stopped)
}

/// What a node command (`kill`, `stop`, `start`, `restart`) did.
#[derive(Debug, Clone)]
pub struct NodeChange {
    /// The node afterwards.
    pub node: LocalNode,
    /// Its pid before the command, if it was running.
    pub pid_before: Option<u32>,
}

/// Node control: how to end a node's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash, nothing flushed.
    Kill,
    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`: a clean shutdown.
    Term,
}

/// Ends node `i`'s process (if it runs) and records it as stopped.
pub fn stop_node(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    how: Stop,
) -> Result<NodeChange> {
    let node = &mut cluster.nodes[i];
    let pid_before = node.pid.filter(|p| pid_alive(*p));
    if let Some(pid) = node.pid.take() {
        let signal = match how {
            Stop::Kill => process::Signal::Kill,
            Stop::Term => process::Signal::Term,
        };
        process::terminate(pid, signal)?;
    }
    let node = node.clone();
    cluster.save(dir)?;
    Ok(NodeChange { node, pid_before })
}

/// Starts node `i` again with its data (if it does not run) and waits until every running
/// node sees every other.
pub async fn start_node(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    progress: &dyn Fn(&str),
) -> Result<NodeChange> {
    let pid_before = cluster.nodes[i].pid.filter(|p| pid_alive(*p));
    if pid_before.is_none() {
        let node = &cluster.nodes[i];
        if !process::port_free(&node.addr) {
            bail!(
                "port of node {} ({}) is in use by another process; stop it (see `ss -ltnp`)",
                node.name,
                node.addr
            );
        }
        cluster.nodes[i].pid = None;
        start_one(dir, cluster, i, progress)?;
        cluster.save(dir)?;
    }
    progress(&format!(
        "waiting until every running node sees every other (up to {} s)...",
        READY_TIMEOUT.as_secs()
    ));
    process::wait_ready(cluster, dir).await?;
    Ok(NodeChange {
        node: cluster.nodes[i].clone(),
        pid_before,
    })
}

/// Starts node `i` again with its data (if it does not run) without waiting for the cluster:
/// for `kv chaos restart`, where injected faults may keep the cluster from ever being ready.
pub fn spawn_node(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    progress: &dyn Fn(&str),
) -> Result<NodeChange> {
    let pid_before = cluster.nodes[i].pid.filter(|p| pid_alive(*p));
    if pid_before.is_none() {
        let node = &cluster.nodes[i];
        // A node killed a moment ago holds its port until its last thread has exited.
        let start = std::time::Instant::now();
        while !process::port_free(&node.addr) {
            if start.elapsed() > KILL_TIMEOUT {
                bail!(
                    "port of node {} ({}) is in use by another process; stop it (see `ss -ltnp`)",
                    node.name,
                    node.addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.nodes[i].pid = None;
        start_one(dir, cluster, i, progress)?;
        cluster.save(dir)?;
    }
    Ok(NodeChange {
        node: cluster.nodes[i].clone(),
        pid_before,
    })
}
