//! `kv compare` on real processes: one client per node and mode-keyspace, the register and
//! append-set workloads of both modes at once for the same time, the last node cut off from
//! the others (through each node's `Chaos` call, as `kv chaos partition` does) and healed
//! halfway, then the final reads: linearizable reads of every CP key through every node (in
//! the history, so the checker judges them too), and AP replica reads polled until every
//! replica of every key agrees (as the partition suite does in simulation).

use super::judge::{check_ap, check_cp, ModeRun};
use super::{Comparison, FaultSpan};
use crate::demo::workload::{pinned_client, wait_leaders};
use anyhow::{anyhow, bail, Context};
use chaos::faults::FaultClient;
use chaos::scenario::SimKv;
use chaos::scenario::{
    merge, side_at, text, versions, Call, Mode, Side, Window, FINAL_READ_PROCESS_BASE,
    MAX_FINAL_READ_ATTEMPTS,
};
use jepsen::ap::{ApInput, ConvergenceSample, Record, ReplicaRead};
use jepsen::history::{Clock, Op, Recorder};
use jepsen::nemesis::Fault;
use jepsen::workload::{run_append_set, run_register, Stop, WorkloadConfig};
use kv_client::net::{Dialer, TcpDialer};
use kv_client::Client;
use kv_proto::internal::internal_client::InternalClient;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for every CP partition to have a leader before the workload starts.
const LEADERS_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait, after the last write, for every AP replica of every key to agree. Hint
/// replay converges them within seconds; anti-entropy alone (60 s period) would take minutes.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(30);
/// Time between two convergence polls.
const POLL: Duration = Duration::from_millis(250);
/// Deadline of one replica read.
const REPLICA_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Time between two progress reports.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Id of the built-in `ap` keyspace, as `ApRead` wants it.
const AP_KEYSPACE_ID: &str = "2";

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Seeds the workload's choices (the same for both modes).
    pub seed: u64,
    /// How long the workload runs.
    pub duration: Duration,
    /// Register-workload clients per mode, spread over the nodes.
    pub clients: usize,
    /// Hot keys of the register workload.
    pub keys: usize,
    /// Operations per second per register client.
    pub rate: f64,
    /// Elements per second of each append-set client (one per node).
    pub set_rate: f64,
    /// When the last node is cut off, from the workload's start.
    pub partition_at: Duration,
    /// How long it stays cut off.
    pub partition_for: Duration,
    /// Prefix of every key written (fresh per run, so earlier runs' values cannot be read).
    pub key_prefix: String,
}

/// Where a run is, for the progress line.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Time since the workload started.
    pub elapsed: Duration,
    /// The fault in place, if any.
    pub fault: Option<String>,
    /// Per mode (CP first): operations ok, failed, unknown so far.
    pub counts: Vec<(Mode, usize, usize, usize)>,
}

/// One mode's recorders, clients and request log.
struct ModeClients {
    mode: Mode,
    register: Recorder,
    set: Recorder,
    calls: Arc<Mutex<Vec<Call>>>,
    reg_clients: Vec<SimKv>,
    set_clients: Vec<SimKv>,
}

fn counts(mode: Mode, recs: [&Recorder; 2]) -> (Mode, usize, usize, usize) {
    let mut c = (mode, 0, 0, 0);
    for rec in recs {
        for e in &rec.history().events {
            if mode == Mode::Ap && e.f == jepsen::history::OpKind::Cas {
                continue;
            }
            match e.kind {
                jepsen::EventType::Ok => c.1 += 1,
                // A compare-and-swap that found another value was served.
                jepsen::EventType::Fail if e.mismatch => c.1 += 1,
                jepsen::EventType::Fail => c.2 += 1,
                jepsen::EventType::Info => c.3 += 1,
                jepsen::EventType::Invoke => {}
            }
        }
    }
    c
}

/// Runs the comparison on the cluster of `nodes` (name, address; started with `--chaos`),
/// whose peer ports are `peer_addrs` (in the same order: the replicas are read there). The last
/// node is the one cut off. `progress` is called about every second.
pub async fn run(
    nodes: &[(String, String)],
    peer_addrs: &[String],
    plan: &Plan,
    progress: &(dyn Fn(&Progress) + Sync),
) -> anyhow::Result<Comparison> {
    let Some(((min_name, _), majority)) = nodes.split_last() else {
        bail!("the cluster has no nodes");
    };
    if majority.len() < 2 {
        bail!(
            "kv compare needs at least 3 nodes (one cut off, a majority left); the cluster has {}",
            nodes.len()
        );
    }
    let maj_names: Vec<&str> = majority.iter().map(|(n, _)| n.as_str()).collect();
    let min_index = nodes.len() - 1;
    let mut per_node = Vec::new();
    for (name, addr) in nodes {
        per_node.push(
            pinned_client(addr)
                .await
                .with_context(|| format!("connecting to {name} at {addr}"))?,
        );
    }
    let partitions = per_node[0]
        .refresh_ring()
        .await
        .context("reading the ring")?
        .partition_count;
    if wait_leaders(&per_node, partitions, LEADERS_LIMIT)
        .await
        .is_none()
    {
        bail!(
            "some CP partitions still have no Raft leader after {LEADERS_LIMIT:?}: is every node up? (kv status)"
        );
    }
    let mut faults =
        FaultClient::new(nodes.to_vec(), TcpDialer).map_err(|e| anyhow!("fault injection: {e}"))?;

    let origin = Instant::now();
    let clock: Clock =
        Arc::new(move || u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let sides: Vec<ModeClients> = [Mode::Cp, Mode::Ap]
        .into_iter()
        .map(|mode| {
            let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
            let kv = |i: usize| {
                let node = i % nodes.len();
                SimKv::new(
                    per_node[node].clone(),
                    mode,
                    node,
                    calls.clone(),
                    clock.clone(),
                )
            };
            ModeClients {
                mode,
                register: Recorder::with_clock(clock.clone()),
                set: Recorder::with_clock(clock.clone()),
                reg_clients: (0..plan.clients).map(kv).collect(),
                set_clients: (0..nodes.len()).map(kv).collect(),
                calls,
            }
        })
        .collect();
    let reg_config = WorkloadConfig {
        seed: plan.seed,
        processes: plan.clients,
        stop: Stop::Duration(plan.duration),
        rate_per_process: Some(plan.rate),
        keys: plan.keys,
        key_prefix: plan.key_prefix.clone(),
    };
    let set_config = WorkloadConfig {
        seed: plan.seed.wrapping_add(1),
        processes: nodes.len(),
        rate_per_process: Some(plan.set_rate),
        keys: 1,
        ..reg_config.clone()
    };

    let fault_label = format!("{min_name} cut off from {}", maj_names.join(", "));
    let windows: Mutex<Vec<Window>> = Mutex::new(vec![Window {
        from_ns: 0,
        fault: None,
        sides: vec![Side::Whole; nodes.len()],
    }]);
    let fault_on = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let workloads = async {
        let per_mode = sides.iter().map(|s| async {
            let (_, keys) = tokio::join!(
                run_register(&s.reg_clients, &reg_config, &s.register),
                run_append_set(&s.set_clients, &set_config, &s.set),
            );
            keys
        });
        let [cp, ap] =
            <[_; 2]>::try_from(per_mode.collect::<Vec<_>>()).map_err(|_| anyhow!("two modes"))?;
        let (cp_keys, ap_keys) = tokio::join!(cp, ap);
        done.store(true, Ordering::SeqCst);
        Ok::<_, anyhow::Error>([cp_keys, ap_keys])
    };
    let nemesis = async {
        let start = tokio::time::Instant::from_std(origin);
        tokio::time::sleep_until(start + plan.partition_at).await;
        faults
            .partition(&[min_name.as_str()], &maj_names)
            .await
            .map_err(|e| anyhow!("partitioning {min_name}: {e}"))?;
        let mut sides = vec![Side::Majority; nodes.len()];
        sides[min_index] = Side::Minority;
        windows.lock().expect("windows lock").push(Window {
            from_ns: clock(),
            fault: Some(Fault::Partition(vec![
                vec![min_index],
                (0..min_index).collect(),
            ])),
            sides,
        });
        fault_on.store(true, Ordering::SeqCst);
        tokio::time::sleep_until(start + plan.partition_at + plan.partition_for).await;
        let healed = faults.heal_all().await;
        windows.lock().expect("windows lock").push(Window {
            from_ns: clock(),
            fault: Some(Fault::Heal),
            sides: vec![Side::Whole; nodes.len()],
        });
        fault_on.store(false, Ordering::SeqCst);
        healed.map_err(|e| anyhow!("healing the partition: {e}; undo it with `kv chaos heal`"))
    };
    let ticker = async {
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(PROGRESS_EVERY).await;
            progress(&Progress {
                elapsed: origin.elapsed(),
                fault: fault_on.load(Ordering::SeqCst).then(|| fault_label.clone()),
                counts: sides
                    .iter()
                    .map(|s| counts(s.mode, [&s.register, &s.set]))
                    .collect(),
            });
        }
    };
    let (keys, nemesis, ()) = tokio::join!(workloads, nemesis, ticker);
    let workload_end_ns = clock();
    if let Err(e) = nemesis {
        // The schedule did not run as planned: the run compares nothing. Leave no fault behind.
        let _ = faults.heal_all().await;
        return Err(e);
    }
    let keys = keys?;
    let windows = windows.into_inner().expect("windows lock");
    let (from_ns, heal_ns) = match windows.as_slice() {
        [_, on, off, ..] => (on.from_ns, off.from_ns),
        _ => bail!("the partition was never applied"),
    };
    let spans = vec![FaultSpan {
        from_ns,
        to_ns: heal_ns,
        label: fault_label,
    }];

    let mut runs = Vec::new();
    for (side, set_keys) in sides.iter().zip(keys) {
        let mut all_keys: Vec<String> = (0..plan.keys.max(1))
            .map(|k| format!("{}/k{k}", plan.key_prefix))
            .collect();
        all_keys.extend(set_keys);
        let calls = side.calls.lock().expect("calls lock").clone();
        // Requests sent after the workload's time are the append set's read-back.
        let served_sides = availability(&calls, &windows, origin_ns(plan.duration));
        let run = match side.mode {
            Mode::Cp => {
                final_cp_reads(&per_node, &all_keys, &side.register).await;
                let history = merge(side.register.history(), side.set.history());
                let converge_ms = calls
                    .iter()
                    .filter(|c| c.node == min_index && c.served && c.start_ns >= heal_ns)
                    .map(|c| c.end_ns.saturating_sub(heal_ns) / 1_000_000)
                    .min();
                let checked = check_cp(&history, converge_ms);
                ModeRun {
                    mode: Mode::Cp,
                    history,
                    sides: served_sides,
                    ap_input: None,
                    checked,
                }
            }
            Mode::Ap => {
                let input =
                    converge_ap(nodes, peer_addrs, &all_keys, clock.clone(), workload_end_ns)
                        .await?;
                let history = merge(side.register.history(), side.set.history());
                let checked = check_ap(&history, &input);
                ModeRun {
                    mode: Mode::Ap,
                    history,
                    sides: served_sides,
                    ap_input: Some(input),
                    checked,
                }
            }
        };
        runs.push(run);
    }
    Ok(Comparison {
        runs,
        spans,
        workload_end_ns,
        minority: min_name.clone(),
        cluster: format!(
            "real processes: {}",
            nodes
                .iter()
                .map(|(n, a)| format!("{n} {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

fn origin_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Workload requests per side at send time: (sent, served).
pub fn availability(
    calls: &[Call],
    windows: &[Window],
    end_ns: u64,
) -> BTreeMap<Side, (usize, usize)> {
    let mut out: BTreeMap<Side, (usize, usize)> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.start_ns < end_ns) {
        let e = out.entry(side_at(windows, c.node, c.start_ns)).or_default();
        e.0 += 1;
        e.1 += usize::from(c.served);
    }
    out
}

/// Reads every key through every node (linearizable), each up to [`MAX_FINAL_READ_ATTEMPTS`]
/// times; every attempt goes into the history. The nodes are read at once, keys one by one.
async fn final_cp_reads(per_node: &[Client], keys: &[String], recorder: &Recorder) {
    let mut tasks = tokio::task::JoinSet::new();
    for (node, client) in per_node.iter().enumerate() {
        let (client, keys, recorder) = (client.clone(), keys.to_vec(), recorder.clone());
        tasks.spawn(async move {
            for (k, key) in keys.iter().enumerate() {
                let process = FINAL_READ_PROCESS_BASE + (node * keys.len() + k) as u64;
                for _ in 0..MAX_FINAL_READ_ATTEMPTS {
                    let id = recorder.invoke(process, key, Op::Read);
                    match client.get("cp", key.as_bytes(), Default::default()).await {
                        Ok(r) => {
                            let (version, timestamp) = versions(r.version.as_ref());
                            recorder.ok(id, text(r.value), version, timestamp);
                            break;
                        }
                        Err(_) => recorder.fail(id),
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        // A read task only records: a panic in it is a bug to surface.
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

type Replica = InternalClient<tonic::transport::Channel>;

/// One node's record of `key` in the `ap` keyspace.
async fn replica_read(replica: &Replica, key: &str) -> Result<Option<Record>, String> {
    let mut c = replica.clone();
    let mut req = tonic::Request::new(kv_proto::internal::ApReadRequest {
        keyspace: AP_KEYSPACE_ID.into(),
        key: key.as_bytes().to_vec(),
    });
    req.set_timeout(REPLICA_READ_TIMEOUT);
    let resp = tokio::time::timeout(REPLICA_READ_TIMEOUT, c.ap_read(req))
        .await
        .map_err(|_| format!("ApRead of {key} timed out"))?
        .map_err(|s| format!("ApRead of {key}: {}", s.message()))?;
    Ok(resp.into_inner().record.map(|r| Record {
        value: (!r.tombstone).then(|| String::from_utf8_lossy(&r.value).into_owned()),
        timestamp: r
            .hlc
            .map_or((0, 0, 0), |h| (h.physical_ms, h.logical, h.node_id)),
    }))
}

/// Every node's record of every key: per node, in key order (nodes read at once).
async fn read_replicas(
    replicas: &[Replica],
    keys: &[String],
    clock: &Clock,
) -> Vec<Vec<(u64, Result<Option<Record>, String>)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (node, replica) in replicas.iter().enumerate() {
        let (replica, keys, clock) = (replica.clone(), keys.to_vec(), clock.clone());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                let t = clock();
                out.push((t, replica_read(&replica, key).await));
            }
            (node, out)
        });
    }
    let mut by_node = vec![Vec::new(); replicas.len()];
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((node, out)) => by_node[node] = out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    by_node
}

/// The state replicas must agree on: a tombstone and a missing record are the same.
fn state(r: &Option<Record>) -> Option<(jepsen::Hlc, String)> {
    r.as_ref()
        .and_then(|r| r.value.clone().map(|v| (r.timestamp, v)))
}

/// Polls every replica of every key until all agree or [`CONVERGE_LIMIT`] passes, then takes
/// the final per-replica reads: the AP checker's input.
async fn converge_ap(
    nodes: &[(String, String)],
    peer_addrs: &[String],
    keys: &[String],
    clock: Clock,
    quiet_ns: u64,
) -> anyhow::Result<ApInput> {
    let mut replicas = Vec::new();
    for ((name, _), addr) in nodes.iter().zip(peer_addrs) {
        let ch = TcpDialer
            .channel(addr)
            .map_err(|e| anyhow!("no channel to {name} at {addr}: {e}"))?;
        replicas.push(InternalClient::new(ch));
    }
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let views = read_replicas(&replicas, keys, &clock).await;
        let agreed = (0..keys.len()).all(|k| {
            let states: Option<BTreeSet<_>> = views
                .iter()
                .map(|node| node[k].1.as_ref().ok().map(state))
                .collect();
            states.is_some_and(|s| s.len() == 1)
        });
        samples.push(ConvergenceSample {
            time_ns: clock(),
            converged: agreed,
        });
        if agreed || start.elapsed() >= CONVERGE_LIMIT {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut final_reads = Vec::new();
    for (node, reads) in read_replicas(&replicas, keys, &clock)
        .await
        .into_iter()
        .enumerate()
    {
        for ((time_ns, r), key) in reads.into_iter().zip(keys) {
            let record = r.map_err(|e| anyhow!("final read on {}: {e}", nodes[node].0))?;
            final_reads.push(ReplicaRead {
                node,
                key: key.clone(),
                record,
                time_ns,
            });
        }
    }
    let final_ns = final_reads
        .iter()
        .map(|r| r.time_ns)
        .min()
        .unwrap_or(quiet_ns);
    Ok(ApInput {
        final_reads,
        samples,
        heal_ns: quiet_ns,
        // Divergence is judged on the final reads, taken once replicas agreed or the limit passed.
        convergence_deadline_ns: final_ns.saturating_sub(quiet_ns),
    })
}
