//! The cluster `kv chaos` acts on and the record of the faults its nodes hold: the local
//! cluster or the nodes of `--endpoints`, node names in peer-list order, which local processes
//! run or are paused, and `faults.json` (what each node accepted, and for a local node which
//! process accepted it: a fault of a process that has ended is held by no one).

use super::FAULTS_FILE;
use crate::cmd::Ctx;
use crate::local::{ClusterDir, LocalCluster};
use crate::output::{CliError, Stage};
use anyhow::{anyhow, Context};
use chaos::faults::{ClusterFaults, FaultClient, FaultError, NodeFaults};
use kv_client::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The cluster the faults go to.
pub(super) struct Target {
    /// Node names and addresses, in peer-list order (a node's id is its position + 1).
    pub(super) nodes: Vec<(String, String)>,
    /// The local cluster; `None` with `--endpoints` (network faults only).
    pub(super) local: Option<(ClusterDir, LocalCluster)>,
    /// Where the faults are recorded.
    pub(super) record_path: PathBuf,
    /// How the nodes are reached (TLS, token), as for every other command.
    pub(super) connection: ClientConfig,
}

impl Target {
    /// `--endpoints` (the nodes from the ring), else the local cluster.
    pub(super) async fn resolve(ctx: &Ctx) -> Result<Target, CliError> {
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
                connection: ctx.client_config()?,
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
            connection: ctx.client_config()?,
        })
    }

    /// Node names in peer-list order.
    pub(super) fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The peer list, "name=address" in order: what a record belongs to.
    pub(super) fn peers(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, a)| format!("{n}={a}")).collect()
    }

    /// The local cluster and the index of `node` in it, for the process faults.
    pub(super) fn local_node(
        &mut self,
        action: &str,
        node: &str,
    ) -> Result<LocalNodeRef<'_>, CliError> {
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
    pub(super) fn running_pid(&self, node: &str) -> Option<u32> {
        let (_, cluster) = self.local.as_ref()?;
        let n = cluster.nodes.iter().find(|n| n.name == node)?;
        n.pid.filter(|_| n.running())
    }

    /// What `node`'s process is doing: running, paused or down (local clusters only).
    pub(super) fn process_state(&self, node: &str) -> Option<&'static str> {
        self.local.as_ref()?;
        Some(match self.running_pid(node) {
            Some(pid) if is_paused(pid) => "paused",
            Some(_) => "running",
            None => "down",
        })
    }

    /// The recorded faults; a missing, unreadable or other cluster's record counts as none.
    pub(super) fn load_record(&self, ctx: &Ctx) -> Record {
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
    pub(super) fn held(&self, record: &Record) -> Result<ClusterFaults, CliError> {
        let mut held = ClusterFaults::new(self.names().iter().map(|n| n.to_string()).collect())
            .map_err(|e| fault_error(self, e))?;
        for (name, node) in &record.nodes {
            let holds =
                self.local.is_none() || (node.pid.is_some() && node.pid == self.running_pid(name));
            if holds && self.names().contains(&name.as_str()) {
                held.set_node(name, node.faults());
            }
        }
        Ok(held)
    }

    /// Records `held`. A local node that is not running keeps its earlier entry (so a restart
    /// can give its faults back) unless `forget_down`.
    pub(super) fn save(
        &self,
        before: &Record,
        held: &ClusterFaults,
        forget_down: bool,
    ) -> anyhow::Result<()> {
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
                record.nodes.insert(
                    name.to_string(),
                    RecordedNode::new(self.running_pid(name), faults),
                );
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
    pub(super) fn client(&self, held: ClusterFaults) -> Result<FaultClient, CliError> {
        FaultClient::new(self.nodes.clone(), self.connection.dialer.clone())
            .map(|c| c.with_token(self.connection.token.clone()))
            .and_then(|c| c.with_known_faults(held))
            .map_err(|e| fault_error(self, e))
    }

    /// Refuses, before anything is sent, to change the faults of a local node that cannot
    /// take them: a stopped process has none, a paused one answers nothing.
    pub(super) fn check_can_take(&self, nodes: &[String]) -> Result<(), CliError> {
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
pub(super) struct LocalNodeRef<'a> {
    pub(super) dir: &'a ClusterDir,
    pub(super) cluster: &'a mut LocalCluster,
    pub(super) i: usize,
}

/// The faults recorded for a cluster.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    /// The cluster: "name=address" in peer-list order. A record of another cluster is ignored.
    pub(super) peers: Vec<String>,
    /// Each node holding faults, by name.
    pub(super) nodes: BTreeMap<String, RecordedNode>,
}

/// The faults one node accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RecordedNode {
    /// The local process that accepted them: another process of the node holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pid: Option<u32>,
    /// Peers its messages to are dropped.
    #[serde(default)]
    pub(super) drop_to: BTreeSet<String>,
    /// Delay added to its messages to each peer.
    #[serde(default)]
    pub(super) delay_ms: BTreeMap<String, u32>,
    /// Offset of its wall clock.
    #[serde(default)]
    pub(super) clock_skew_ms: i64,
}

impl RecordedNode {
    /// What `pid` (if local) accepted.
    pub(super) fn new(pid: Option<u32>, f: NodeFaults) -> Self {
        RecordedNode {
            pid,
            drop_to: f.drop_to,
            delay_ms: f.delay_ms,
            clock_skew_ms: f.clock_skew_ms,
        }
    }

    /// The faults, as the fault planner takes them.
    pub(super) fn faults(&self) -> NodeFaults {
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
pub(super) fn is_paused(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_string();
            Some(state == "T")
        })
        .unwrap_or(false)
}

/// A fault error as the CLI reports it, with what to do about it.
pub(super) fn fault_error(target: &Target, e: FaultError) -> CliError {
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
