//! The `kv` binary: `kv server`, `kv local up|down|status`, and the client commands.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kv_client::{Client, ClientConfig, Consistency, Expected, Options, Routing};
mod local;
use kv_server::{config, node, server};
use local::{LocalCluster, UpOptions};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// kv: a distributed key-value store whose keyspaces choose their side of CAP.
#[derive(Parser)]
#[command(name = "kv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one node.
    Server(ServerArgs),
    /// Manages a local cluster of real processes on loopback.
    Local {
        #[command(subcommand)]
        command: LocalCmd,
    },
    /// Writes a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reads a key.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a key.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replaces a key's value if it holds what is expected (CP keyspaces).
    Cas {
        /// The key.
        key: String,
        /// The new value.
        new_value: String,
        /// Swap only if the key's revision is this.
        #[arg(long, group = "expect")]
        expect_version: Option<u64>,
        /// Swap only if the key's value is this.
        #[arg(long, group = "expect")]
        expect_value: Option<String>,
        /// Swap only if the key does not exist.
        #[arg(long, group = "expect")]
        expect_absent: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shows the ring: partitions per node, preference lists, imbalance.
    Ring {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shows each node's view of the cluster.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists or creates keyspaces.
    Keyspace {
        #[command(subcommand)]
        command: KeyspaceCmd,
    },
}

#[derive(Subcommand)]
enum KeyspaceCmd {
    /// Lists keyspaces.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Creates a keyspace.
    Create {
        /// Name.
        name: String,
        /// cp or ap.
        #[arg(long)]
        mode: ModeArg,
        /// Replication factor N.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Cp,
    Ap,
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Starts a local cluster (3 nodes on loopback) and returns once it is ready.
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// Number of nodes of a new cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// First port (nodes use consecutive ports); 0 picks free ports.
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Stay attached; stop the cluster on Ctrl-C.
        #[arg(long)]
        foreground: bool,
        /// Start nodes with fault injection allowed (--chaos).
        #[arg(long)]
        chaos: bool,
    },
    /// Stops the local cluster (data is kept unless --purge).
    Down {
        #[command(flatten)]
        dir: DirArg,
        /// Also delete the folder and all data.
        #[arg(long)]
        purge: bool,
    },
    /// Shows the local cluster's processes and their view of each other.
    Status {
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Args, Clone)]
struct DirArg {
    /// Folder of the local cluster.
    #[arg(long, default_value = ".kv-local")]
    dir: PathBuf,
}

#[derive(Args)]
struct ServerArgs {
    /// This node's name (must appear in --peers).
    #[arg(long)]
    name: String,
    /// Address to listen on (defaults to this node's address in --peers).
    #[arg(long)]
    listen: Option<String>,
    /// All nodes of the cluster: name=host:port,... (identical on every node).
    #[arg(long)]
    peers: String,
    /// Cluster name; nodes with another name are refused.
    #[arg(long, default_value = "kv")]
    cluster_name: String,
    /// Data directory (sled). Without it data lives in memory and is lost on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of partitions Q (a power of two).
    #[arg(long, default_value_t = kv_server::types::DEFAULT_PARTITIONS)]
    partitions: u32,
    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = kv_server::types::DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Accept fault-injection requests (drop/delay traffic, skew the clock).
    #[arg(long)]
    chaos: bool,
    /// AP anti-entropy period (Merkle tree exchange between replicas), in milliseconds.
    #[arg(long, default_value_t = kv_server::ap::engine::DEFAULT_ANTI_ENTROPY_INTERVAL_MS)]
    anti_entropy_interval_ms: u64,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Nodes to talk to (host:port,...). Default: $KV_ENDPOINTS, else the local cluster.
    #[arg(long, env = "KV_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Keyspace.
    #[arg(long, short = 'k', default_value = "cp")]
    keyspace: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Request deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// AP: replicas to wait for.
    #[arg(long, value_enum)]
    consistency: Option<ConsistencyArg>,
    /// CP: allow a possibly stale read from any replica.
    #[arg(long)]
    stale: bool,
    /// How requests pick a node.
    #[arg(long, value_enum, default_value_t = RoutingArg::TokenAware)]
    routing: RoutingArg,
    /// Folder of the local cluster (used when no endpoints are given).
    #[arg(long = "dir", default_value = ".kv-local")]
    local_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    One,
    Quorum,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoutingArg {
    TokenAware,
    RoundRobin,
    LeastOutstanding,
}

impl ClientArgs {
    async fn connect(&self) -> Result<Client> {
        let (seeds, seeds_only) = if !self.endpoints.is_empty() {
            (self.endpoints.clone(), true)
        } else {
            match LocalCluster::load(&self.local_dir)? {
                Some(c) => (c.endpoints(), false),
                None => bail!(
                    "no cluster to talk to: pass --endpoints host:port, set KV_ENDPOINTS, or start one with `kv local up` (looked for {})",
                    self.local_dir.join(local::CLUSTER_FILE).display()
                ),
            }
        };
        let mut cfg = ClientConfig::new(seeds);
        cfg.seeds_only = seeds_only;
        cfg.timeout = Duration::from_millis(self.timeout_ms);
        cfg.routing = match self.routing {
            RoutingArg::TokenAware => Routing::TokenAware,
            RoutingArg::RoundRobin => Routing::RoundRobin,
            RoutingArg::LeastOutstanding => Routing::LeastOutstanding,
        };
        Ok(Client::connect(cfg).await?)
    }

    fn options(&self) -> Options {
        Options {
            consistency: match self.consistency {
                None => Consistency::Default,
                Some(ConsistencyArg::One) => Consistency::One,
                Some(ConsistencyArg::Quorum) => Consistency::Quorum,
                Some(ConsistencyArg::All) => Consistency::All,
            },
            stale: self.stale,
            ..Options::default()
        }
    }
}

fn version_json(v: &Option<kv_proto::v1::Version>) -> serde_json::Value {
    match v {
        None => serde_json::Value::Null,
        Some(v) => match &v.hlc {
            Some(h) => {
                json!({"hlc": {"physical_ms": h.physical_ms, "logical": h.logical, "node_id": h.node_id}})
            }
            None => json!({"revision": v.revision}),
        },
    }
}

fn version_text(v: &Option<kv_proto::v1::Version>) -> String {
    match v {
        None => "-".into(),
        Some(v) => match &v.hlc {
            Some(h) => format!("hlc {}.{}@{}", h.physical_ms, h.logical, h.node_id),
            None => format!("revision {}", v.revision),
        },
    }
}

/// Prints the result of a put or delete.
fn print_write(key: &str, r: &kv_client::WriteResult, output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            json!({"key": key, "version": version_json(&r.version), "served_by": r.served_by})
        );
    } else {
        println!("OK ({}, via {})", version_text(&r.version), r.served_by);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn run_server(args: ServerArgs) -> Result<()> {
    init_tracing();
    let peers = config::parse_peers(&args.peers)?;
    let mut cfg = config::NodeConfig::new(&args.name, &args.cluster_name, peers);
    cfg.data_dir = args.data_dir;
    cfg.partitions = args.partitions;
    cfg.max_value_bytes = args.max_value_bytes;
    cfg.chaos = args.chaos;
    cfg.anti_entropy_interval_ms = args.anti_entropy_interval_ms;
    let me = cfg.validate()?;
    let listen = args.listen.unwrap_or(me.addr.clone());
    kv_client::net::validate_addr(&listen).map_err(anyhow::Error::msg)?;
    let engine = node::open_engine(&cfg)?;
    let clock = Arc::new(kv_server::clock::SystemClock::default());
    let node = node::Node::new(cfg, engine, Arc::new(kv_client::net::TcpDialer), clock)?;
    let cp_config = kv_server::cp::CpConfig {
        cluster_name: node.config.cluster_name.clone(),
        ..Default::default()
    };
    node.start_cp(cp_config).await?;
    let _background = node.start_background();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen} (is another process using the port?)"))?;
    tracing::info!(node = %me.name, %listen, "serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    let heartbeats = tokio::spawn(server::heartbeat_loop(node.clone()));
    let engine = node.engine.clone();
    tokio::select! {
        r = server::serve(node, incoming, shutdown) => r?,
        r = heartbeats => {
            if let Ok(Err(msg)) = r {
                bail!("{msg}");
            }
        }
    }
    engine.flush()?;
    Ok(())
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Server(args) => run_server(args).await?,
        Cmd::Local { command } => match command {
            LocalCmd::Up {
                dir,
                nodes,
                base_port,
                foreground,
                chaos,
            } => {
                let opts = UpOptions {
                    dir: dir.dir.clone(),
                    nodes,
                    base_port,
                    server_args: if chaos {
                        vec!["--chaos".into()]
                    } else {
                        vec![]
                    },
                };
                let cluster = local::up(&opts).await?;
                println!("local cluster ready in {}", dir.dir.display());
                for n in &cluster.nodes {
                    println!("  {}  {}", n.name, n.addr);
                }
                println!("endpoints: {}", cluster.endpoints().join(","));
                if foreground {
                    println!("press Ctrl-C to stop");
                    tokio::signal::ctrl_c().await?;
                    let stopped = local::down(&dir.dir, false)?;
                    println!("stopped {stopped} node(s)");
                }
            }
            LocalCmd::Down { dir, purge } => {
                let stopped = local::down(&dir.dir, purge)?;
                println!(
                    "stopped {stopped} node(s){}",
                    if purge { ", data removed" } else { "" }
                );
            }
            LocalCmd::Status { dir } => {
                let Some(cluster) = LocalCluster::load(&dir.dir)? else {
                    bail!(
                        "no local cluster in {}; start one with `kv local up`",
                        dir.dir.display()
                    );
                };
                println!("{:<6} {:<22} {:<8} PROCESS", "NODE", "ADDRESS", "PID");
                for n in &cluster.nodes {
                    let alive = n.pid.is_some_and(local::pid_alive);
                    println!(
                        "{:<6} {:<22} {:<8} {}",
                        n.name,
                        n.addr,
                        n.pid.map(|p| p.to_string()).unwrap_or("-".into()),
                        if alive { "running" } else { "stopped" }
                    );
                }
            }
        },
        Cmd::Put { key, value, client } => {
            let c = client.connect().await?;
            let r = c
                .put(
                    &client.keyspace,
                    key.as_bytes(),
                    value.as_bytes(),
                    client.options(),
                )
                .await?;
            print_write(&key, &r, client.output);
        }
        Cmd::Get { key, client } => {
            let c = client.connect().await?;
            let r = c
                .get(&client.keyspace, key.as_bytes(), client.options())
                .await?;
            let value = r
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if client.output == Output::Json {
                println!(
                    "{}",
                    json!({"key": key, "found": value.is_some(), "value": value, "version": version_json(&r.version), "served_by": r.served_by, "maybe_stale": r.maybe_stale})
                );
            } else {
                match value {
                    Some(v) => println!("{v}"),
                    None => {
                        eprintln!("key {key:?} not found in keyspace {}", client.keyspace);
                        std::process::exit(1);
                    }
                }
            }
        }
        Cmd::Delete { key, client } => {
            let c = client.connect().await?;
            let r = c
                .delete(&client.keyspace, key.as_bytes(), client.options())
                .await?;
            print_write(&key, &r, client.output);
        }
        Cmd::Cas {
            key,
            new_value,
            expect_version,
            expect_value,
            expect_absent,
            client,
        } => {
            let expected = match (expect_version, expect_value, expect_absent) {
                (Some(v), _, _) => Expected::Version(v),
                (_, Some(v), _) => Expected::Value(v.into_bytes()),
                (_, _, true) => Expected::Absent,
                _ => bail!("cas needs one of --expect-version, --expect-value, --expect-absent"),
            };
            let c = client.connect().await?;
            let r = c
                .cas(
                    &client.keyspace,
                    key.as_bytes(),
                    expected,
                    new_value.as_bytes(),
                    client.options(),
                )
                .await?;
            let current = r
                .current_value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if client.output == Output::Json {
                println!(
                    "{}",
                    json!({"key": key, "succeeded": r.succeeded, "version": version_json(&r.version), "current_value": current, "served_by": r.served_by})
                );
            } else if r.succeeded {
                println!("OK ({}, via {})", version_text(&r.version), r.served_by);
            } else {
                println!(
                    "MISMATCH: current value {} ({})",
                    current
                        .as_deref()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or("absent".into()),
                    version_text(&r.version)
                );
                std::process::exit(2);
            }
        }
        Cmd::Ring { client } => {
            let c = client.connect().await?;
            let ring = c.refresh_ring().await?;
            print_ring(&ring, client.output == Output::Json);
        }
        Cmd::Status { client } => {
            let c = client.connect().await?;
            let ring = c.refresh_ring().await?;
            let mut views = Vec::new();
            for m in &ring.members {
                views.push((m.name.clone(), c.status(Some(&m.address)).await));
            }
            print_status(&views, client.output == Output::Json);
        }
        Cmd::Keyspace { command } => match command {
            KeyspaceCmd::List { client } => {
                let c = client.connect().await?;
                for k in c.list_keyspaces().await? {
                    let mode = if k.mode == kv_proto::v1::Mode::Cp as i32 {
                        "cp"
                    } else {
                        "ap"
                    };
                    println!("{:<16} {:<3} replicas={}", k.name, mode, k.replicas);
                }
            }
            KeyspaceCmd::Create {
                name,
                mode,
                replicas,
                client,
            } => {
                let c = client.connect().await?;
                let k = c
                    .create_keyspace(kv_proto::v1::Keyspace {
                        name,
                        mode: match mode {
                            ModeArg::Cp => kv_proto::v1::Mode::Cp as i32,
                            ModeArg::Ap => kv_proto::v1::Mode::Ap as i32,
                        },
                        replicas,
                        read_replicas: 0,
                        write_replicas: 0,
                    })
                    .await?;
                println!("created keyspace {}", k.name);
            }
        },
    }
    Ok(())
}

fn print_ring(ring: &kv_proto::v1::RingResponse, as_json: bool) {
    let n = 3.min(ring.members.len());
    let mut owned = std::collections::BTreeMap::new();
    let mut replicas = std::collections::BTreeMap::new();
    for p in &ring.partitions {
        if let Some(first) = p.preference.first() {
            *owned.entry(*first).or_insert(0usize) += 1;
        }
        for id in p.preference.iter().take(n) {
            *replicas.entry(*id).or_insert(0usize) += 1;
        }
    }
    let mean = (ring.partitions.len() * n) as f64 / ring.members.len().max(1) as f64;
    let max = replicas.values().copied().max().unwrap_or(0) as f64;
    if as_json {
        let members: Vec<_> = ring
            .members
            .iter()
            .map(|m| json!({"id": m.id, "name": m.name, "address": m.address, "owned": owned.get(&m.id).copied().unwrap_or(0), "replicas": replicas.get(&m.id).copied().unwrap_or(0)}))
            .collect();
        let partitions: Vec<_> = ring
            .partitions
            .iter()
            .map(|p| json!({"id": p.id, "preference": p.preference}))
            .collect();
        println!(
            "{}",
            json!({"partition_count": ring.partition_count, "tokens_per_node": ring.tokens_per_node, "members": members, "partitions": partitions, "imbalance": max / mean})
        );
        return;
    }
    println!(
        "{} partitions, {} tokens per node, replication {n}",
        ring.partition_count, ring.tokens_per_node
    );
    println!(
        "{:<6} {:<22} {:>6} {:>9}",
        "NODE", "ADDRESS", "OWNED", "REPLICAS"
    );
    for m in &ring.members {
        println!(
            "{:<6} {:<22} {:>6} {:>9}",
            m.name,
            m.address,
            owned.get(&m.id).copied().unwrap_or(0),
            replicas.get(&m.id).copied().unwrap_or(0)
        );
    }
    println!("imbalance (busiest / mean replicas): {:.2}", max / mean);
    let name = |id: &u64| {
        ring.members
            .iter()
            .find(|m| m.id == *id)
            .map(|m| m.name.clone())
            .unwrap_or(id.to_string())
    };
    println!("\n{:<10} PREFERENCE LIST (replicas first)", "PARTITION");
    for p in &ring.partitions {
        let list: Vec<String> = p.preference.iter().map(name).collect();
        println!("{:<10} {}", p.id, list.join(" "));
    }
}

type View = (
    String,
    Result<kv_proto::v1::ClusterStatusResponse, kv_client::Error>,
);

fn print_status(views: &[View], as_json: bool) {
    let state = |s: i32| match kv_proto::v1::NodeState::try_from(s).unwrap_or_default() {
        kv_proto::v1::NodeState::Alive => "alive",
        kv_proto::v1::NodeState::Suspect => "suspect",
        kv_proto::v1::NodeState::Down => "down",
        kv_proto::v1::NodeState::Unknown => "unknown",
    };
    if as_json {
        let out: Vec<_> = views
            .iter()
            .map(|(name, v)| match v {
                Ok(s) => json!({"node": name, "reachable": true, "leader_of": s.leader_of, "clock_skew_events": s.clock_skew_events, "read_repairs": s.read_repairs, "view": s.nodes.iter().map(|n| json!({"name": n.name, "address": n.address, "state": state(n.state), "hints_pending": n.hints_pending})).collect::<Vec<_>>()}),
                Err(e) => json!({"node": name, "reachable": false, "error": e.to_string()}),
            })
            .collect();
        println!("{}", json!(out));
        return;
    }
    for (name, v) in views {
        match v {
            Ok(s) => {
                println!(
                    "view of {name} (cluster {}; leads {} CP partitions; {} read repairs; {} clock-skew events):",
                    s.cluster_name,
                    s.leader_of.len(),
                    s.read_repairs,
                    s.clock_skew_events
                );
                for n in &s.nodes {
                    println!(
                        "  {:<6} {:<22} {:<8} hints pending {}",
                        n.name,
                        n.address,
                        state(n.state),
                        n.hints_pending
                    );
                }
            }
            Err(e) => println!("view of {name}: unreachable ({e})"),
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
