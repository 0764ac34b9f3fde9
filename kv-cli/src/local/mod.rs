//! `kv local`: a cluster of real `kv server` processes on loopback, kept in one folder (found
//! by `dir`: `--dir`, `KV_DIR`, `./.kv-local`, then a per-user default). The folder holds
//! `cluster.json` (names, addresses, each running node's pid and start time, whether fault
//! injection is on), one data directory and one log per node. Recovers from a crashed earlier
//! run: nodes whose recorded process is gone are restarted on their old ports with their old
//! data. A command that starts nodes either returns with every running node ready (`ready`)
//! or stops the nodes it started and says so: it never leaves a node behind an error.
//! Process control (spawning, signals, liveness) lives in `process`.

pub mod dir;
mod http;
mod process;
pub mod ready;
pub mod secure;

pub use dir::ClusterDir;
pub use process::ProcessId;

use anyhow::{anyhow, bail, Context, Result};
use chaos::process::Signal;
use process::Spawned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Name of the file describing the local cluster.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Cluster name of local clusters.
pub const LOCAL_CLUSTER_NAME: &str = "kv-local";
/// How long `kv local up` / `start` wait for the cluster to become ready (see `ready`).
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
    /// Address of the client API.
    pub addr: String,
    /// Address of the peer API (node-to-node traffic). `None` in a cluster made by an older
    /// `kv`, whose nodes serve both APIs on `addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Process id when started.
    pub pid: Option<u32>,
    /// The process's start time (clock ticks after boot), recorded with the pid: together
    /// they name the process exactly, even once the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// The HTTP address (`--http-listen`: metrics, status page, JSON API), chosen when the
    /// node starts; absent in folders made before nodes had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
}

impl LocalNode {
    /// The recorded process, if the node was started.
    pub fn process(&self) -> Option<ProcessId> {
        self.pid.map(|pid| ProcessId {
            pid,
            start_ticks: self.start_ticks,
        })
    }

    /// Every address the node listens on (client, then peer).
    pub fn listen_addrs(&self) -> Vec<&str> {
        std::iter::once(self.addr.as_str())
            .chain(self.peer_addr.as_deref())
            .collect()
    }

    /// The first of its addresses that another process holds, if any.
    fn busy_addr(&self) -> Option<&str> {
        self.listen_addrs()
            .into_iter()
            .find(|a| !process::port_free(a))
    }

    /// True when its recorded process runs.
    pub fn running(&self) -> bool {
        self.process().is_some_and(|p| p.alive())
    }

    fn record(&mut self, process: Option<ProcessId>) {
        self.pid = process.map(|p| p.pid);
        self.start_ticks = process.and_then(|p| p.start_ticks);
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
    /// Nodes run with TLS and tokens (`kv local up --secure`; material in `secure/`).
    #[serde(default)]
    pub secure: bool,
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
            .map(|n| match &n.peer_addr {
                Some(peer) => format!("{}={}/{peer}", n.name, n.addr),
                None => format!("{}={}", n.name, n.addr),
            })
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
    /// Make a throwaway CA, certificates and an admin token, and run the nodes with TLS and
    /// tokens (for a new cluster).
    pub secure: bool,
}

/// Starts (or restarts the missing nodes of) the local cluster in `dir` and waits until it is
/// ready. If that fails, or Ctrl-C interrupts it, the nodes it started are stopped again and
/// the error says so. `progress` receives one line per step, for people.
pub async fn up(dir: &Path, opts: &UpOptions, progress: &dyn Fn(&str)) -> Result<LocalCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cluster = match LocalCluster::load(dir)? {
        Some(c) => c,
        None => new_cluster(opts)?,
    };
    cluster.chaos |= opts.chaos;
    if opts.secure && !cluster.secure {
        bail!(
            "the cluster in {} was made without --secure and keeps its plaintext nodes; remove it first (kv local down --purge) to make a secure one",
            dir.display()
        );
    }
    if cluster.secure {
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        secure::SecureFiles::of(dir).create(&names)?;
    }
    let missing: Vec<usize> = (0..cluster.nodes.len())
        .filter(|i| !cluster.nodes[*i].running())
        .collect();
    // Check every port first, so a busy port starts nothing.
    for &i in &missing {
        let node = &cluster.nodes[i];
        if let Some(addr) = node.busy_addr() {
            bail!(
                "port of node {} ({addr}) is in use by another process; stop it (see `ss -ltnp`), or remove {} and run `kv local up --base-port PORT` to use other ports",
                node.name,
                dir.join(CLUSTER_FILE).display()
            );
        }
    }
    for &i in &missing {
        if let Some(pid) = cluster.nodes[i].pid {
            progress(&format!(
                "{}: pid {pid} from an earlier run is gone; restarting",
                cluster.nodes[i].name
            ));
        }
    }
    let mut started = Vec::new();
    let result = start_and_wait(dir, &mut cluster, &missing, &mut started, progress).await;
    undo_on_error(dir, &mut cluster, started, result)?;
    Ok(cluster)
}

/// A new cluster's nodes, each with a client and a peer port: free ports picked now, or with
/// `--base-port P` the client ports P, P+1, ... and then the peer ports right after them.
fn new_cluster(opts: &UpOptions) -> Result<LocalCluster> {
    let mut nodes = Vec::new();
    // Free ports are picked all at once (client, peer and HTTP port of every node), so no two
    // are the same.
    let free = match opts.base_port {
        0 => process::pick_free_ports(3 * opts.nodes)?,
        _ => Vec::new(),
    };
    let port = |offset: usize| -> Result<u16> {
        if opts.base_port == 0 {
            return Ok(free[offset]);
        }
        u16::try_from(offset)
            .ok()
            .and_then(|o| opts.base_port.checked_add(o))
            .ok_or_else(|| anyhow!("--base-port {} too high", opts.base_port))
    };
    for i in 0..opts.nodes {
        let client = port(i)?;
        let peer = port(opts.nodes + i)?;
        nodes.push(LocalNode {
            name: format!("n{}", i + 1),
            addr: format!("127.0.0.1:{client}"),
            peer_addr: Some(format!("127.0.0.1:{peer}")),
            pid: None,
            start_ticks: None,
            http_addr: free
                .get(2 * opts.nodes + i)
                .map(|p| format!("127.0.0.1:{p}")),
        });
    }
    Ok(LocalCluster {
        nodes,
        chaos: opts.chaos,
        secure: opts.secure,
    })
}

/// Spawns the nodes `which` (not running), records them in `cluster.json` and in `started`,
/// then waits until every running node is ready — failing at once if one of them ends.
async fn start_and_wait(
    dir: &Path,
    cluster: &mut LocalCluster,
    which: &[usize],
    started: &mut Vec<(usize, Spawned)>,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let peers = cluster.peers_arg();
    for &i in which {
        let spawned = spawn_recorded(dir, cluster, i, &peers, progress)?;
        started.push((i, spawned));
    }
    cluster.save(dir)?;
    // Nodes that were running before this command: their end is seen from their identity.
    let others: Vec<(String, ProcessId)> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !which.contains(i))
        .filter_map(|(_, n)| Some((n.name.clone(), n.process().filter(|p| p.alive())?)))
        .collect();
    let targets: Vec<ready::Target> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| which.contains(i) || others.iter().any(|(o, _)| *o == n.name))
        .map(|(_, n)| ready::Target {
            name: n.name.clone(),
            addr: n.addr.clone(),
        })
        .collect();
    let names = &cluster.nodes;
    let mut exited = || {
        for (i, spawned) in started.iter_mut() {
            if let Some(status) = spawned.exited() {
                return Some(format!(
                    "node {} exited during start-up ({status}); last lines of {}:\n{}",
                    names[*i].name,
                    spawned.log.display(),
                    process::log_tail(&spawned.log, 5)
                ));
            }
        }
        others.iter().find(|(_, p)| !p.alive()).map(|(name, p)| {
            format!(
                "node {name} (pid {}) stopped while waiting for the cluster to be ready; see {}",
                p.pid,
                dir.join(format!("{name}.log")).display()
            )
        })
    };
    progress(&format!(
        "waiting until every running node answers, sees every other and serves every CP partition (up to {} s)...",
        READY_TIMEOUT.as_secs()
    ));
    tokio::select! {
        r = ready::wait_ready(&targets, &mut exited, progress, dir, READY_TIMEOUT) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C) before the cluster was ready")),
    }
}

/// Passes `result` on; on an error, first stops the nodes this command `started` (and records
/// them as stopped), and adds that to the error.
fn undo_on_error(
    dir: &Path,
    cluster: &mut LocalCluster,
    started: Vec<(usize, Spawned)>,
    result: Result<()>,
) -> Result<()> {
    let Err(e) = result else {
        return Ok(());
    };
    if started.is_empty() {
        return Err(e);
    }
    let mut stopped = Vec::new();
    let mut problems = Vec::new();
    for (i, mut spawned) in started {
        let node = &mut cluster.nodes[i];
        match spawned.stop() {
            Ok(()) => {
                stopped.push(node.name.clone());
                node.record(None);
            }
            Err(err) => problems.push(format!(
                "could not stop {} (pid {}): {err:#}",
                node.name, spawned.id.pid
            )),
        }
    }
    if let Err(err) = cluster.save(dir) {
        problems.push(format!("could not update {CLUSTER_FILE}: {err:#}"));
    }
    let mut msg = format!("{e:#}\n");
    if !stopped.is_empty() {
        msg.push_str(&format!(
            "stopped the node(s) this command started ({}); logs and data stay in {}",
            stopped.join(", "),
            dir.display()
        ));
    }
    for p in problems {
        msg.push_str(&format!("\n{p}"));
    }
    Err(anyhow!(msg))
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
        if let Some(p) = node.process() {
            if process::terminate(&p, Signal::Term)? {
                stopped += 1;
            }
        }
        node.record(None);
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
    let running = node.process().filter(|p| p.alive());
    if let Some(p) = running {
        let signal = match how {
            Stop::Kill => Signal::Kill,
            Stop::Term => Signal::Term,
        };
        process::terminate(&p, signal)?;
    }
    node.record(None);
    let node = node.clone();
    cluster.save(dir)?;
    Ok(NodeChange {
        node,
        pid_before: running.map(|p| p.pid),
    })
}

/// Starts node `i` again with its data (if it does not run) and waits until every running
/// node is ready; if that fails, stops it again and says so.
pub async fn start_node(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    progress: &dyn Fn(&str),
) -> Result<NodeChange> {
    let pid_before = cluster.nodes[i]
        .process()
        .filter(|p| p.alive())
        .map(|p| p.pid);
    let which = if pid_before.is_none() {
        let node = &cluster.nodes[i];
        if let Some(addr) = node.busy_addr() {
            bail!(
                "port of node {} ({addr}) is in use by another process; stop it (see `ss -ltnp`)",
                node.name,
            );
        }
        vec![i]
    } else {
        Vec::new()
    };
    let mut started = Vec::new();
    let result = start_and_wait(dir, cluster, &which, &mut started, progress).await;
    undo_on_error(dir, cluster, started, result)?;
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
    let pid_before = cluster.nodes[i]
        .process()
        .filter(|p| p.alive())
        .map(|p| p.pid);
    if pid_before.is_none() {
        let node = &cluster.nodes[i];
        // A node killed a moment ago holds its port until its last thread has exited.
        let start = std::time::Instant::now();
        while let Some(addr) = node.busy_addr() {
            if start.elapsed() > KILL_TIMEOUT {
                bail!(
                    "port of node {} ({addr}) is in use by another process; stop it (see `ss -ltnp`)",
                    node.name,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let peers = cluster.peers_arg();
        let _spawned = spawn_recorded(dir, cluster, i, &peers, progress)?;
        cluster.save(dir)?;
    }
    Ok(NodeChange {
        node: cluster.nodes[i].clone(),
        pid_before,
    })
}

/// Starts node `i`'s server process, records its pid and start time in `cluster`, and says so.
fn spawn_recorded(
    dir: &Path,
    cluster: &mut LocalCluster,
    i: usize,
    peers: &str,
    progress: &dyn Fn(&str),
) -> Result<Spawned> {
    let grpc_ports: Vec<u16> = cluster
        .nodes
        .iter()
        .flat_map(LocalNode::listen_addrs)
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    http::ensure_http_port(&mut cluster.nodes[i], &grpc_ports, progress)?;
    let secure = cluster.secure.then(|| secure::SecureFiles::of(dir));
    let spawned = process::spawn_server(
        dir,
        &cluster.nodes[i],
        peers,
        cluster.chaos,
        secure.as_ref(),
    )?;
    let node = &mut cluster.nodes[i];
    node.record(Some(spawned.id));
    progress(&format!(
        "started {} on {} (pid {}, HTTP {}, log {})",
        node.name,
        node.addr,
        spawned.id.pid,
        node.http_addr.as_deref().unwrap_or("-"),
        spawned.log.display()
    ));
    Ok(spawned)
}
