//! `kv demo`: the first thing a newcomer runs. A 3-node cluster of real processes in a
//! temporary folder, writes to both keyspaces, one node partitioned away, a client on each side
//! writing and reading, the heal, convergence, and a table comparing CP and AP; then the
//! cluster is stopped and its folder deleted, also on Ctrl-C and on error. Text mode tells the
//! story step by step; `-o json` prints only the table.

use super::Ctx;
use crate::cli::DemoArgs;
use crate::demo::report::{self, human, Kind, Mode, ModeReport, Op, Side};
use crate::demo::workload::{self, Recorder, REQUEST_TIMEOUT};
use crate::demo::DemoFolder;
use crate::local::{self, UpOptions};
use crate::output::{CliError, Exit, Stage};
use anyhow::anyhow;
use chaos::faults::FaultClient;
use kv_client::net::TcpDialer;
use kv_client::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Nodes of the demo cluster; the last one is cut off.
const NODES: usize = 3;
/// Keys both sides write during the partition, in each keyspace.
const KEYS: usize = 3;
/// How long to wait for Raft leaders (at start, and on the majority side after the cut).
const LEADERS_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait, after the heal, for every node to answer every key alike. AP replicas
/// converge through hint replay within seconds; anti-entropy alone would take minutes.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

const INTRO: &str = "\
kv demo: CP and AP side by side on a real 3-node cluster (about 20 seconds).

Keyspace `cp` replicates each partition of the keys through Raft: a write is acknowledged once
a majority of replicas has it, and every read sees the latest acknowledged write. Keyspace `ap`
replicates Dynamo-style: any node takes writes, replicas exchange them later, and when two
writes of a key meet, the one with the newer timestamp wins (last write wins). One network
partition shows what each choice costs.";

/// Runs the demo and cleans up whatever happens.
pub async fn run(ctx: &Ctx, args: DemoArgs) -> Result<Exit, CliError> {
    let started = Instant::now();
    let folder = DemoFolder::create()?;
    let outcome = tokio::select! {
        r = demo(ctx, &args, &folder.path, started) => r,
        r = tokio::signal::ctrl_c() => Err(CliError::Other(match r {
            Ok(()) => anyhow!("interrupted (Ctrl-C)"),
            Err(e) => anyhow!("waiting for Ctrl-C: {e}"),
        })),
    };
    let dir = folder.path.clone();
    let _ = say(ctx, "\nStopping the cluster and deleting its folder ...");
    let cleaned = folder.remove();
    let table = match (outcome, cleaned) {
        (Ok(table), Ok(())) => table,
        (Ok(_), Err(e)) => return Err(e.context("the demo ran, but cleaning up failed").into()),
        (Err(e), Ok(())) => {
            ctx.out.note(&format!(
                "the demo's cluster was stopped and {} deleted",
                dir.display()
            ));
            return Err(e);
        }
        (Err(e), Err(c)) => {
            return Err(CliError::Other(anyhow!(
                "{e}; cleaning up failed too: {c:#}"
            )))
        }
    };
    let elapsed = started.elapsed();
    let mut json = table.json;
    json["dir"] = json!(dir);
    json["cleaned_up"] = json!(true);
    json["elapsed_ms"] = json!(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    ctx.out.result(json, || {
        format!(
            "{} deleted; the demo took {}.\n\n{}",
            dir.display(),
            human(elapsed),
            table.text
        )
    })?;
    Ok(Exit::Ok)
}

/// The comparison table, in both forms.
struct Table {
    json: Value,
    text: String,
}

/// A step of the story, for people (text mode only).
fn say(ctx: &Ctx, text: &str) -> Result<(), CliError> {
    if ctx.out.json() {
        return Ok(());
    }
    ctx.out.bytes(format!("{text}\n").as_bytes())
}

async fn connect(addr: &str) -> Result<Client, CliError> {
    workload::pinned_client(addr)
        .await
        .map_err(CliError::client(Stage::Connect))
}

/// The demo itself, in the cluster folder `dir`.
async fn demo(ctx: &Ctx, args: &DemoArgs, dir: &Path, started: Instant) -> Result<Table, CliError> {
    say(ctx, INTRO)?;

    say(
        ctx,
        &format!(
            "\n1. Starting {NODES} nodes that accept fault injection (--chaos), on free ports, in {} ...",
            dir.display()
        ),
    )?;
    let t = Instant::now();
    let opts = UpOptions {
        nodes: NODES,
        base_port: 0,
        chaos: true,
        secure: false,
    };
    let cluster = local::up(dir, &opts, &|_: &str| {}).await?;
    let nodes: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr.clone()))
        .collect();
    let Some((minority, majority)) = nodes.split_last() else {
        return Err(CliError::Other(anyhow!("the demo cluster has no nodes")));
    };
    let min_name = minority.0.as_str();
    let maj_names: Vec<&str> = majority.iter().map(|(n, _)| n.as_str()).collect();
    let maj_text = match maj_names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => maj_names.join(""),
    };
    let mut per_node = Vec::new();
    for (_, addr) in &nodes {
        per_node.push(connect(addr).await?);
    }
    let majority_client = per_node[0].clone();
    let minority_client = per_node[NODES - 1].clone();
    let partitions = majority_client
        .refresh_ring()
        .await
        .map_err(CliError::client(Stage::Connect))?
        .partition_count;
    let leaders = workload::wait_leaders(&per_node, partitions, LEADERS_LIMIT).await;
    let listing: Vec<String> = nodes.iter().map(|(n, a)| format!("{n} {a}")).collect();
    say(
        ctx,
        &format!(
            "   ready after {}: {}; every CP partition has a Raft leader{}",
            human(t.elapsed()),
            listing.join(", "),
            if leaders.is_some() {
                ""
            } else {
                " (not yet: some early CP requests may fail)"
            }
        ),
    )?;

    let rec = Recorder::new(started);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("demo:{i}")).collect();
    say(
        ctx,
        &format!(
            "\n2. Writing {KEYS} keys to each keyspace through {}, before any fault ...",
            maj_names[0]
        ),
    )?;
    let mut lines = Vec::new();
    for mode in [Mode::Cp, Mode::Ap] {
        let mut ops = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let op = rec
                .write(
                    &majority_client,
                    (mode, Side::Majority, false),
                    key,
                    &format!("before-{i}"),
                )
                .await;
            ops.push(op);
        }
        lines.push(format!("{}: {}", mode.keyspace(), summary(&ops)));
    }
    say(ctx, &format!("   {}", lines.join("      ")))?;

    say(
        ctx,
        &format!(
            "\n3. Cutting {min_name} off from {maj_text}: from now on each side drops every message to the other\n   (through each node's fault-injection call, as `kv chaos partition {min_name}` does)."
        ),
    )?;
    let led_by_minority = minority_client
        .status(None)
        .await
        .map(|s| s.leader_of.len())
        .ok();
    let mut faults =
        FaultClient::new(nodes.clone(), TcpDialer).map_err(|e| CliError::Other(e.into()))?;
    faults
        .partition(&[min_name], &maj_names)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    if args.skew_ms != 0 {
        faults
            .skew(min_name, args.skew_ms)
            .await
            .map_err(|e| CliError::Other(e.into()))?;
        say(
            ctx,
            &format!(
                "   {min_name}'s clock is also set {} ms {} the others: its AP writes carry timestamps that far off.",
                args.skew_ms.unsigned_abs(),
                if args.skew_ms < 0 { "behind" } else { "ahead of" }
            ),
        )?;
    }
    let majority_clients = &per_node[..NODES - 1];
    let elected = workload::wait_leaders(majority_clients, partitions, LEADERS_LIMIT).await;
    let led = led_by_minority.map_or("some".to_string(), |n| n.to_string());
    say(
        ctx,
        &match elected {
            Some(took) => format!(
                "   {min_name} was the Raft leader of {led} of {partitions} CP partitions; {maj_text} elected new leaders for them in {}.",
                human(took)
            ),
            None => format!(
                "   {maj_text} still lack a leader for some CP partitions after {}: CP requests on those keys fail on their side too.",
                human(LEADERS_LIMIT)
            ),
        },
    )?;

    let rounds = args.rounds;
    say(
        ctx,
        &format!(
            "\n4. A client next to {} (majority side) and a client next to {min_name} (minority side) each\n   write then read the same {KEYS} keys in both keyspaces, {rounds} rounds, {} apart. Every request has a\n   {} deadline. AP requests use consistency `one` (one replica's answer is enough; a lone\n   node has only its own).",
            maj_names[0],
            human(workload::ROUND_TICK),
            human(REQUEST_TIMEOUT)
        ),
    )?;
    workload::partition_rounds(&rec, &majority_client, &minority_client, &keys, rounds).await;
    let ops = rec.ops();
    for mode in [Mode::Cp, Mode::Ap] {
        for (side, who) in [(Side::Majority, maj_names[0]), (Side::Minority, min_name)] {
            let of: Vec<Op> = ops
                .iter()
                .filter(|o| o.mode == mode && o.side == side && o.during_partition)
                .cloned()
                .collect();
            say(
                ctx,
                &format!(
                    "   {}  {:<8} side ({who}): {}",
                    mode.keyspace(),
                    side.name(),
                    summary(&of)
                ),
            )?;
        }
    }
    say(
        ctx,
        &format!(
            "   CP on {min_name}: it cannot reach a majority of any Raft group, so it refuses rather than answer\n   with possibly stale data."
        ),
    )?;
    let ap_ops: Vec<&Op> = ops.iter().filter(|o| o.mode == Mode::Ap).collect();
    if let Some((read, Some(missed))) = report::stale_reads(&ap_ops).first() {
        say(
            ctx,
            &format!(
                "   AP on both sides: served, but the sides cannot see each other's writes. A stale read, for\n   example: a read of {} on the {} side returned {:?},\n   though {:?} had been acknowledged {} earlier.",
                read.key,
                read.side.name(),
                read.value.as_deref().unwrap_or("nothing"),
                missed.value.as_deref().unwrap_or(""),
                human(read.start.saturating_sub(missed.end))
            ),
        )?;
    }

    say(
        ctx,
        &format!(
            "\n5. Healing the partition: {min_name} exchanges messages with {maj_text} again ..."
        ),
    )?;
    faults
        .heal_all()
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    let (cp, ap) = tokio::join!(
        workload::wait_converged(&per_node, Mode::Cp, &keys, CONVERGE_LIMIT),
        workload::wait_converged(&per_node, Mode::Ap, &keys, CONVERGE_LIMIT),
    );
    let mut reports = Vec::new();
    for (mode, result) in [(Mode::Cp, cp), (Mode::Ap, ap)] {
        let (converged, finals) = match result {
            Ok((took, finals)) => {
                say(
                    ctx,
                    &format!(
                        "   {}: every node answers every key, with the same value, {} after the heal{}",
                        mode.keyspace(),
                        human(took),
                        match mode {
                            Mode::Cp => format!(" ({min_name} serves again)"),
                            Mode::Ap => " (replicas exchanged what they missed)".into(),
                        }
                    ),
                )?;
                (Some(took), finals)
            }
            Err(views) => {
                say(
                    ctx,
                    &format!(
                        "   {}: the nodes still disagree {} after the heal: {views:?}",
                        mode.keyspace(),
                        human(CONVERGE_LIMIT)
                    ),
                )?;
                // The first node (majority side) stands for the final state where it answered.
                let finals = views
                    .into_iter()
                    .filter_map(|(k, answers)| Some((k, answers.into_iter().next()?.ok()?)))
                    .collect();
                (None, finals)
            }
        };
        if mode == Mode::Ap {
            lww_story(ctx, &ops, &finals, min_name, maj_names[0])?;
        }
        reports.push(report::judge(mode, &ops, &finals, converged));
    }

    say(
        ctx,
        "\n6. Every acknowledged write checked against the final values (lost: the final value is one\n   written before it, in real time), and every read against the writes acknowledged before it\n   began (stale: it missed one).",
    )?;
    for r in &reports {
        let refused = ops
            .iter()
            .filter(|o| o.mode == r.mode && o.kind == Kind::Write && !o.ok())
            .count();
        let applied = match (refused, r.failed_writes_applied) {
            (0, _) => String::new(),
            (n, 0) => format!("; none of the {n} writes refused shows up after the heal"),
            (n, k) => format!(
                "; {k} of the {n} writes refused show up after the heal (refused writes of unknown outcome)"
            ),
        };
        say(
            ctx,
            &format!(
                "   {}: {} acknowledged writes lost, {} stale reads{applied}",
                r.mode.keyspace(),
                r.lost_writes,
                r.stale_reads
            ),
        )?;
    }
    Ok(table(&reports, &nodes, min_name, &maj_names, args))
}

/// "writes 6/6 ok, reads 6/6 ok, p50 3 ms" or "... refused after 812 ms (Unavailable x12)".
fn summary(ops: &[Op]) -> String {
    let count = |kind: Kind| {
        let of: Vec<&Op> = ops.iter().filter(|o| o.kind == kind).collect();
        (of.iter().filter(|o| o.ok()).count(), of.len())
    };
    let mut parts = Vec::new();
    for (kind, name) in [(Kind::Write, "writes"), (Kind::Read, "reads")] {
        let (ok, total) = count(kind);
        if total > 0 {
            parts.push(format!("{name} {ok}/{total} ok"));
        }
    }
    let latency = |ok: bool| {
        let l: Vec<Duration> = ops
            .iter()
            .filter(|o| o.ok() == ok)
            .map(|o| o.end.saturating_sub(o.start))
            .collect();
        report::percentile(&l, 50)
    };
    if let Some(p50) = latency(true) {
        parts.push(format!("p50 {}", human(p50)));
    }
    if let Some(p50) = latency(false) {
        let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
        for e in ops.iter().filter_map(|o| o.error.as_deref()) {
            *errors.entry(e).or_insert(0) += 1;
        }
        let errors: Vec<String> = errors.iter().map(|(e, n)| format!("{e} x{n}")).collect();
        parts.push(format!(
            "refused after {} (p50): {}",
            human(p50),
            errors.join(", ")
        ));
    }
    parts.join(", ")
}

/// For each AP key both sides wrote during the partition: which side's last write survived.
fn lww_story(
    ctx: &Ctx,
    ops: &[Op],
    finals: &BTreeMap<String, Option<String>>,
    min_name: &str,
    maj_name: &str,
) -> Result<(), CliError> {
    let ap: Vec<&Op> = ops.iter().filter(|o| o.mode == Mode::Ap).collect();
    let discarded = report::discarded_by_lww(&ap, finals);
    if discarded.is_empty() {
        return Ok(());
    }
    say(
        ctx,
        "   Last write wins: where both sides wrote a key, the write with the newer timestamp is kept everywhere\n   and the other side's write, although acknowledged, is gone:",
    )?;
    for lost in discarded {
        let kept = finals.get(&lost.key).cloned().flatten();
        let kept_write = ap
            .iter()
            .find(|o| o.kind == Kind::Write && o.key == lost.key && o.value == kept);
        let when = match kept_write {
            Some(k) if k.start >= lost.start => {
                format!(", written {} later", human(k.start - lost.start))
            }
            Some(k) => format!(", written {} earlier", human(lost.start - k.start)),
            None => String::new(),
        };
        let who = match lost.side {
            Side::Majority => maj_name,
            Side::Minority => min_name,
        };
        say(
            ctx,
            &format!(
                "     {}: every replica holds {:?}{when}; {who}'s {:?} was discarded",
                lost.key,
                kept.as_deref().unwrap_or("nothing"),
                lost.value.as_deref().unwrap_or("")
            ),
        )?;
    }
    Ok(())
}

/// The comparison table and its JSON form.
fn table(
    reports: &[ModeReport],
    nodes: &[(String, String)],
    min_name: &str,
    maj_names: &[&str],
    args: &DemoArgs,
) -> Table {
    let modes: serde_json::Map<String, Value> = reports
        .iter()
        .map(|r| (r.mode.keyspace().to_string(), r.json()))
        .collect();
    let json = json!({
        "nodes": nodes.iter().map(|(n, a)| json!({"name": n, "addr": a})).collect::<Vec<_>>(),
        "majority": maj_names,
        "minority": [min_name],
        "rounds": args.rounds,
        "skew_ms": args.skew_ms,
        "modes": modes,
    });
    let text = format!(
        "CP and AP during one partition ({min_name} cut off from {}), and after the heal:\n{}",
        maj_names.join(", "),
        report::table_text(reports, &maj_names.join(", "), min_name)
    );
    Table { json, text }
}
