//! The workload host, the one client process inside the simulation: warm-up, the register and
//! append-set workloads, then the final reads (CP) or the convergence polls and per-replica
//! reads (AP). What it learns goes back to the step loop through [`Shared`].

use super::sim_kv::{text, versions};
use super::{
    host_addr, host_name, now_ns, Call, Case, Mode, Settings, SimKv, AP_KEYSPACE_ID,
    FINAL_READ_CONCURRENCY, FINAL_READ_PROCESS_BASE, MAX_FINAL_READ_ATTEMPTS, NODES, WARMUP_MAX,
};
use futures::StreamExt;
use jepsen::ap::{ConvergenceSample, Record, ReplicaRead};
use jepsen::history::{Op, Recorder};
use jepsen::workload::{self, Stop, WorkloadConfig};
use kv_core::net::Dialer;
use kv_proto::internal::internal_client::InternalClient;
use kv_testkit::sim::{client, TurmoilDialer};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the workload host hands back to the step loop.
#[derive(Default)]
pub(super) struct Shared {
    /// Workload start, ns of simulated time; the step loop applies faults from then on.
    pub(super) t0_ns: Option<u64>,
    /// Schedule node index -> host index.
    pub(super) hosts: Vec<usize>,
    /// When writes stopped (after the heal).
    pub(super) quiet_from_ns: u64,
    /// AP: convergence polls and final replica reads.
    pub(super) samples: Vec<ConvergenceSample>,
    pub(super) final_reads: Vec<ReplicaRead>,
    /// Problems the workload host found (warm-up, final reads never served).
    pub(super) problems: Vec<String>,
    /// Keys written (register hot keys and set elements).
    pub(super) keys: Vec<String>,
}

/// Retries `f` every `every` until it succeeds or `limit` of simulated time passes.
async fn bounded<T, E: std::fmt::Display, F, Fut>(
    limit: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(format!("after {limit:?}: {e}")),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

fn register_keys(settings: &Settings) -> Vec<String> {
    (0..settings.keys.max(1))
        .map(|k| format!("reg/k{k}"))
        .collect()
}

pub(super) async fn workload_host(
    case: Case,
    settings: Settings,
    shared: Arc<Mutex<Shared>>,
    calls: Arc<Mutex<Vec<Call>>>,
    register: Recorder,
    set: Recorder,
) -> turmoil::Result {
    let fail = |shared: &Arc<Mutex<Shared>>, msg: String| {
        shared.lock().expect("shared lock").problems.push(msg);
    };
    let keys = register_keys(&settings);
    // Warm-up: each node serves a linearizable read of every hot key and sees every peer alive.
    let mut admins = Vec::new();
    for node in 0..NODES {
        let addr = host_addr(node);
        let timeout = settings.request_timeout;
        let c = bounded(WARMUP_MAX, Duration::from_millis(100), || {
            let addr = addr.clone();
            async move { client(&[addr.as_str()], timeout).await }
        })
        .await;
        match c {
            Ok(c) => admins.push(c),
            Err(e) => {
                fail(&shared, format!("warm-up: no client for {addr}: {e}"));
                return Ok(());
            }
        }
    }
    for (node, admin) in admins.iter().enumerate() {
        for key in &keys {
            let r = bounded(WARMUP_MAX, Duration::from_millis(100), || {
                admin.get("cp", key.as_bytes(), Default::default())
            })
            .await;
            if let Err(e) = r {
                fail(
                    &shared,
                    format!("warm-up: {} never read {key}: {e}", host_name(node)),
                );
                return Ok(());
            }
        }
        let r = bounded(WARMUP_MAX, Duration::from_millis(100), || async {
            let s = admin.status(None).await.map_err(|e| e.to_string())?;
            let alive = s
                .nodes
                .iter()
                .filter(|n| n.state == kv_proto::v1::NodeState::Alive as i32)
                .count();
            if alive == NODES {
                Ok(())
            } else {
                Err(format!("{alive} of {NODES} alive"))
            }
        })
        .await;
        if let Err(e) = r {
            fail(
                &shared,
                format!(
                    "warm-up: {} never saw all peers alive: {e}",
                    host_name(node)
                ),
            );
            return Ok(());
        }
    }
    let mut hosts: Vec<usize> = (0..NODES).collect();
    if case.target_leader {
        let partitions = kv_testkit::sim::SimOptions::default().partitions;
        let p = kv_client::placement::partition_for_key(keys[0].as_bytes(), partitions);
        let leader = bounded(WARMUP_MAX, Duration::from_millis(100), || async {
            for (node, admin) in admins.iter().enumerate() {
                let s = admin.status(None).await.map_err(|e| e.to_string())?;
                if s.leader_of.contains(&p) {
                    return Ok(node);
                }
            }
            Err(format!("no node leads partition {p}"))
        })
        .await;
        match leader {
            Ok(l) => {
                hosts.retain(|&h| h != l);
                hosts.insert(0, l);
            }
            Err(e) => {
                fail(&shared, format!("warm-up: {e}"));
                return Ok(());
            }
        }
    }

    // The workload.
    let mut reg_clients = Vec::new();
    let mut set_clients = Vec::new();
    for i in 0..settings.clients_per_node * NODES + NODES {
        let node = i % NODES;
        let c = SimKv::connect(case.mode, node, settings.request_timeout, calls.clone()).await?;
        if i < settings.clients_per_node * NODES {
            reg_clients.push(c);
        } else {
            set_clients.push(c);
        }
    }
    let t0 = now_ns();
    {
        let mut s = shared.lock().expect("shared lock");
        s.t0_ns = Some(t0);
        s.hosts = hosts;
    }
    let duration = Duration::from_millis(case.schedule.heal_ms() + settings.tail_ms);
    let reg_config = WorkloadConfig {
        seed: case.seed,
        processes: reg_clients.len(),
        stop: Stop::Duration(duration),
        rate_per_process: Some(settings.register_rate),
        keys: settings.keys,
        key_prefix: "reg".into(),
    };
    let set_config = WorkloadConfig {
        seed: case.seed.wrapping_add(1),
        processes: set_clients.len(),
        stop: Stop::Duration(duration),
        rate_per_process: Some(settings.set_rate),
        keys: 1,
        key_prefix: case.mode.name().into(),
    };
    let ((), set_keys) = futures::join!(
        workload::run_register(&reg_clients, &reg_config, &register),
        workload::run_append_set(&set_clients, &set_config, &set),
    );
    let quiet_from = now_ns();
    let mut all_keys = keys.clone();
    all_keys.extend(set_keys);
    {
        let mut s = shared.lock().expect("shared lock");
        s.quiet_from_ns = quiet_from;
        s.keys = all_keys.clone();
    }

    match case.mode {
        Mode::Cp => final_cp_reads(&admins, &all_keys, &register, &shared).await,
        Mode::Ap => converge_ap(&settings, &all_keys, &admins, &shared).await,
    }
    Ok(())
}

/// Reads every key through every node (linearizable), retrying each up to
/// [`MAX_FINAL_READ_ATTEMPTS`] times; every attempt goes into the history.
async fn final_cp_reads(
    admins: &[kv_client::Client],
    keys: &[String],
    recorder: &Recorder,
    shared: &Arc<Mutex<Shared>>,
) {
    let jobs = admins.iter().enumerate().flat_map(|(node, admin)| {
        keys.iter().enumerate().map(move |(k, key)| async move {
            let process = FINAL_READ_PROCESS_BASE + (node * keys.len() + k) as u64;
            for _ in 0..MAX_FINAL_READ_ATTEMPTS {
                let id = recorder.invoke(process, key, Op::Read);
                match admin.get("cp", key.as_bytes(), Default::default()).await {
                    Ok(r) => {
                        let (version, timestamp) = versions(r.version.as_ref());
                        recorder.ok(id, text(r.value), version, timestamp);
                        return None;
                    }
                    Err(_) => recorder.fail(id),
                }
            }
            Some(format!(
                "final read of {key} through {} failed {MAX_FINAL_READ_ATTEMPTS} times after the heal",
                host_name(node)
            ))
        })
    });
    let problems: Vec<String> = futures::stream::iter(jobs)
        .buffer_unordered(FINAL_READ_CONCURRENCY)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    shared
        .lock()
        .expect("shared lock")
        .problems
        .extend(problems);
}

type Replicas = Vec<InternalClient<tonic::transport::Channel>>;

/// One node's replica record of `key` (AP keyspace).
async fn replica_read(
    replicas: &Replicas,
    node: usize,
    key: &str,
    timeout: Duration,
) -> Result<Option<Record>, String> {
    let mut c = replicas[node].clone();
    let mut req = tonic::Request::new(kv_proto::internal::ApReadRequest {
        keyspace: AP_KEYSPACE_ID.into(),
        key: key.as_bytes().to_vec(),
    });
    req.set_timeout(timeout);
    let resp = tokio::time::timeout(timeout, c.ap_read(req))
        .await
        .map_err(|_| format!("ApRead of {key} on {} timed out", host_name(node)))?
        .map_err(|s| format!("ApRead of {key} on {}: {s}", host_name(node)))?;
    Ok(resp.into_inner().record.map(|r| Record {
        value: (!r.tombstone).then(|| String::from_utf8_lossy(&r.value).into_owned()),
        timestamp: r
            .hlc
            .map_or((0, 0, 0), |h| (h.physical_ms, h.logical, h.node_id)),
    }))
}

/// The state the AP checker compares: a tombstone and a missing record are the same.
fn state(r: &Option<Record>) -> Option<(jepsen::Hlc, String)> {
    r.as_ref()
        .and_then(|r| r.value.clone().map(|v| (r.timestamp, v)))
}

/// Polls every replica of every key until all agree or the bound passes, then takes the
/// final per-replica reads.
async fn converge_ap(
    settings: &Settings,
    keys: &[String],
    admins: &[kv_client::Client],
    shared: &Arc<Mutex<Shared>>,
) {
    let mut replicas: Replicas = Vec::new();
    for node in 0..NODES {
        match TurmoilDialer.channel(&host_addr(node)) {
            Ok(ch) => replicas.push(InternalClient::new(ch)),
            Err(e) => {
                shared
                    .lock()
                    .expect("shared lock")
                    .problems
                    .push(format!("no channel to {}: {e}", host_name(node)));
                return;
            }
        }
    }
    let timeout = settings.request_timeout;
    let start = tokio::time::Instant::now();
    let mut pending: BTreeSet<&String> = keys.iter().collect();
    let mut samples = Vec::new();
    let max_polls = (settings.convergence_bound.as_millis()
        / settings.poll_interval.as_millis().max(1)) as usize
        + 2;
    for _ in 0..max_polls {
        let replicas = &replicas;
        let agreed: Vec<&String> = futures::stream::iter(pending.iter().copied())
            .map(|key| async move {
                let mut states = BTreeSet::new();
                for node in 0..NODES {
                    match replica_read(replicas, node, key, timeout).await {
                        Ok(r) => {
                            states.insert(state(&r));
                        }
                        Err(_) => return None,
                    }
                }
                (states.len() == 1).then_some(key)
            })
            .buffer_unordered(FINAL_READ_CONCURRENCY)
            .filter_map(|k| async move { k })
            .collect()
            .await;
        for k in agreed {
            pending.remove(k);
        }
        samples.push(ConvergenceSample {
            time_ns: now_ns(),
            converged: pending.is_empty(),
        });
        if pending.is_empty() || start.elapsed() >= settings.convergence_bound {
            break;
        }
        tokio::time::sleep(settings.poll_interval).await;
    }
    if !pending.is_empty() {
        // Diagnose: how each node sees its peers when replicas still disagree.
        let mut views = Vec::new();
        for (node, admin) in admins.iter().enumerate() {
            let view = match admin.status(Some(&host_addr(node))).await {
                Ok(s) => s
                    .nodes
                    .iter()
                    .map(|n| {
                        let state = kv_proto::v1::NodeState::try_from(n.state)
                            .map_or_else(|_| n.state.to_string(), |s| s.as_str_name().to_string());
                        format!("{}={state}", n.name)
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => e.to_string(),
            };
            views.push(format!("{} sees [{view}]", host_name(node)));
        }
        shared.lock().expect("shared lock").problems.push(format!(
            "{} keys never agreed on all replicas; membership then: {}",
            pending.len(),
            views.join("; ")
        ));
    }
    let replicas = &replicas;
    let jobs = keys.iter().flat_map(|key| {
        (0..NODES).map(move |node| async move {
            // A replica that does not answer is retried; its record is what the check needs.
            for _ in 0..MAX_FINAL_READ_ATTEMPTS {
                let time_ns = now_ns();
                if let Ok(record) = replica_read(replicas, node, key, timeout).await {
                    return Ok(ReplicaRead {
                        node,
                        key: key.clone(),
                        record,
                        time_ns,
                    });
                }
            }
            Err(format!(
                "ApRead of {key} on {} failed {MAX_FINAL_READ_ATTEMPTS} times",
                host_name(node)
            ))
        })
    });
    let results: Vec<Result<ReplicaRead, String>> = futures::stream::iter(jobs)
        .buffer_unordered(FINAL_READ_CONCURRENCY)
        .collect()
        .await;
    let mut s = shared.lock().expect("shared lock");
    s.samples = samples;
    for r in results {
        match r {
            Ok(read) => s.final_reads.push(read),
            Err(e) => s.problems.push(e),
        }
    }
}
