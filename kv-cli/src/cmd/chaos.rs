//! `kv chaos`: faults on a running cluster. Network faults (partition, slow, skew, heal) go
//! through each node's `Chaos` call with `chaos::faults`; process faults (kill, restart, pause,
//! resume) act on a local cluster's processes through `local` and `chaos::process`.
//!
//! A node's `Chaos` call replaces its whole fault set and every `kv chaos` is a new process, so
//! what the nodes accepted is recorded in a file (`faults.json` in the local cluster's folder,
//! or a per-user file for `--endpoints`). That makes faults compose across commands and lets
//! `kv chaos restart` give a node its faults back. A fault recorded for a local process that no
//! longer runs is not held by anyone; `kv chaos heal` clears every node whatever the file says.

#[path = "chaos_target.rs"]
mod target;

use super::Ctx;
use crate::cli::ChaosCmd;
use crate::local::{self, LocalCluster, Stop};
use crate::output::{CliError, Exit};
use anyhow::anyhow;
use chaos::faults::{ClusterFaults, FaultError, NodeFaults};
use kv_client::{Client, ClientConfig};
use kv_server::repair::flip::Selection;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use target::{fault_error, is_paused, RecordedNode, Target};

/// The record of injected faults in a local cluster's folder.
pub const FAULTS_FILE: &str = "faults.json";
/// How often a restarted node is asked whether it answers.
const ANSWER_POLL: Duration = Duration::from_millis(100);
/// Deadline of one such question.
const ANSWER_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs one `kv chaos` command.
pub async fn run(ctx: &Ctx, command: ChaosCmd) -> Result<Exit, CliError> {
    let mut target = Target::resolve(ctx).await?;
    match command {
        ChaosCmd::Kill { node } => kill(ctx, &mut target, &node)?,
        ChaosCmd::Restart { node } => restart(ctx, &mut target, &node).await?,
        ChaosCmd::Pause { node } => signal(ctx, &target, &node, true)?,
        ChaosCmd::Resume { node } => signal(ctx, &target, &node, false)?,
        ChaosCmd::Partition {
            nodes,
            from,
            one_way,
        } => {
            let side: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let other: Vec<&str> = if from.is_empty() {
                target
                    .names()
                    .into_iter()
                    .filter(|n| !side.contains(n))
                    .collect()
            } else {
                from.iter().map(String::as_str).collect()
            };
            let (a, b) = (side.join(", "), other.join(", "));
            if other.is_empty() {
                return Err(CliError::BadInput(format!(
                    "nothing to cut {a} off from: the cluster has no other node"
                )));
            }
            let what = if one_way {
                format!(
                    "dropping every message from {a} to {b}; messages from {b} to {a} still arrive"
                )
            } else {
                format!("cut {a} off from {b}, both ways")
            };
            network(ctx, &target, "partition", what, |f| {
                if !one_way {
                    return f.partition(&side, &other);
                }
                for s in &side {
                    for o in &other {
                        f.partition_one_way(s, o)?;
                    }
                }
                Ok(())
            })
            .await?
        }
        ChaosCmd::Slow { from, to, delay_ms } => {
            let what = match delay_ms {
                0 => format!("{from}'s messages to {to} are no longer delayed"),
                ms => format!("{from}'s messages to {to} are delayed by {ms} ms"),
            };
            network(ctx, &target, "slow", what, |f| f.slow(&from, &to, delay_ms)).await?
        }
        ChaosCmd::Skew { node, ms } => {
            let what = match ms {
                0 => format!("{node}'s clock is back to the real time"),
                ms => format!("{node}'s clock is {}", skew_text(ms)),
            };
            network(ctx, &target, "skew", what, |f| f.skew(&node, ms)).await?
        }
        ChaosCmd::Heal => heal(ctx, &target).await?,
        ChaosCmd::Corrupt {
            node,
            key,
            count,
            seed,
        } => {
            let selection = match count {
                _ if !key.is_empty() => Selection::Keys(
                    key.into_iter()
                        .map(|k| (ctx.global.keyspace.clone(), k.into_bytes()))
                        .collect(),
                ),
                Some(count) => Selection::Random { count, seed },
                None => {
                    return Err(CliError::BadInput(
                        "say which records to flip: -k KEYSPACE --key KEY, or --count N".into(),
                    ))
                }
            };
            corrupt(ctx, &mut target, &node, &selection)?
        }
        ChaosCmd::Status => {
            let record = target.load_record(ctx);
            let held = target.held(&record)?;
            print(ctx, &target, "status", "faults in place".into(), &held)?
        }
    }
    Ok(Exit::Ok)
}

/// Changes the cluster's network faults with `change` and sends each node whose faults changed
/// its new set.
async fn network(
    ctx: &Ctx,
    target: &Target,
    action: &str,
    what: String,
    change: impl FnOnce(&mut ClusterFaults) -> Result<(), FaultError>,
) -> Result<(), CliError> {
    let record = target.load_record(ctx);
    let held = target.held(&record)?;
    let mut next = held.clone();
    change(&mut next).map_err(|e| fault_error(target, e))?;
    target.check_can_take(&next.changed_since(&held))?;
    let mut client = target.client(held)?;
    let result = client.set(next).await;
    // What the nodes that answered accepted is recorded even when another did not answer.
    target.save(&record, client.faults(), false)?;
    result.map_err(|e| fault_error(target, e))?;
    print(ctx, target, action, what, client.faults())
}

/// Resumes every paused local node, then clears every node's network faults.
async fn heal(ctx: &Ctx, target: &Target) -> Result<(), CliError> {
    let mut resumed = Vec::new();
    let mut down = Vec::new();
    // First the paused nodes: a frozen node cannot take its Chaos call.
    for name in target.names() {
        match (target.process_state(name), target.running_pid(name)) {
            (Some("paused"), Some(pid)) => {
                chaos::process::resume(pid).map_err(|e| CliError::Other(e.into()))?;
                settle(name, pid, false)?;
                resumed.push(name.to_string());
            }
            (Some("down"), _) => down.push(name.to_string()),
            _ => {}
        }
    }
    let record = target.load_record(ctx);
    let held = target.held(&record)?;
    let mut client = target.client(held)?;
    let result = client.heal_all().await;
    target.save(&record, client.faults(), true)?;
    match result {
        Ok(()) => {}
        // A stopped node holds no fault: its call failing is expected. The nodes after it were
        // called all the same; one of them still holding a fault is reported below.
        Err(FaultError::Call { node, .. }) if down.contains(&node) => {}
        Err(e) => return Err(fault_error(target, e)),
    }
    let failed: Vec<&str> = target
        .names()
        .into_iter()
        .filter(|n| !down.iter().any(|d| d == n) && !client.faults().node(n).is_clear())
        .collect();
    if !failed.is_empty() {
        return Err(CliError::Unavailable(format!(
            "node(s) {} did not answer; their faults stay in place: run `kv chaos heal` again",
            failed.join(", ")
        )));
    }
    let mut what = "every network fault removed".to_string();
    if !resumed.is_empty() {
        what.push_str(&format!("; resumed {}", resumed.join(", ")));
    }
    for d in &down {
        what.push_str(&format!(
            "\n{d} is not running: `kv chaos restart {d}` starts it again"
        ));
    }
    print(ctx, target, "heal", what, client.faults())
}

/// `kv chaos kill NODE`: SIGKILL, recorded as stopped in the cluster file.
fn kill(ctx: &Ctx, target: &mut Target, node: &str) -> Result<(), CliError> {
    let n = target.local_node("kill", node)?;
    let change = local::stop_node(&n.dir.path, n.cluster, n.i, Stop::Kill)?;
    let record = target.load_record(ctx);
    let mut what = match change.pid_before {
        Some(pid) => format!(
            "killed {node} (pid {pid}) with SIGKILL: a crash, nothing flushed; `kv chaos restart {node}` starts it again with its data"
        ),
        None => format!("{node} was not running"),
    };
    if let Some(f) = record.nodes.get(node).map(RecordedNode::faults) {
        if change.pid_before.is_some() && !f.is_clear() {
            what.push_str(&format!(
                "\nits own network faults ended with it ({}); `kv chaos restart {node}` gives them back",
                node_faults_text(&f)
            ));
        }
    }
    let held = target.held(&record)?;
    print(ctx, target, "kill", what, &held)
}

/// `kv chaos corrupt NODE`: flips bytes in records of the stopped node's data directory.
fn corrupt(
    ctx: &Ctx,
    target: &mut Target,
    node: &str,
    selection: &Selection,
) -> Result<(), CliError> {
    let n = target.local_node("corrupt", node)?;
    let data = n.dir.path.join(node);
    if let Some(pid) = target.running_pid(node) {
        return Err(CliError::BadInput(format!(
            "node {node} is running (pid {pid}): corruption is written into a stopped node's data; stop it first (`kv local stop {node}` or `kv chaos kill {node}`), then start it again after"
        )));
    }
    if !data.is_dir() {
        return Err(CliError::BadInput(format!(
            "node {node} has no data directory at {} (it never started?)",
            data.display()
        )));
    }
    let engine = kv_server::storage::open_engine(kv_server::storage::EngineKind::Sled, Some(&data))
        .map_err(|e| CliError::Other(e.into()))?;
    let flipped = kv_server::repair::flip::flip(&engine, selection).map_err(|e| match e {
        kv_server::repair::flip::FlipError::Storage(s) => CliError::Other(s.into()),
        other => CliError::BadInput(other.to_string()),
    })?;
    drop(engine);
    let what = format!(
        "flipped one byte in {} record(s) of {node} (data in {}); start it again (`kv local start {node}`): reads and its start-up scrub repair them from the other replicas",
        flipped.len(),
        data.display()
    );
    let result = json!({
        "action": "corrupt",
        "node": node,
        "data_dir": data,
        "message": what,
        "flipped": flipped,
    });
    ctx.out.result(result, || {
        let mut text = what.clone();
        for f in &flipped {
            text.push_str(&format!(
                "\n  {node}  {}/{}  ({}, tree {}, byte {})",
                f.keyspace, f.key, f.mode, f.tree, f.offset
            ));
        }
        text
    })
}

/// `kv chaos pause NODE` (`pause`) or `kv chaos resume NODE`.
fn signal(ctx: &Ctx, target: &Target, node: &str, pause: bool) -> Result<(), CliError> {
    let action = if pause { "pause" } else { "resume" };
    if target.local.is_none() {
        return Err(CliError::BadInput(format!(
            "`kv chaos {action}` acts on a local cluster's processes; --endpoints gives only addresses (drop it to use the local cluster)"
        )));
    }
    if !target.names().contains(&node) {
        return Err(fault_error(
            target,
            FaultError::UnknownNode {
                node: node.into(),
                known: target.names().join(", "),
            },
        ));
    }
    let Some(pid) = target.running_pid(node) else {
        return Err(CliError::Unavailable(format!(
            "node {node} is not running (`kv chaos restart {node}` starts it again)"
        )));
    };
    let what = match (pause, is_paused(pid)) {
        (true, true) => format!("{node} is already paused"),
        (false, false) => format!("{node} is not paused"),
        (true, false) => {
            chaos::process::pause(pid).map_err(|e| CliError::Other(e.into()))?;
            settle(node, pid, true)?;
            format!(
                "paused {node} (pid {pid}) with SIGSTOP: its connections stay open but it answers nothing; `kv chaos resume {node}` or `kv chaos heal` lets it run"
            )
        }
        (false, true) => {
            chaos::process::resume(pid).map_err(|e| CliError::Other(e.into()))?;
            settle(node, pid, false)?;
            format!("resumed {node} (pid {pid}) with SIGCONT")
        }
    };
    let held = target.held(&target.load_record(ctx))?;
    print(ctx, target, action, what, &held)
}

/// Waits until `pid` shows the state a signal asked for: `kill` returns once the signal is
/// queued, while every thread of the process stops (or starts) a moment later, and what this
/// command prints (and the next command sees) must be the state the process is really in.
fn settle(node: &str, pid: u32, paused: bool) -> Result<(), CliError> {
    const SETTLE: Duration = Duration::from_secs(10);
    let start = Instant::now();
    while is_paused(pid) != paused {
        if start.elapsed() > SETTLE {
            let want = if paused { "stop" } else { "run again" };
            return Err(CliError::Other(anyhow!(
                "node {node} (pid {pid}) did not {want} within {}s of the signal; `kv chaos status` shows what it is doing",
                SETTLE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `kv chaos restart NODE`: starts it with its data, waits until it answers, and gives it back
/// the network faults recorded for it.
async fn restart(ctx: &Ctx, target: &mut Target, node: &str) -> Result<(), CliError> {
    let record = target.load_record(ctx);
    let progress = |m: &str| ctx.out.note(m);
    let n = target.local_node("restart", node)?;
    let dir = n.dir.path.clone();
    let change = local::spawn_node(&dir, n.cluster, n.i, &progress)?;
    let started = change.node.clone();
    if let Some(pid) = change.pid_before {
        let held = target.held(&record)?;
        return print(
            ctx,
            target,
            "restart",
            format!("{node} is already running (pid {pid})"),
            &held,
        );
    }
    wait_answers(target, node, &started.addr, &dir).await?;
    let held = target.held(&record)?;
    let mut next = held.clone();
    let restored = record.nodes.get(node).map(RecordedNode::faults);
    if let Some(f) = &restored {
        next.set_node(node, f.clone());
    }
    let mut client = target.client(held)?;
    let result = client.set(next).await;
    target.save(&record, client.faults(), false)?;
    result.map_err(|e| fault_error(target, e))?;
    let mut what = format!(
        "restarted {node} (pid {}) with its data; it answers on {}. It rejoins its Raft groups in the background: `kv status --wait-ms 30000` waits until the cluster is healthy",
        started.pid.map_or("-".into(), |p| p.to_string()),
        started.addr
    );
    if let Some(f) = restored.filter(|f| !f.is_clear()) {
        what.push_str(&format!(
            "\ngave {node} back its network faults: {}",
            node_faults_text(&f)
        ));
    }
    print(ctx, target, "restart", what, client.faults())
}

/// Waits until `node` answers a status call, failing if its process ends first.
async fn wait_answers(
    target: &Target,
    node: &str,
    addr: &str,
    dir: &std::path::Path,
) -> Result<(), CliError> {
    let start = Instant::now();
    loop {
        if target.local.is_some() && !is_running_now(dir, node) {
            return Err(CliError::Other(anyhow!(
                "node {node} exited during start-up; see {}",
                dir.join(format!("{node}.log")).display()
            )));
        }
        let mut cfg = ClientConfig::new([addr.to_string()]);
        cfg.seeds_only = true;
        cfg.timeout = ANSWER_PROBE_TIMEOUT;
        cfg.dialer = target.connection.dialer.clone();
        cfg.token = target.connection.token.clone();
        if let Ok(c) = Client::connect(cfg).await {
            if c.status(Some(addr)).await.is_ok() {
                return Ok(());
            }
        }
        if start.elapsed() > local::READY_TIMEOUT {
            return Err(CliError::Unavailable(format!(
                "node {node} does not answer on {addr} {} s after it started; see {}",
                local::READY_TIMEOUT.as_secs(),
                dir.join(format!("{node}.log")).display()
            )));
        }
        tokio::time::sleep(ANSWER_POLL).await;
    }
}

/// Whether `node` of the cluster in `dir` runs, as its cluster file says now.
fn is_running_now(dir: &std::path::Path, node: &str) -> bool {
    LocalCluster::load(dir)
        .ok()
        .flatten()
        .and_then(|c| c.nodes.into_iter().find(|n| n.name == node))
        .is_some_and(|n| n.running())
}

/// Prints what a command did and the faults in place afterwards.
fn print(
    ctx: &Ctx,
    target: &Target,
    action: &str,
    what: String,
    faults: &ClusterFaults,
) -> Result<(), CliError> {
    let nodes: Vec<Value> = target
        .nodes
        .iter()
        .map(|(name, addr)| {
            let f = faults.node(name);
            json!({
                "name": name,
                "addr": addr,
                "process": target.process_state(name),
                "drop_to": f.drop_to,
                "delay_ms": f.delay_ms,
                "clock_skew_ms": f.clock_skew_ms,
            })
        })
        .collect();
    let mut result = json!({"action": action, "message": what, "nodes": nodes});
    if let Some((dir, _)) = &target.local {
        result["dir"] = json!(dir.path);
    }
    ctx.out.result(result, || {
        let mut text = what.clone();
        for (name, addr) in &target.nodes {
            let f = faults.node(name);
            let process = target
                .process_state(name)
                .map(|p| format!(" {p:<8}"))
                .unwrap_or_default();
            text.push_str(&format!(
                "\n  {name:<4} {addr:<22}{process} {}",
                if f.is_clear() {
                    "no faults".to_string()
                } else {
                    node_faults_text(&f)
                }
            ));
        }
        text
    })
}

/// One node's faults for people: "drops messages to n1, n2; +200 ms to n3; clock 1.5 s behind".
fn node_faults_text(f: &NodeFaults) -> String {
    let mut parts = Vec::new();
    if !f.drop_to.is_empty() {
        let to: Vec<&str> = f.drop_to.iter().map(String::as_str).collect();
        parts.push(format!("drops messages to {}", to.join(", ")));
    }
    for (to, ms) in &f.delay_ms {
        parts.push(format!("+{ms} ms to {to}"));
    }
    if f.clock_skew_ms != 0 {
        parts.push(format!("clock {}", skew_text(f.clock_skew_ms)));
    }
    parts.join("; ")
}

/// "1500 ms ahead" / "300 ms behind".
fn skew_text(ms: i64) -> String {
    if ms >= 0 {
        format!("{ms} ms ahead")
    } else {
        format!("{} ms behind", ms.unsigned_abs())
    }
}
