//! `kv chaos`: faults on a running cluster. Network faults (partition, slow, skew, heal) go
//! through each node's `Chaos` call with `chaos::faults`; process faults (kill, restart, pause,
//! resume) act on a local cluster's processes through `local` and `chaos::process`.
//!
//! A node's `Chaos` call replaces its whole fault set and every `kv chaos` is a new process, so
//! what the nodes accepted is recorded in a file (`faults.json` in the local cluster's folder,
//! or a per-user file for `--endpoints`). That makes faults compose across commands and lets
//! `kv chaos restart` give a node its faults back. A fault recorded for a local process that no
//! longer runs is not held by anyone; `kv chaos heal` clears every node whatever the file says.

use super::Ctx;
use crate::cli::ChaosCmd;
use crate::local::{self, ClusterDir, LocalCluster, Stop};
use crate::output::{CliError, Exit, Stage};
use anyhow::{anyhow, Context};
use chaos::faults::{ClusterFaults, FaultClient, FaultError, NodeFaults};
use kv_client::net::TcpDialer;
use kv_client::{Client, ClientConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
                format!("dropping every message from {a} to {b}; messages from {b} to {a} still arrive")
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
        ChaosCmd::Status => {
            let record = target.load_record(ctx);
            let held = target.held(&record)?;
            print(ctx, &target, "status", "faults in place".into(), &held)?
        }
    }
    Ok(Exit::Ok)
}

/// The cluster the faults go to.
struct Target {
    /// Node names and addresses, in peer-list order (a node's id is its position + 1).
    nodes: Vec<(String, String)>,
    /// The local cluster; `None` with `--endpoints` (network faults only).
    local: Option<(ClusterDir, LocalCluster)>,
    /// Where the faults are recorded.
    record_path: PathBuf,
}

impl Target {
    /// `--endpoints` (the nodes from the ring), else the local cluster.
    async fn resolve(ctx: &Ctx) -> Result<Target, CliError> {
        if !ctx.global.endpoints.is_empty() {
            let client = ctx.client().await?;
            let ring = client
                .refresh_ring()
                .await
                .map_err(CliError::client(Stage::Connect))?;
            let mut members = ring.members;
            members.sort_by_key(|m| m.id);
            let in_order = members
                .iter()
                .enumerate()
                .all(|(i, m)| u64::try_from(i + 1) == Ok(m.id));
            if !in_order {
                return Err(CliError::Other(anyhow!(
                    "the ring's node ids are not 1..={}: cannot name the nodes in the peer-list order the Chaos call uses",
                    members.len()
                )));
            }
            let nodes: Vec<(String, String)> =
                members.into_iter().map(|m| (m.name, m.address)).collect();
            let record_path = user_record_path(&nodes);
            return Ok(Target {
                nodes,
                local: None,
                record_path,
            });
        }
        let dir = ctx.dir();
        let Some(cluster) = LocalCluster::load(&dir.path)? else {
            return Err(CliError::BadInput(format!(
                "no cluster to inject faults into: start one with `kv local up --chaos`, or pass --endpoints host:port (no local cluster in {dir})"
            )));
        };
        Ok(Target {
            nodes: cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addr.clone()))
                .collect(),
            record_path: dir.path.join(FAULTS_FILE),
            local: Some((dir, cluster)),
        })
    }

    fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn peers(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, a)| format!("{n}={a}")).collect()
    }

    /// The local cluster and the index of `node` in it, for the process faults.
    fn local_node(&mut self, action: &str, node: &str) -> Result<LocalNodeRef<'_>, CliError> {
        let Some((dir, cluster)) = self.local.as_mut() else {
            return Err(CliError::BadInput(format!(
                "`kv chaos {action}` acts on a local cluster's processes; --endpoints gives only addresses (drop it to use the local cluster)"
            )));
        };
        let i = cluster.index_of(node).ok_or_else(|| {
            CliError::BadInput(format!(
                "no node {node:?} in the local cluster in {dir}; its nodes are {}",
                cluster.names()
            ))
        })?;
        Ok(LocalNodeRef { dir, cluster, i })
    }

    /// The pid of `node`'s running process (local clusters only).
    fn running_pid(&self, node: &str) -> Option<u32> {
        let (_, cluster) = self.local.as_ref()?;
        let n = cluster.nodes.iter().find(|n| n.name == node)?;
        n.pid.filter(|_| n.running())
    }

    /// What `node`'s process is doing: running, paused or down (local clusters only).
    fn process_state(&self, node: &str) -> Option<&'static str> {
        self.local.as_ref()?;
        Some(match self.running_pid(node) {
            Some(pid) if is_paused(pid) => "paused",
            Some(_) => "running",
            None => "down",
        })
    }

    /// The recorded faults; a missing, unreadable or other cluster's record counts as none.
    fn load_record(&self, ctx: &Ctx) -> Record {
        let empty = Record {
            peers: self.peers(),
            nodes: BTreeMap::new(),
        };
        let text = match std::fs::read_to_string(&self.record_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return empty,
            Err(e) => {
                ctx.out.note(&format!(
                    "warning: cannot read {} ({e}); assuming no faults",
                    self.record_path.display()
                ));
                return empty;
            }
        };
        match serde_json::from_str::<Record>(&text) {
            Ok(r) if r.peers == empty.peers => r,
            Ok(_) => empty,
            Err(e) => {
                ctx.out.note(&format!(
                    "warning: {} is not a fault record ({e}); assuming no faults",
                    self.record_path.display()
                ));
                empty
            }
        }
    }

    /// The faults the nodes hold now, as recorded: a local node's faults ended with the
    /// process that accepted them.
    fn held(&self, record: &Record) -> Result<ClusterFaults, CliError> {
        let mut held = ClusterFaults::new(self.names().iter().map(|n| n.to_string()).collect())
            .map_err(|e| fault_error(self, e))?;
        for (name, node) in &record.nodes {
            let holds = self.local.is_none() || (node.pid.is_some() && node.pid == self.running_pid(name));
            if holds && self.names().contains(&name.as_str()) {
                held.set_node(name, node.faults());
            }
        }
        Ok(held)
    }

    /// Records `held`. A local node that is not running keeps its earlier entry (so a restart
    /// can give its faults back) unless `forget_down`.
    fn save(&self, before: &Record, held: &ClusterFaults, forget_down: bool) -> anyhow::Result<()> {
        let mut record = Record {
            peers: self.peers(),
            nodes: BTreeMap::new(),
        };
        for name in self.names() {
            let down = self.local.is_some() && self.running_pid(name).is_none();
            if down {
                if let Some(old) = before.nodes.get(name).filter(|_| !forget_down) {
                    record.nodes.insert(name.to_string(), old.clone());
                }
                continue;
            }
            let faults = held.node(name);
            if !faults.is_clear() {
                record
                    .nodes
                    .insert(name.to_string(), RecordedNode::new(self.running_pid(name), faults));
            }
        }
        let path = &self.record_path;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&record)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// A fault client that knows what the nodes hold.
    fn client(&self, held: ClusterFaults) -> Result<FaultClient, CliError> {
        FaultClient::new(self.nodes.clone(), TcpDialer)
            .and_then(|c| c.with_known_faults(held))
            .map_err(|e| fault_error(self, e))
    }

    /// Refuses, before anything is sent, to change the faults of a local node that cannot
    /// take them: a stopped process has none, a paused one answers nothing.
    fn check_can_take(&self, nodes: &[String]) -> Result<(), CliError> {
        for node in nodes {
            match self.process_state(node) {
                Some("down") => {
                    return Err(CliError::Unavailable(format!(
                        "node {node} is not running, so it cannot take its part of the fault; nothing was changed (`kv chaos restart {node}` starts it again)"
                    )))
                }
                Some("paused") => {
                    return Err(CliError::Unavailable(format!(
                        "node {node} is paused and cannot take its part of the fault; nothing was changed (`kv chaos resume {node}` first)"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One node of the local cluster, borrowed for a process fault.
struct LocalNodeRef<'a> {
    dir: &'a ClusterDir,
    cluster: &'a mut LocalCluster,
    i: usize,
}

/// The faults recorded for a cluster.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The cluster: "name=address" in peer-list order. A record of another cluster is ignored.
    peers: Vec<String>,
    /// Each node holding faults, by name.
    nodes: BTreeMap<String, RecordedNode>,
}

/// The faults one node accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordedNode {
    /// The local process that accepted them: another process of the node holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// Peers its messages to are dropped.
    #[serde(default)]
    drop_to: BTreeSet<String>,
    /// Delay added to its messages to each peer.
    #[serde(default)]
    delay_ms: BTreeMap<String, u32>,
    /// Offset of its wall clock.
    #[serde(default)]
    clock_skew_ms: i64,
}

impl RecordedNode {
    fn new(pid: Option<u32>, f: NodeFaults) -> Self {
        RecordedNode {
            pid,
            drop_to: f.drop_to,
            delay_ms: f.delay_ms,
            clock_skew_ms: f.clock_skew_ms,
        }
    }

    fn faults(&self) -> NodeFaults {
        NodeFaults {
            drop_to: self.drop_to.clone(),
            delay_ms: self.delay_ms.clone(),
            clock_skew_ms: self.clock_skew_ms,
        }
    }
}

/// Where faults injected through `--endpoints` are recorded: one file per cluster (named by a
/// hash of its peer list) under `$XDG_STATE_HOME/kv/chaos` (else `~/.local/state/kv/chaos`).
fn user_record_path(nodes: &[(String, String)]) -> PathBuf {
    let peers: Vec<String> = nodes.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let hash = kv_client::placement::key_hash(peers.join(",").as_bytes());
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = set(std::env::var_os("XDG_STATE_HOME"))
        .filter(|p| p.is_absolute())
        .or_else(|| set(std::env::var_os("HOME")).map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kv/chaos").join(format!("{hash:016x}.json"))
}

/// True when `pid` is stopped by a signal (SIGSTOP): state `T` in `/proc/PID/stat`.
fn is_paused(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit(')').next()?.split_whitespace().next()?.to_string();
            Some(state == "T")
        })
        .unwrap_or(false)
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
            format!(
                "paused {node} (pid {pid}) with SIGSTOP: its connections stay open but it answers nothing; `kv chaos resume {node}` or `kv chaos heal` lets it run"
            )
        }
        (false, true) => {
            chaos::process::resume(pid).map_err(|e| CliError::Other(e.into()))?;
            format!("resumed {node} (pid {pid}) with SIGCONT")
        }
    };
    let held = target.held(&target.load_record(ctx))?;
    print(ctx, target, action, what, &held)
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

/// A fault error as the CLI reports it, with what to do about it.
fn fault_error(target: &Target, e: FaultError) -> CliError {
    match &e {
        FaultError::NotEnabled { .. } => {
            let hint = match &target.local {
                Some((dir, _)) => format!(
                    "the local cluster in {dir} runs without --chaos: `kv local down && kv local up --chaos` restarts it with fault injection allowed (its data is kept)"
                ),
                None => "start every node with `kv server --chaos ...` to allow fault injection".into(),
            };
            CliError::BadInput(format!("{e}\n{hint}"))
        }
        FaultError::Call { .. } => CliError::Unavailable(format!(
            "{e}\nthe nodes that answered keep their new faults: `kv chaos status` shows them, `kv chaos heal` removes them"
        )),
        _ => CliError::BadInput(e.to_string()),
    }
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
