//! When a local cluster is ready, and waiting until it is. Ready means all of:
//! 1. every running node answers on its port;
//! 2. every running node sees every running node alive;
//! 3. every CP partition with a majority of its replicas running has exactly one leader (a
//!    second claimant is a deposed leader that has not heard from the group yet);
//! 4. every running node serves a linearizable read in each of those partitions — a restarted
//!    node has rejoined its groups far enough to serve them (or to forward to their leader).
//!
//! Partitions short of a majority are left out: they cannot have a leader until more nodes
//! start. `assess` judges checks 1–3 from the nodes' answers without I/O; `wait_ready` polls
//! the nodes and runs check 4, printing what it is still waiting for.

use anyhow::{bail, Result};
use kv_client::placement::partition_for_key;
use kv_client::{Client, ClientConfig, Options};
use kv_proto::v1 as pb;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Deadline of one status or ring request while waiting.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one probe read (long enough for a read that waits out a short election).
const READ_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of checks.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// What is still awaited is printed once it has lasted this long, then when it changes...
const REPORT_AFTER: Duration = Duration::from_secs(1);
/// ...or when it has not changed for this long.
const REPORT_UNCHANGED_EVERY: Duration = Duration::from_secs(5);
/// Items of the waiting list named in one progress line or error.
const REPORT_ITEMS: usize = 3;
/// Most keys tried when looking for a probe key in each partition.
const PROBE_KEY_SEARCH_MAX: usize = 1 << 20;
/// Probe keys are this prefix plus a number; they are only read, never written.
const PROBE_KEY_PREFIX: &str = "kv-local-ready-";

/// A node that must be ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: String,
}

/// One thing the wait is still waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The node does not answer on its port.
    NoAnswer {
        /// The node.
        node: String,
        /// What the request got instead.
        error: String,
    },
    /// The node does not see a running peer alive (yet).
    NotSeen {
        /// The node asked.
        node: String,
        /// The peer.
        peer: String,
        /// How it sees it.
        state: String,
    },
    /// No node claims to lead a CP partition.
    NoLeader {
        /// The partition.
        partition: u32,
    },
    /// Several nodes claim to lead a CP partition.
    ManyLeaders {
        /// The partition.
        partition: u32,
        /// The claimants.
        nodes: Vec<String>,
    },
    /// The node failed probe reads in these CP partitions.
    CannotServe {
        /// The node.
        node: String,
        /// The partitions.
        partitions: Vec<u32>,
        /// The first failure.
        error: String,
    },
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::NoAnswer { node, error } => write!(f, "{node} does not answer ({error})"),
            Waiting::NotSeen { node, peer, state } => write!(f, "{node} sees {peer} as {state}"),
            Waiting::NoLeader { partition } => write!(f, "CP partition {partition} has no leader"),
            Waiting::ManyLeaders { partition, nodes } => write!(
                f,
                "CP partition {partition} has {} leaders ({})",
                nodes.len(),
                nodes.join(", ")
            ),
            Waiting::CannotServe {
                node,
                partitions,
                error,
            } => write!(
                f,
                "{node} cannot serve CP partition(s) {} yet ({error})",
                partitions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The first few items, then how many more: one line for people.
pub fn summary(waiting: &[Waiting]) -> String {
    let mut text = waiting
        .iter()
        .take(REPORT_ITEMS)
        .map(Waiting::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if waiting.len() > REPORT_ITEMS {
        text.push_str(&format!(" (and {} more)", waiting.len() - REPORT_ITEMS));
    }
    text
}

/// Each partition's CP replicas by node name: the first `CP_REPLICAS` of its preference list.
pub fn cp_replicas(ring: &pb::RingResponse) -> Vec<Vec<String>> {
    let names: BTreeMap<u64, &str> = ring
        .members
        .iter()
        .map(|m| (m.id, m.name.as_str()))
        .collect();
    let mut partitions: Vec<&pb::Partition> = ring.partitions.iter().collect();
    partitions.sort_by_key(|p| p.id);
    partitions
        .iter()
        .map(|p| {
            p.preference
                .iter()
                .take(kv_server::node::CP_REPLICAS as usize)
                .map(|id| {
                    names
                        .get(id)
                        .map_or_else(|| id.to_string(), |n| n.to_string())
                })
                .collect()
        })
        .collect()
}

/// Partitions that a majority of their replicas' nodes run (the others cannot elect a leader).
pub fn with_majority(replicas: &[Vec<String>], running: &[String]) -> Vec<u32> {
    (0u32..)
        .zip(replicas)
        .filter(|(_, members)| {
            let up = members.iter().filter(|m| running.contains(m)).count();
            up * 2 > members.len()
        })
        .map(|(p, _)| p)
        .collect()
}

/// Checks 1–3 of the module doc over each running node's answer (`answers[i]` is the answer
/// of `running[i]`) and each partition's replicas.
pub fn assess(
    running: &[String],
    answers: &[Result<pb::ClusterStatusResponse, String>],
    replicas: &[Vec<String>],
) -> Vec<Waiting> {
    let mut waiting = Vec::new();
    for (node, answer) in running.iter().zip(answers) {
        match answer {
            Err(error) => waiting.push(Waiting::NoAnswer {
                node: node.clone(),
                error: error.clone(),
            }),
            Ok(status) => {
                for peer in running {
                    let state = status
                        .nodes
                        .iter()
                        .find(|s| &s.name == peer)
                        .map_or(pb::NodeState::Unknown, |s| s.state());
                    if state != pb::NodeState::Alive {
                        waiting.push(Waiting::NotSeen {
                            node: node.clone(),
                            peer: peer.clone(),
                            state: state_name(state).into(),
                        });
                    }
                }
            }
        }
    }
    for partition in with_majority(replicas, running) {
        let claimants: Vec<String> = running
            .iter()
            .zip(answers)
            .filter(|(_, a)| a.as_ref().is_ok_and(|s| s.leader_of.contains(&partition)))
            .map(|(n, _)| n.clone())
            .collect();
        match claimants.len() {
            0 => waiting.push(Waiting::NoLeader { partition }),
            1 => {}
            _ => waiting.push(Waiting::ManyLeaders {
                partition,
                nodes: claimants,
            }),
        }
    }
    waiting
}

fn state_name(state: pb::NodeState) -> &'static str {
    match state {
        pb::NodeState::Alive => "alive",
        pb::NodeState::Suspect => "suspect",
        pb::NodeState::Down => "down",
        pb::NodeState::Unknown => "unknown",
    }
}

/// One key per partition (`keys[p]` hashes to partition `p`), found by counting up.
pub fn probe_keys(partition_count: u32) -> Vec<Option<String>> {
    let mut keys = vec![None; partition_count as usize];
    let mut missing = keys.len();
    for i in 0..PROBE_KEY_SEARCH_MAX {
        if missing == 0 {
            break;
        }
        let key = format!("{PROBE_KEY_PREFIX}{i}");
        let p = partition_for_key(key.as_bytes(), partition_count) as usize;
        if let Some(slot @ None) = keys.get_mut(p) {
            *slot = Some(key);
            missing -= 1;
        }
    }
    keys
}

/// A CP keyspace to probe: `cp` if the nodes list it, else any CP keyspace.
fn cp_keyspace(answers: &[Result<pb::ClusterStatusResponse, String>]) -> Option<String> {
    let cp: Vec<&pb::Keyspace> = answers
        .iter()
        .flatten()
        .flat_map(|s| &s.keyspaces)
        .filter(|k| k.mode() == pb::Mode::Cp)
        .collect();
    cp.iter()
        .find(|k| k.name == "cp")
        .or(cp.first())
        .map(|k| k.name.clone())
}

/// What the ring says about the partitions, read once per wait.
struct Layout {
    /// Each partition's CP replicas, by node name.
    replicas: Vec<Vec<String>>,
    /// A probe key in each partition.
    keys: Vec<Option<String>>,
}

/// Polls `targets` until they are ready (see the module doc) or `timeout` passes. `exited`
/// is asked every round whether a node's process has ended (the wait then fails at once with
/// its answer); `progress` gets what is still awaited, for people; `dir` is named in errors.
pub async fn wait_ready(
    targets: &[Target],
    exited: &mut dyn FnMut() -> Option<String>,
    progress: &dyn Fn(&str),
    dir: &Path,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let secure = super::LocalCluster::load(dir)
        .ok()
        .flatten()
        .filter(|c| c.secure)
        .map(|_| super::secure::SecureFiles::of(dir));
    let mut ring: Option<Layout> = None;
    let mut reported: Option<(String, Instant)> = None;
    loop {
        if let Some(why) = exited() {
            bail!("{why}");
        }
        let mut answers = Vec::with_capacity(targets.len());
        for t in targets {
            answers.push(status_of(t, &mut clients, secure.as_ref()).await);
        }
        if ring.is_none() {
            for c in clients.values() {
                if let Ok(r) = c.refresh_ring().await {
                    ring = Some(Layout {
                        replicas: cp_replicas(&r),
                        keys: probe_keys(r.partition_count),
                    });
                    break;
                }
            }
        }
        let mut waiting = match &ring {
            Some(layout) => assess(&names, &answers, &layout.replicas),
            None => assess(&names, &answers, &[]),
        };
        if waiting.is_empty() {
            match (&ring, cp_keyspace(&answers)) {
                (Some(layout), Some(keyspace)) => {
                    let partitions = with_majority(&layout.replicas, &names);
                    waiting =
                        serve_probes(targets, &clients, &keyspace, &partitions, &layout.keys).await;
                }
                // No ring yet (only while no node answers) or no CP keyspace: nothing to read.
                (None, _) => waiting.push(Waiting::NoAnswer {
                    node: "every node".into(),
                    error: "no ring yet".into(),
                }),
                (Some(_), None) => {}
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let line = summary(&waiting);
        if start.elapsed() > timeout {
            bail!(
                "the cluster was not ready after {} s; still waiting: {line}; see the logs in {}",
                timeout.as_secs(),
                dir.display()
            );
        }
        let due = match &reported {
            None => start.elapsed() >= REPORT_AFTER,
            Some((last, at)) => {
                (*last != line && at.elapsed() >= REPORT_AFTER)
                    || at.elapsed() >= REPORT_UNCHANGED_EVERY
            }
        };
        if due {
            progress(&format!(
                "still waiting ({:.1} s): {line}",
                start.elapsed().as_secs_f64()
            ));
            reported = Some((line, Instant::now()));
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// The node's status answer, connecting its probe client first if needed.
async fn status_of(
    t: &Target,
    clients: &mut BTreeMap<String, Client>,
    secure: Option<&super::secure::SecureFiles>,
) -> Result<pb::ClusterStatusResponse, String> {
    if !clients.contains_key(&t.name) {
        let mut cfg = ClientConfig::new([t.addr.clone()]);
        cfg.seeds_only = true;
        cfg.timeout = STATUS_PROBE_TIMEOUT;
        if let Some(files) = secure {
            files.configure(&mut cfg).map_err(|e| format!("{e:#}"))?;
        }
        let c = Client::connect(cfg).await.map_err(|e| e.to_string())?;
        clients.insert(t.name.clone(), c);
    }
    clients[&t.name]
        .status(Some(&t.addr))
        .await
        .map_err(|e| e.to_string())
}

/// Check 4: each target reads one key of each partition in `partitions` through itself alone
/// (all reads at once, so a round lasts at most one probe deadline).
async fn serve_probes(
    targets: &[Target],
    clients: &BTreeMap<String, Client>,
    keyspace: &str,
    partitions: &[u32],
    keys: &[Option<String>],
) -> Vec<Waiting> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let Some(client) = clients.get(&t.name) else {
            continue;
        };
        for p in partitions {
            let Some(Some(key)) = keys.get(*p as usize).cloned() else {
                continue;
            };
            let (client, node, keyspace, p) =
                (client.clone(), t.name.clone(), keyspace.to_string(), *p);
            tasks.spawn(async move {
                let opts = Options {
                    timeout: Some(READ_PROBE_TIMEOUT),
                    ..Default::default()
                };
                let result = client.get(&keyspace, key.as_bytes(), opts).await;
                (node, p, result.err().map(|e| e.to_string()))
            });
        }
    }
    // Failures by node: the partitions, and the error of the lowest one.
    let mut failed: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((node, p, Some(error))) => {
                failed.entry(node).or_default().insert(p, error);
            }
            Ok(_) => {}
            Err(e) => {
                failed
                    .entry("a probe".into())
                    .or_default()
                    .insert(0, e.to_string());
            }
        }
    }
    failed
        .into_iter()
        .map(|(node, errors)| Waiting::CannotServe {
            node,
            partitions: errors.keys().copied().collect(),
            error: errors.into_values().next().unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
#[path = "ready_tests.rs"]
mod tests;
