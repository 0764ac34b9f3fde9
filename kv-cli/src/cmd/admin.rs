//! `kv ring`, `kv status`, `kv keyspace list|create`, `kv completion`: the cluster's shape and
//! health, its keyspaces, and shell completions.

use super::Ctx;
use crate::cli::{Cli, KeyspaceCmd, ModeArg};
use crate::output::{CliError, Exit, Stage};
use clap::CommandFactory;
use kv_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Longest a single node may take to answer `kv status` (less when --timeout-ms is lower):
/// short, so that one dead node does not hold up the report.
pub const STATUS_NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of `kv status --wait-ms`.
pub const STATUS_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// `kv ring`.
pub async fn ring(ctx: &Ctx) -> Result<Exit, CliError> {
    let c = ctx.client().await?;
    let ring = c
        .refresh_ring()
        .await
        .map_err(CliError::client(Stage::Read))?;
    let n = 3.min(ring.members.len());
    let mut owned = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    for p in &ring.partitions {
        if let Some(first) = p.preference.first() {
            *owned.entry(*first).or_insert(0usize) += 1;
        }
        for id in p.preference.iter().take(n) {
            *replicas.entry(*id).or_insert(0usize) += 1;
        }
    }
    let count = |map: &BTreeMap<u64, usize>, id: u64| map.get(&id).copied().unwrap_or(0);
    let mean = (ring.partitions.len() * n) as f64 / ring.members.len().max(1) as f64;
    let max = replicas.values().copied().max().unwrap_or(0) as f64;
    let imbalance = if mean > 0.0 { max / mean } else { 0.0 };
    let members: Vec<Value> = ring
        .members
        .iter()
        .map(|m| json!({"id": m.id, "name": m.name, "address": m.address, "owned": count(&owned, m.id), "replicas": count(&replicas, m.id)}))
        .collect();
    let partitions: Vec<Value> = ring
        .partitions
        .iter()
        .map(|p| json!({"id": p.id, "preference": p.preference}))
        .collect();
    let json = json!({"partition_count": ring.partition_count, "tokens_per_node": ring.tokens_per_node, "members": members, "partitions": partitions, "imbalance": imbalance});
    ctx.out.result(json, || {
        let mut t = format!(
            "{} partitions, {} tokens per node, replication {n}\n",
            ring.partition_count, ring.tokens_per_node
        );
        t.push_str(&format!(
            "{:<6} {:<22} {:>6} {:>9}\n",
            "NODE", "ADDRESS", "OWNED", "REPLICAS"
        ));
        for m in &ring.members {
            t.push_str(&format!(
                "{:<6} {:<22} {:>6} {:>9}\n",
                m.name,
                m.address,
                count(&owned, m.id),
                count(&replicas, m.id)
            ));
        }
        t.push_str(&format!(
            "imbalance (busiest / mean replicas): {imbalance:.2}\n"
        ));
        let name = |id: &u64| {
            ring.members
                .iter()
                .find(|m| m.id == *id)
                .map_or(id.to_string(), |m| m.name.clone())
        };
        t.push_str(&format!(
            "\n{:<10} PREFERENCE LIST (replicas first)",
            "PARTITION"
        ));
        for p in &ring.partitions {
            let list: Vec<String> = p.preference.iter().map(name).collect();
            t.push_str(&format!("\n{:<10} {}", p.id, list.join(" ")));
        }
        t
    })?;
    Ok(Exit::Ok)
}

/// One node's answer to the status request.
struct View {
    name: String,
    address: String,
    answer: Result<pb::ClusterStatusResponse, String>,
}

/// What `kv status` found.
struct Survey {
    partition_count: u32,
    views: Vec<View>,
    leaderless: Vec<u32>,
    problems: Vec<String>,
}

fn state_name(s: i32) -> &'static str {
    match pb::NodeState::try_from(s).unwrap_or_default() {
        pb::NodeState::Alive => "alive",
        pb::NodeState::Suspect => "suspect",
        pb::NodeState::Down => "down",
        pb::NodeState::Unknown => "unknown",
    }
}

/// Asks every member at once, each with a short deadline, and judges the cluster's health.
async fn survey(ctx: &Ctx, c: &kv_client::Client) -> Result<Survey, CliError> {
    let ring = c
        .refresh_ring()
        .await
        .map_err(CliError::client(Stage::Read))?;
    let per_node = ctx.timeout().min(STATUS_NODE_TIMEOUT);
    let asks: Vec<_> = ring
        .members
        .iter()
        .map(|m| {
            let (c, addr) = (c.clone(), m.address.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(per_node, c.status(Some(&addr))).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} ms", per_node.as_millis())),
                }
            })
        })
        .collect();
    let mut views = Vec::new();
    for (m, ask) in ring.members.iter().zip(asks) {
        let answer = ask
            .await
            .unwrap_or_else(|e| Err(format!("status task failed: {e}")));
        views.push(View {
            name: m.name.clone(),
            address: m.address.clone(),
            answer,
        });
    }
    let mut problems = Vec::new();
    let mut led = BTreeSet::new();
    for v in &views {
        match &v.answer {
            Err(e) => problems.push(format!("{} ({}) did not answer: {e}", v.name, v.address)),
            Ok(s) => {
                led.extend(s.leader_of.iter().copied());
                for n in s
                    .nodes
                    .iter()
                    .filter(|n| n.state == pb::NodeState::Down as i32)
                {
                    problems.push(format!("{} sees {} down", v.name, n.name));
                }
            }
        }
    }
    let leaderless: Vec<u32> = (0..ring.partition_count)
        .filter(|p| !led.contains(p))
        .collect();
    if !leaderless.is_empty() {
        let list: Vec<String> = leaderless.iter().map(u32::to_string).collect();
        problems.push(format!(
            "CP partitions without a leader among the nodes that answered: {}",
            list.join(", ")
        ));
    }
    Ok(Survey {
        partition_count: ring.partition_count,
        views,
        leaderless,
        problems,
    })
}

/// `kv status`: exit 5 when a node does not answer, is seen down, or a CP partition has no
/// leader; with `wait_ms`, asks again until healthy or the time is up.
pub async fn status(ctx: &Ctx, wait_ms: u64) -> Result<Exit, CliError> {
    let c = ctx.client().await?;
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let survey = loop {
        let survey = survey(ctx, &c).await?;
        if survey.problems.is_empty() || Instant::now() >= deadline {
            break survey;
        }
        tokio::time::sleep(STATUS_RETRY_INTERVAL).await;
    };
    print_status(ctx, &survey)?;
    if survey.problems.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(CliError::Unavailable(format!(
            "cluster unhealthy: {}",
            survey.problems.join("; ")
        )))
    }
}

fn print_status(ctx: &Ctx, s: &Survey) -> Result<(), CliError> {
    let nodes: Vec<Value> = s
        .views
        .iter()
        .map(|v| match &v.answer {
            Ok(a) => json!({"node": v.name, "address": v.address, "reachable": true, "leader_of": a.leader_of, "clock_skew_events": a.clock_skew_events, "read_repairs": a.read_repairs, "view": a.nodes.iter().map(|n| json!({"name": n.name, "address": n.address, "state": state_name(n.state), "hints_pending": n.hints_pending})).collect::<Vec<_>>()}),
            Err(e) => json!({"node": v.name, "address": v.address, "reachable": false, "error": e}),
        })
        .collect();
    let json = json!({
        "healthy": s.problems.is_empty(),
        "problems": s.problems,
        "partition_count": s.partition_count,
        "partitions_without_leader": s.leaderless,
        "nodes": nodes,
    });
    ctx.out.result(json, || {
        let mut t = String::new();
        for v in &s.views {
            match &v.answer {
                Ok(a) => {
                    t.push_str(&format!(
                        "view of {} (cluster {}; leads {} CP partitions; {} read repairs; {} clock-skew events):\n",
                        v.name,
                        a.cluster_name,
                        a.leader_of.len(),
                        a.read_repairs,
                        a.clock_skew_events
                    ));
                    for n in &a.nodes {
                        t.push_str(&format!(
                            "  {:<6} {:<22} {:<8} hints pending {}\n",
                            n.name,
                            n.address,
                            state_name(n.state),
                            n.hints_pending
                        ));
                    }
                }
                Err(e) => t.push_str(&format!("view of {}: unreachable ({e})\n", v.name)),
            }
        }
        if s.problems.is_empty() {
            t.push_str(&format!(
                "healthy: every node answered and sees every other alive; each of the {} CP partitions has a leader",
                s.partition_count
            ));
        } else {
            t.push_str(&format!("UNHEALTHY ({} problem(s), listed on stderr)", s.problems.len()));
        }
        t
    })
}

/// `kv keyspace list|create`.
pub async fn keyspace(ctx: &Ctx, command: KeyspaceCmd) -> Result<Exit, CliError> {
    let c = ctx.client().await?;
    match command {
        KeyspaceCmd::List => {
            let list = c
                .list_keyspaces()
                .await
                .map_err(CliError::client(Stage::Read))?;
            let json: Vec<Value> = list.iter().map(keyspace_json).collect();
            ctx.out.result(json!({"keyspaces": json}), || {
                list.iter()
                    .map(|k| {
                        format!(
                            "{:<16} {:<3} replicas={}",
                            k.name,
                            mode_name(k.mode),
                            k.replicas
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        KeyspaceCmd::Create {
            name,
            mode,
            replicas,
        } => {
            let k = c
                .create_keyspace(pb::Keyspace {
                    name,
                    mode: match mode {
                        ModeArg::Cp => pb::Mode::Cp as i32,
                        ModeArg::Ap => pb::Mode::Ap as i32,
                    },
                    replicas,
                    read_replicas: 0,
                    write_replicas: 0,
                })
                .await
                .map_err(CliError::client(Stage::Write))?;
            ctx.out.result(json!({"keyspace": keyspace_json(&k)}), || {
                format!("created keyspace {}", k.name)
            })?;
        }
    }
    Ok(Exit::Ok)
}

fn mode_name(mode: i32) -> &'static str {
    if mode == pb::Mode::Cp as i32 {
        "cp"
    } else {
        "ap"
    }
}

fn keyspace_json(k: &pb::Keyspace) -> Value {
    json!({"name": k.name, "mode": mode_name(k.mode), "replicas": k.replicas, "read_replicas": k.read_replicas, "write_replicas": k.write_replicas})
}

/// `kv completion SHELL`: the script on stdout (in JSON mode, inside `{"shell", "script"}`).
pub fn completion(ctx: &Ctx, shell: clap_complete::Shell) -> Result<Exit, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kv", &mut script);
    if ctx.out.json() {
        let text = String::from_utf8_lossy(&script);
        ctx.out.result(
            json!({"shell": shell.to_string(), "script": text}),
            String::new,
        )?;
    } else {
        ctx.out.bytes(&script)?;
    }
    Ok(Exit::Ok)
}
