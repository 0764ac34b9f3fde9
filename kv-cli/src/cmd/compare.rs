//! `kv compare`: the same workload and fault schedule against the `cp` and `ap` keyspaces
//! side by side — on real processes (a 3-node cluster in a temporary folder, or the running
//! local cluster given with `--dir`) or in the turmoil simulation (`--sim`) — then both
//! histories checked, written, and one table printed (`-o json`: the table as JSON), with a
//! progress line every second while it runs and an HTML report with `--report DIR`.
//! Exit 0 when each mode kept its promises (CP linearizable, nothing acknowledged lost; AP
//! nothing lost beyond last-write-wins, replicas converged), 1 otherwise.

use super::Ctx;
use crate::cli::CompareArgs;
use crate::compare::judge::{self, ModeReport};
use crate::compare::real::{self, Plan, Progress};
use crate::compare::sim::{self, SimPlan};
use crate::compare::{html, Comparison};
use crate::demo::DemoFolder;
use crate::local::{self, LocalCluster, UpOptions};
use crate::output::{CliError, Exit};
use anyhow::{anyhow, Context};
use chaos::scenario::Mode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Nodes of the cluster `kv compare` starts.
const NODES: usize = 3;
/// Append-set elements per second per node (each its own key, written once).
const SET_RATE: f64 = 4.0;

/// The partition window the flags give, checked against the duration.
fn window(args: &CompareArgs) -> Result<(Duration, Duration), CliError> {
    let at = args.partition_at.unwrap_or(args.duration / 4);
    let length = args.partition_for.unwrap_or(args.duration / 2);
    if at + length >= args.duration {
        return Err(CliError::BadInput(format!(
            "the partition ({:?} from {:?}) must heal before the workload ends at --duration {:?}: shorten --partition-for or --partition-at, or lengthen --duration",
            length, at, args.duration
        )));
    }
    Ok((at, length))
}

fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The command line that reproduces this run (the same workload and schedule; only `--sim`
/// runs reproduce byte for byte).
fn command(args: &CompareArgs, at: Duration, length: Duration, out: &Option<PathBuf>) -> String {
    let mut cmd = format!(
        "kv compare --seed {} --duration {} --clients {} --keys {} --rate {} --partition-at {} --partition-for {}",
        args.seed,
        secs(args.duration),
        args.clients,
        args.keys,
        args.rate,
        secs(at),
        secs(length)
    );
    if args.sim {
        cmd.push_str(" --sim");
    }
    if let (Some(dir), true) = (out, args.report.is_some()) {
        cmd.push_str(&format!(" --report {}", dir.display()));
    }
    cmd
}

/// `kv compare`.
pub async fn run(ctx: &Ctx, args: CompareArgs) -> Result<Exit, CliError> {
    let (at, length) = window(&args)?;
    let started = Instant::now();
    let out_dir = match (&args.report, &args.histories) {
        (Some(d), _) | (None, Some(d)) => d.clone(),
        (None, None) => std::env::temp_dir().join(format!(
            "kv-compare-seed{}-{}",
            args.seed,
            std::process::id()
        )),
    };
    let cmp = if args.sim {
        let plan = SimPlan {
            seed: args.seed,
            duration: args.duration,
            clients: args.clients as usize,
            keys: args.keys as usize,
            rate: f64::from(args.rate),
            partition_at: at,
            partition_for: length,
        };
        ctx.out.note(&format!(
            "kv compare --sim: seed {}, {} of simulated workload per mode, both simulations at once ...",
            args.seed,
            secs(args.duration)
        ));
        // The simulations build their own runtimes and must see no other: a thread of this
        // runtime (even a blocking one) carries its context, and anything that reaches it
        // runs on real threads and real time, which made runs of one seed differ.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kv-compare-sim".into())
            .spawn(move || {
                let _ = tx.send(sim::run(&plan));
            })
            .context("starting the simulation thread")?;
        rx.await
            .map_err(|_| anyhow!("the simulation thread panicked"))??
    } else {
        real_run(ctx, &args, at, length).await?
    };

    let reports: Vec<ModeReport> = cmp.runs.iter().map(judge::report).collect();
    let files = cmp.save_histories(&out_dir)?;
    let cmd = command(&args, at, length, &Some(out_dir.clone()));
    let report_file = match &args.report {
        Some(dir) => {
            let path = dir.join("index.html");
            std::fs::write(&path, html::render(&cmp, &reports, &cmd))
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let kept = promises_kept(&reports);
    let rows = judge::rows(&reports, &cmp.minority);
    let modes: serde_json::Map<String, Value> = reports
        .iter()
        .map(|r| (r.mode.name().to_string(), r.json()))
        .collect();
    let json = json!({
        "seed": args.seed,
        "sim": args.sim,
        "cluster": cmp.cluster,
        "duration_ms": args.duration.as_millis() as u64,
        "clients": args.clients,
        "faults": cmp.spans.iter().map(|s| json!({"from_ms": s.from_ns / 1_000_000, "to_ms": s.to_ns / 1_000_000, "fault": s.label})).collect::<Vec<_>>(),
        "modes": modes,
        "histories": files,
        "report": report_file,
        "command": cmd,
        "promises_kept": kept,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    ctx.out.result(json, || {
        let mut text = format!(
            "CP and AP under the same workload and faults ({}; {}):\n{}\n\nhistories: {}",
            cmp.cluster,
            cmp.spans
                .iter()
                .map(|s| format!(
                    "{} from {:.1} s to {:.1} s",
                    s.label,
                    s.from_ns as f64 / 1e9,
                    s.to_ns as f64 / 1e9
                ))
                .collect::<Vec<_>>()
                .join("; "),
            judge::table_text(&rows),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(r) = &report_file {
            text.push_str(&format!("\nreport: {}", r.display()));
        }
        for r in &reports {
            for e in &r.checked.examples {
                text.push_str(&format!("\n{} anomaly: {e}", r.mode.name()));
            }
        }
        text.push_str(&format!("\nrerun: {cmd}"));
        if !kept {
            text.push_str("\nA mode broke its promise (see the anomalies above): exit 1.");
        }
        text
    })?;
    Ok(if kept { Exit::Ok } else { Exit::Error })
}

/// CP: linearizable and nothing acknowledged lost; AP: nothing lost beyond last-write-wins,
/// no divergence or resurrection, converged.
fn promises_kept(reports: &[ModeReport]) -> bool {
    reports.iter().all(|r| {
        r.checked.anomalies == 0
            && r.checked.lost_writes == 0
            && (r.mode == Mode::Cp || r.checked.converge_ms.is_some())
    })
}

/// The real-process run: on the cluster of `--dir`, or on a new one in a temporary folder
/// that is removed afterwards (also on error).
async fn real_run(
    ctx: &Ctx,
    args: &CompareArgs,
    at: Duration,
    length: Duration,
) -> Result<Comparison, CliError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let plan = Plan {
        seed: args.seed,
        duration: args.duration,
        clients: args.clients as usize,
        keys: args.keys as usize,
        rate: f64::from(args.rate),
        set_rate: SET_RATE,
        partition_at: at,
        partition_for: length,
        // Fresh keys per run: values of an earlier run on the same cluster cannot be read.
        key_prefix: format!("compare-{nanos:x}"),
    };
    let total = args.duration;
    let progress = |p: &Progress| {
        let counts: Vec<String> = p
            .counts
            .iter()
            .map(|(m, ok, failed, unknown)| {
                format!("{}: {ok} ok, {failed} failed, {unknown} unknown", m.name())
            })
            .collect();
        ctx.out.note(&format!(
            "  {:>5.1} s / {:.0} s  {:<28}  {}",
            p.elapsed.as_secs_f64(),
            total.as_secs_f64(),
            p.fault
                .as_deref()
                .map_or("no fault".to_string(), |f| format!("[{f}]")),
            counts.join(" | ")
        ));
    };
    if let Some(dir) = &ctx.global.dir {
        let cluster = LocalCluster::load(dir)?.ok_or_else(|| {
            CliError::BadInput(format!(
                "no local cluster in {}: start one with `kv local up --chaos --dir {}`, or leave out --dir to let kv compare start its own",
                dir.display(),
                dir.display()
            ))
        })?;
        if !cluster.chaos {
            return Err(CliError::BadInput(format!(
                "the cluster in {} was not started with --chaos, so kv compare cannot partition it: restart it with `kv local down && kv local up --chaos`",
                dir.display()
            )));
        }
        let (nodes, peer_addrs) = addresses(&cluster);
        ctx.out.note(&format!(
            "kv compare on the cluster in {} ({}), seed {} ...",
            dir.display(),
            cluster.names(),
            args.seed
        ));
        return Ok(real::run(&nodes, &peer_addrs, &plan, &progress).await?);
    }
    let folder = DemoFolder::create()?;
    ctx.out.note(&format!(
        "kv compare: starting {NODES} nodes with --chaos in {} ...",
        folder.path.display()
    ));
    let opts = UpOptions {
        nodes: NODES,
        base_port: 0,
        chaos: true,
        secure: false,
    };
    let outcome = async {
        let cluster = local::up(&folder.path, &opts, &|_: &str| {}).await?;
        let (nodes, peer_addrs) = addresses(&cluster);
        ctx.out.note(&format!(
            "  ready: {}; workload for {} on cp and ap at once, seed {} ...",
            nodes
                .iter()
                .map(|(n, a)| format!("{n} {a}"))
                .collect::<Vec<_>>()
                .join(", "),
            secs(args.duration),
            args.seed
        ));
        real::run(&nodes, &peer_addrs, &plan, &progress).await
    };
    let outcome = tokio::select! {
        r = outcome => r,
        r = tokio::signal::ctrl_c() => Err(match r {
            Ok(()) => anyhow!("interrupted (Ctrl-C)"),
            Err(e) => anyhow!("waiting for Ctrl-C: {e}"),
        }),
    };
    let cleaned = folder.remove();
    match (outcome, cleaned) {
        (Ok(c), Ok(())) => Ok(c),
        (Ok(_), Err(e)) => Err(e
            .context("the comparison ran, but cleaning up failed")
            .into()),
        (Err(e), Ok(())) => Err(e.into()),
        (Err(e), Err(c)) => Err(anyhow!("{e:#}; cleaning up failed too: {c:#}").into()),
    }
}

/// The cluster's nodes as (name, client address), and their peer addresses in the same order
/// (where `kv compare` reads AP replicas).
fn addresses(cluster: &LocalCluster) -> (Vec<(String, String)>, Vec<String>) {
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr.clone()))
        .collect();
    let peers = cluster
        .nodes
        .iter()
        .map(|n| n.peer_addr.clone().unwrap_or_else(|| n.addr.clone()))
        .collect();
    (nodes, peers)
}
