//! Process control of local-cluster nodes: spawning `kv server`, signals, liveness of a pid,
//! free ports, and waiting until the running nodes see each other.

use super::{
    LocalCluster, LocalNode, KILL_TIMEOUT, LOCAL_CLUSTER_NAME, READY_TIMEOUT, STOP_TIMEOUT,
};
use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often liveness and readiness are polled.
const POLL: Duration = Duration::from_millis(50);
/// Deadline of one status request while waiting for readiness.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

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
    // Right after spawn the exec may not have set up the new argv yet, and cmdline reads
    // empty: that is our node starting, not a dead one. (Issue 15 replaces this heuristic.)
    state != Some("Z")
        && (cmdline.is_empty() || String::from_utf8_lossy(&cmdline).contains("server"))
}

/// True when nothing listens on `addr`.
pub fn port_free(addr: &str) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A port free right now on loopback.
pub fn pick_free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// Signals used to end a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the node flushes and exits.
    Term,
    /// SIGKILL: the node dies at once.
    Kill,
}

fn send(pid: u32, signal: Signal) {
    let name = match signal {
        Signal::Term => "-TERM",
        Signal::Kill => "-KILL",
    };
    // The process may have exited in between: failing to signal it is not an error.
    let _ = Command::new("kill")
        .arg(name)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `pid` to disappear; true if it did.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while pid_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// Ends `pid` (SIGTERM escalates to SIGKILL after `STOP_TIMEOUT`) and waits until it is gone.
/// Returns false when it was not running.
pub fn terminate(pid: u32, signal: Signal) -> Result<bool> {
    if !pid_alive(pid) {
        return Ok(false);
    }
    send(pid, signal);
    if signal == Signal::Term && !wait_gone(pid, STOP_TIMEOUT) {
        send(pid, Signal::Kill);
    }
    if !wait_gone(pid, KILL_TIMEOUT) {
        bail!("process {pid} did not exit after SIGKILL");
    }
    Ok(true)
}

/// Spawns `kv server` for `node` in its own process group, logging to `dir/NAME.log`, with its
/// data in `dir/NAME`. Returns the pid and the log's path.
pub fn spawn_server(
    dir: &Path,
    node: &LocalNode,
    peers: &str,
    chaos: bool,
) -> Result<(u32, PathBuf)> {
    let exe = std::env::current_exe().context("finding the kv binary")?;
    let data = dir.join(&node.name);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log_path = dir.join(format!("{}.log", node.name));
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
        .arg(peers)
        .arg("--cluster-name")
        .arg(LOCAL_CLUSTER_NAME)
        .arg("--data-dir")
        .arg(&data)
        // The node's environment must not point it at another cluster's endpoints or folder.
        .env_remove("KV_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if chaos {
        cmd.arg("--chaos");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: Ctrl-C on `kv local up` must not kill detached nodes.
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting node {}", node.name))?;
    // Dropping a Child neither waits nor kills: the node outlives this command.
    Ok((child.id(), log_path))
}

/// The last `n` lines of a node's log (for start-up failures).
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until every running node (one with a pid) answers and sees every running node alive.
/// Fails fast when a node's process exits meanwhile.
pub async fn wait_ready(cluster: &LocalCluster, dir: &Path) -> Result<()> {
    let start = Instant::now();
    let running: Vec<&LocalNode> = cluster.nodes.iter().filter(|n| n.pid.is_some()).collect();
    let names: Vec<&str> = running.iter().map(|n| n.name.as_str()).collect();
    loop {
        let mut ready = 0;
        for node in &running {
            if !node.running() {
                let log = dir.join(format!("{}.log", node.name));
                bail!(
                    "node {} exited during start-up; last lines of {}:\n{}",
                    node.name,
                    log.display(),
                    log_tail(&log, 5)
                );
            }
            let mut cfg = kv_client::ClientConfig::new([node.addr.clone()]);
            cfg.seeds_only = true;
            cfg.timeout = READY_PROBE_TIMEOUT;
            let Ok(client) = kv_client::Client::connect(cfg).await else {
                continue;
            };
            let Ok(status) = client.status(Some(&node.addr)).await else {
                continue;
            };
            let sees_all = names.iter().all(|name| {
                status
                    .nodes
                    .iter()
                    .any(|s| s.name == *name && s.state == kv_proto::v1::NodeState::Alive as i32)
            });
            if sees_all {
                ready += 1;
            }
        }
        if ready == running.len() {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "the cluster was not ready after {} s ({ready} of {} running nodes see all the others); see the logs in {}",
                READY_TIMEOUT.as_secs(),
                running.len(),
                dir.display()
            );
        }
        tokio::time::sleep(POLL * 2).await;
    }
}
