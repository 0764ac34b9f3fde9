//! `kv local`: a cluster of real `kv server` processes on loopback, kept in one folder
//! (`./.kv-local` by default). The folder holds `cluster.json` (names, addresses, pids), one data
//! directory and one log per node. Recovers from a crashed earlier run: stale pids are detected
//! and the missing nodes restarted on their old ports with their old data.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the file describing the local cluster.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Cluster name of local clusters.
pub const LOCAL_CLUSTER_NAME: &str = "kv-local";
/// How long `kv local up` waits for the cluster to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `kv local down` waits for a node to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The local cluster's description, saved as `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalCluster {
    /// Nodes in peer-list order.
    pub nodes: Vec<LocalNode>,
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

    /// The nodes' addresses, comma separated (a value for --endpoints / KV_ENDPOINTS).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn peers_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.addr))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// True when `pid` is a live `kv` process.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie (state Z) has exited but not been reaped.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    state != Some("Z") && String::from_utf8_lossy(&cmdline).contains("server")
}

fn port_free(addr: &str) -> bool {
    TcpListener::bind(addr).is_ok()
}

fn pick_free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// Options of `kv local up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The cluster folder.
    pub dir: PathBuf,
    /// Number of nodes (for a new cluster).
    pub nodes: usize,
    /// First port; 0 picks free ports.
    pub base_port: u16,
    /// Extra arguments for every `kv server`.
    pub server_args: Vec<String>,
}

/// Starts (or restarts the missing nodes of) the local cluster and waits until it is ready.
pub async fn up(opts: &UpOptions) -> Result<LocalCluster> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let mut cluster = match LocalCluster::load(&opts.dir)? {
        Some(c) => c,
        None => {
            let mut nodes = Vec::new();
            for i in 0..opts.nodes {
                let port = if opts.base_port == 0 {
                    pick_free_port()?
                } else {
                    opts.base_port
                        .checked_add(i as u16)
                        .ok_or_else(|| anyhow!("--base-port {} too high", opts.base_port))?
                };
                nodes.push(LocalNode {
                    name: format!("n{}", i + 1),
                    addr: format!("127.0.0.1:{port}"),
                    pid: None,
                });
            }
            LocalCluster { nodes }
        }
    };
    // Check every port first, so a busy port starts nothing.
    for node in &cluster.nodes {
        let running = node.pid.is_some_and(pid_alive);
        if !running && !port_free(&node.addr) {
            bail!(
                "port of node {} ({}) is in use by another process; stop it (see `ss -ltnp`), or remove {} and run `kv local up --base-port PORT` to use other ports",
                node.name,
                node.addr,
                opts.dir.join(CLUSTER_FILE).display()
            );
        }
    }
    let exe = std::env::current_exe().context("finding the kv binary")?;
    let peers = cluster.peers_arg();
    for node in cluster.nodes.iter_mut() {
        if let Some(pid) = node.pid {
            if pid_alive(pid) {
                continue;
            }
            eprintln!(
                "{}: stale pid {pid} from an earlier run (process gone); restarting",
                node.name
            );
            node.pid = None;
        }
        let data = opts.dir.join(&node.name);
        std::fs::create_dir_all(&data)?;
        let log_path = opts.dir.join(format!("{}.log", node.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .arg("--name")
            .arg(&node.name)
            .arg("--listen")
            .arg(&node.addr)
            .arg("--peers")
            .arg(&peers)
            .arg("--cluster-name")
            .arg(LOCAL_CLUSTER_NAME)
            .arg("--data-dir")
            .arg(&data)
            .args(&opts.server_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: Ctrl-C on `kv local up` must not kill detached nodes.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {}", node.name))?;
        node.pid = Some(child.id());
        eprintln!(
            "started {} on {} (pid {}, log {})",
            node.name,
            node.addr,
            child.id(),
            log_path.display()
        );
        // Dropping a Child neither waits nor kills: the node outlives this command.
        drop(child);
    }
    cluster.save(&opts.dir)?;
    eprintln!(
        "waiting until every node sees every other (up to {} s)...",
        READY_TIMEOUT.as_secs()
    );
    wait_ready(&cluster, &opts.dir).await?;
    Ok(cluster)
}

/// Waits until every node answers and sees every peer alive.
async fn wait_ready(cluster: &LocalCluster, dir: &Path) -> Result<()> {
    let start = Instant::now();
    let n = cluster.nodes.len();
    loop {
        let mut ready = 0;
        for node in &cluster.nodes {
            if let Some(pid) = node.pid {
                if !pid_alive(pid) {
                    let log = dir.join(format!("{}.log", node.name));
                    let tail = std::fs::read_to_string(&log)
                        .map(|t| {
                            t.lines()
                                .rev()
                                .take(5)
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default();
                    bail!(
                        "node {} exited during start-up; last lines of {}:\n{tail}",
                        node.name,
                        log.display()
                    );
                }
            }
            let mut cfg = kv_client::ClientConfig::new([node.addr.clone()]);
            cfg.seeds_only = true;
            cfg.timeout = Duration::from_millis(500);
            if let Ok(client) = kv_client::Client::connect(cfg).await {
                if let Ok(status) = client.status(Some(&node.addr)).await {
                    let alive = status
                        .nodes
                        .iter()
                        .filter(|s| s.state == kv_proto::v1::NodeState::Alive as i32)
                        .count();
                    if alive == n {
                        ready += 1;
                    }
                }
            }
        }
        if ready == n {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "the cluster was not ready after {} s ({ready} of {n} nodes see all peers); see the logs in {}",
                READY_TIMEOUT.as_secs(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Stops every node (SIGTERM, then SIGKILL after `STOP_TIMEOUT`); with `purge`, deletes the folder.
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
            if pid_alive(pid) {
                signal(pid, "TERM");
                let start = Instant::now();
                while pid_alive(pid) && start.elapsed() < STOP_TIMEOUT {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if pid_alive(pid) {
                    signal(pid, "KILL");
                }
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
