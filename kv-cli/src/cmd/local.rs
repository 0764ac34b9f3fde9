//! `kv local up|down|status|endpoints|kill|stop|start|restart`: renders what the `local`
//! module does to the cluster folder and its processes.

use super::Ctx;
use crate::cli::LocalCmd;
use crate::local::{self, ClusterDir, LocalCluster, LocalNode, NodeChange, Stop, UpOptions};
use crate::output::{CliError, Exit};
use serde_json::{json, Value};

/// Runs one `kv local` command.
pub async fn run(ctx: &Ctx, command: LocalCmd) -> Result<Exit, CliError> {
    let dir = ctx.dir();
    let progress = |m: &str| ctx.out.note(m);
    match command {
        LocalCmd::Up {
            nodes,
            base_port,
            foreground,
            chaos,
            secure,
        } => {
            let opts = UpOptions {
                nodes,
                base_port,
                chaos,
                secure,
            };
            let cluster = local::up(&dir.path, &opts, &progress).await?;
            let endpoints = cluster.endpoints().join(",");
            ctx.out.result(
                with_dir(
                    &dir,
                    json!({"nodes": nodes_json(&cluster.nodes), "endpoints": cluster.endpoints()}),
                ),
                || {
                    let mut text = format!("local cluster ready in {dir}");
                    for n in &cluster.nodes {
                        text.push_str(&format!("\n  {}  {}", n.name, n.addr));
                        if let Some(http) = &n.http_addr {
                            text.push_str(&format!("  (HTTP {http})"));
                        }
                    }
                    text.push_str(&format!("\nendpoints: {endpoints}"));
                    if foreground {
                        text.push_str("\npress Ctrl-C to stop");
                    }
                    text
                },
            )?;
            if foreground {
                tokio::signal::ctrl_c()
                    .await
                    .map_err(|e| anyhow::anyhow!("waiting for Ctrl-C: {e}"))?;
                down(ctx, &dir, false)?;
            }
        }
        LocalCmd::Down { purge } => down(ctx, &dir, purge)?,
        LocalCmd::Status => {
            let cluster = existing(&dir)?;
            ctx.out.result(
                with_dir(&dir, json!({"nodes": nodes_json(&cluster.nodes)})),
                || {
                    let mut text = format!("local cluster in {dir}\n");
                    text.push_str(&format!(
                        "{:<6} {:<22} {:<22} {:<8} PROCESS",
                        "NODE", "ADDRESS", "HTTP", "PID"
                    ));
                    for n in &cluster.nodes {
                        text.push_str(&format!(
                            "\n{:<6} {:<22} {:<22} {:<8} {}",
                            n.name,
                            n.addr,
                            n.http_addr.as_deref().unwrap_or("-"),
                            n.pid.map_or("-".into(), |p| p.to_string()),
                            if n.running() { "running" } else { "stopped" }
                        ));
                    }
                    text
                },
            )?;
        }
        LocalCmd::Endpoints { nodes } => {
            let cluster = existing(&dir)?;
            let endpoints = if nodes.is_empty() {
                cluster.endpoints()
            } else {
                nodes
                    .iter()
                    .map(|name| {
                        node_index(&cluster, name, &dir).map(|i| cluster.nodes[i].addr.clone())
                    })
                    .collect::<Result<_, _>>()?
            };
            ctx.out
                .result(json!({"endpoints": endpoints}), || endpoints.join(","))?;
        }
        LocalCmd::Kill { node } => {
            let (mut cluster, i) = existing_node(&dir, &node)?;
            let change = local::stop_node(&dir.path, &mut cluster, i, Stop::Kill)?;
            print_change(ctx, &dir, "kill", &change, |c| match c.pid_before {
                Some(pid) => format!("killed {} (pid {pid}, SIGKILL)", c.node.name),
                None => format!("{} was not running", c.node.name),
            })?;
        }
        LocalCmd::Stop { node } => {
            let (mut cluster, i) = existing_node(&dir, &node)?;
            let change = local::stop_node(&dir.path, &mut cluster, i, Stop::Term)?;
            print_change(ctx, &dir, "stop", &change, |c| match c.pid_before {
                Some(pid) => format!("stopped {} (pid {pid})", c.node.name),
                None => format!("{} was not running", c.node.name),
            })?;
        }
        LocalCmd::Start { node } => {
            let (mut cluster, i) = existing_node(&dir, &node)?;
            let change = local::start_node(&dir.path, &mut cluster, i, &progress).await?;
            print_change(ctx, &dir, "start", &change, |c| match c.pid_before {
                Some(pid) => format!("{} is already running (pid {pid})", c.node.name),
                None => started(&c.node),
            })?;
        }
        LocalCmd::Restart { node } => {
            let (mut cluster, i) = existing_node(&dir, &node)?;
            let stopped = local::stop_node(&dir.path, &mut cluster, i, Stop::Term)?;
            let mut change = local::start_node(&dir.path, &mut cluster, i, &progress).await?;
            change.pid_before = stopped.pid_before;
            print_change(ctx, &dir, "restart", &change, |c| started(&c.node))?;
        }
    }
    Ok(Exit::Ok)
}

fn started(node: &LocalNode) -> String {
    format!(
        "started {} on {} (pid {}), ready",
        node.name,
        node.addr,
        node.pid.map_or("-".into(), |p| p.to_string())
    )
}

fn down(ctx: &Ctx, dir: &ClusterDir, purge: bool) -> Result<(), CliError> {
    let stopped = local::down(&dir.path, purge)?;
    ctx.out.result(
        with_dir(dir, json!({"stopped": stopped, "purged": purge})),
        || {
            format!(
                "stopped {stopped} node(s){} in {dir}",
                if purge { ", data removed" } else { "" }
            )
        },
    )
}

fn existing(dir: &ClusterDir) -> Result<LocalCluster, CliError> {
    match LocalCluster::load(&dir.path)? {
        Some(c) => Ok(c),
        None => Err(CliError::BadInput(format!(
            "no local cluster in {dir}; start one with `kv local up` (or pick another with --dir / KV_DIR)"
        ))),
    }
}

fn node_index(cluster: &LocalCluster, name: &str, dir: &ClusterDir) -> Result<usize, CliError> {
    cluster.index_of(name).ok_or_else(|| {
        CliError::BadInput(format!(
            "no node {name:?} in the local cluster in {dir}; its nodes are {}",
            cluster.names()
        ))
    })
}

fn existing_node(dir: &ClusterDir, name: &str) -> Result<(LocalCluster, usize), CliError> {
    let cluster = existing(dir)?;
    let i = node_index(&cluster, name, dir)?;
    Ok((cluster, i))
}

fn print_change(
    ctx: &Ctx,
    dir: &ClusterDir,
    action: &str,
    change: &NodeChange,
    text: impl FnOnce(&NodeChange) -> String,
) -> Result<(), CliError> {
    let n = &change.node;
    ctx.out.result(
        with_dir(
            dir,
            json!({
                "action": action,
                "node": n.name,
                "addr": n.addr,
                "pid_before": change.pid_before,
                "pid": n.pid,
                "running": n.running(),
            }),
        ),
        || text(change),
    )
}

fn nodes_json(nodes: &[LocalNode]) -> Value {
    nodes
        .iter()
        .map(|n| {
            json!({"name": n.name, "addr": n.addr, "peer_addr": n.peer_addr, "http": n.http_addr, "pid": n.pid, "running": n.running()})
        })
        .collect()
}

/// Adds the folder and the rule that chose it to a JSON result.
fn with_dir(dir: &ClusterDir, mut v: Value) -> Value {
    if let Value::Object(obj) = &mut v {
        obj.insert("dir".into(), json!(dir.path));
        obj.insert("dir_source".into(), json!(dir.source.name()));
    }
    v
}
