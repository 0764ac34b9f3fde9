//! `kv bench`: a load generator for kv (and, built with `--features etcd`, for etcd, so both
//! run the same loop). It checks the flags against the keyspace, connects, optionally writes
//! every key once, warms up, measures, and prints throughput, latency percentiles from HDR
//! histograms, errors by kind and server-side hops (docs/performance.md). Speed is never
//! asserted anywhere: these are measurements, not tests.

pub mod args;
mod driver;
#[cfg(feature = "etcd")]
mod etcd;
pub mod keys;
mod report;
mod stats;
mod target;

pub use args::BenchArgs;

use crate::arg_enums::ConsistencyArg;
use crate::cmd::Ctx;
use crate::output::{CliError, Exit, Stage};
use args::{Distribution, Op, TargetArg};
use driver::{Load, Pace, Stop};
use keys::{KeyChooser, Zipf};
use kv_proto::v1 as pb;
use serde_json::{json, Value};
use std::sync::Arc;
use target::{KvTarget, Target};

/// `kv bench`.
pub async fn run(ctx: &Ctx, args: BenchArgs) -> Result<Exit, CliError> {
    check(&args)?;
    let keys = match args.distribution {
        Distribution::Uniform => KeyChooser::Uniform { n: args.keys },
        Distribution::Zipfian => {
            KeyChooser::Zipfian(Zipf::new(args.keys, args.zipf_theta).map_err(CliError::BadInput)?)
        }
    };
    let (target, mode) = connect(ctx, &args).await?;
    let seed = args.seed.unwrap_or_else(rand::random);
    // A printable pattern, so that a value read back by hand is recognisable.
    let value: Vec<u8> = (0..args.value_size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let load = Arc::new(Load {
        target,
        mix: args.mix.clone(),
        keys,
        value,
        concurrency: args.concurrency,
        seed,
    });
    let preload = if args.preload {
        let p = driver::preload(load.clone(), args.keys).await;
        Some(json!({
            "keys": args.keys,
            "elapsed_s": p.elapsed.as_secs_f64(),
            "errors": p.recorder.failed(),
        }))
    } else {
        None
    };
    let pace = match args.rate {
        Some(rate) => Pace::Rate(rate),
        None => Pace::Closed,
    };
    let stop = match (args.count, args.duration) {
        (Some(n), _) => Stop::Count(n),
        (None, d) => Stop::After(d.unwrap_or(args::DEFAULT_DURATION)),
    };
    let measured = driver::run(load.clone(), pace, args.warmup, stop).await;
    let mut doc = json!({
        "target": match args.target { TargetArg::Kv => "kv", TargetArg::Etcd => "etcd" },
        "keyspace": (args.target == TargetArg::Kv).then(|| ctx.global.keyspace.clone()),
        "mode": mode,
        "loop": if args.rate.is_some() { "open" } else { "closed" },
        "concurrency": args.concurrency,
        "rate": args.rate,
        "connections": load.target.connections(),
        "mix": Op::ALL.iter().filter(|o| args.mix.has(**o)).map(|o| (o.name().to_string(), json!(args.mix.weight(*o)))).collect::<serde_json::Map<_, _>>(),
        "mix_text": args.mix.to_string(),
        "keys": args.keys,
        "distribution": args.distribution.name(),
        "zipf_theta": (args.distribution == Distribution::Zipfian).then_some(args.zipf_theta),
        "value_size": args.value_size,
        "consistency": args.consistency.map(consistency_name),
        "stale": args.stale,
        "seed": seed,
        "warmup_s": args.warmup.as_secs_f64(),
        "preload": preload,
    });
    let measurements = measured
        .recorder
        .to_json(measured.elapsed, load.target.hop_method());
    if let (Value::Object(doc), Value::Object(m)) = (&mut doc, measurements) {
        doc.extend(m);
    }
    ctx.out.result(doc.clone(), || report::text(&doc))?;
    if measured.recorder.answered() == 0 && measured.recorder.failed() > 0 {
        // Nothing was answered: the report says why; the exit code says it went wrong.
        return Ok(Exit::Unavailable);
    }
    Ok(Exit::Ok)
}

fn consistency_name(c: ConsistencyArg) -> &'static str {
    match c {
        ConsistencyArg::One => "one",
        ConsistencyArg::Quorum => "quorum",
        ConsistencyArg::All => "all",
    }
}

/// Refuses flags that cannot make a run, naming the bound.
fn check(a: &BenchArgs) -> Result<(), CliError> {
    let bad = |m: String| Err(CliError::BadInput(m));
    if a.concurrency == 0 || a.concurrency > args::MAX_CONCURRENCY {
        return bad(format!(
            "--concurrency {}: must be 1..={}",
            a.concurrency,
            args::MAX_CONCURRENCY
        ));
    }
    if a.connections == 0 || a.connections > args::MAX_CONNECTIONS {
        return bad(format!(
            "--connections {}: must be 1..={}",
            a.connections,
            args::MAX_CONNECTIONS
        ));
    }
    if a.keys == 0 || a.keys > args::MAX_KEYS {
        return bad(format!("--keys {}: must be 1..={}", a.keys, args::MAX_KEYS));
    }
    if a.value_size > args::MAX_VALUE_SIZE {
        return bad(format!(
            "--value-size {}: at most {} bytes",
            a.value_size,
            args::MAX_VALUE_SIZE
        ));
    }
    if let Some(rate) = a.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return bad(format!(
                "--rate {rate}: must be a positive number of requests per second"
            ));
        }
    }
    if a.count == Some(0) {
        return bad("--count 0: measure at least one request".into());
    }
    if a.duration.is_some_and(|d| d.is_zero()) {
        return bad("--duration 0: measure for some time".into());
    }
    Ok(())
}

/// Connects to the target and checks the flags against it; returns the keyspace's mode for
/// kv.
async fn connect(ctx: &Ctx, a: &BenchArgs) -> Result<(Target, Option<&'static str>), CliError> {
    match a.target {
        TargetArg::Kv => connect_kv(ctx, a).await,
        TargetArg::Etcd => connect_etcd(ctx, a).map(|t| (t, None)),
    }
}

async fn connect_kv(ctx: &Ctx, a: &BenchArgs) -> Result<(Target, Option<&'static str>), CliError> {
    let mut clients = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        clients.push(ctx.client().await?);
    }
    let first = &clients[0];
    let keyspaces = first
        .list_keyspaces()
        .await
        .map_err(CliError::client(Stage::Connect))?;
    let name = &ctx.global.keyspace;
    let Some(ks) = keyspaces.iter().find(|k| &k.name == name) else {
        let names: Vec<&str> = keyspaces.iter().map(|k| k.name.as_str()).collect();
        return Err(CliError::BadInput(format!(
            "keyspace {name:?} does not exist (keyspaces: {}); create it with `kv keyspace create`",
            names.join(", ")
        )));
    };
    let ap = ks.mode == pb::Mode::Ap as i32;
    if ap && a.mix.has(Op::Cas) {
        return Err(CliError::BadInput(format!(
            "keyspace {name:?} is AP: compare-and-swap needs a CP keyspace; drop cas from --mix"
        )));
    }
    if ap && a.stale {
        return Err(CliError::BadInput(format!(
            "--stale is for CP keyspaces; {name:?} is AP: choose its reads with --consistency"
        )));
    }
    if !ap && a.consistency.is_some() {
        return Err(CliError::BadInput(format!(
            "--consistency is for AP keyspaces; {name:?} is CP: use --stale for reads from any replica"
        )));
    }
    first
        .refresh_ring()
        .await
        .map_err(CliError::client(Stage::Connect))?;
    let target = KvTarget {
        clients,
        keyspace: name.clone(),
        options: target::kv_options(a.consistency, a.stale),
    };
    Ok((Target::Kv(target), Some(if ap { "ap" } else { "cp" })))
}

#[cfg(feature = "etcd")]
fn connect_etcd(ctx: &Ctx, a: &BenchArgs) -> Result<Target, CliError> {
    if a.consistency.is_some() {
        return Err(CliError::BadInput(
            "--consistency is for kv's AP keyspaces; etcd reads are linearizable, or serializable with --stale".into(),
        ));
    }
    etcd::EtcdTarget::new(&ctx.global.endpoints, a.connections, a.stale, ctx.timeout())
        .map(Target::Etcd)
        .map_err(CliError::BadInput)
}

#[cfg(not(feature = "etcd"))]
fn connect_etcd(_: &Ctx, _: &BenchArgs) -> Result<Target, CliError> {
    Err(CliError::BadInput(
        "this kv was built without etcd support: build it with `cargo build --release --features etcd --bin kv`".into(),
    ))
}
