//! The command line: every command, flag and help text of `kv` (clap definitions only; the
//! commands themselves live in `cmd/`). Flags marked global are accepted before or after the
//! subcommand.

pub use crate::arg_enums::{ConsistencyArg, RoutingArg};
use crate::output::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

mod chaos;
mod server;
#[cfg(test)]
mod tests;

pub use chaos::ChaosCmd;
pub use server::ServerArgs;

const ABOUT: &str = "kv: a distributed key-value store whose keyspaces choose their side of CAP \
(cp: Raft, linearizable; ap: Dynamo-style, always writable). This one binary runs a node \
(`kv server`), starts a cluster of real processes on this machine (`kv local`), reads and writes \
keys, and shows the ring and each node's view of the cluster.";

const EXAMPLES: &str = "\
Examples:
  kv local up                          # three nodes on 127.0.0.1:7001-7003
  kv put greeting hello                # keyspace cp by default
  kv get greeting -o json              # value, version, serving node
  kv -k ap put cart:42 '3 items'       # global flags go before or after the command
  kv put photo - < photo.jpg           # any bytes, from stdin
  kv get photo --raw > copy.jpg        # the bytes exactly
  kv status                            # exit 5 while a node is down
  kv local kill n3 && kv local start n3

Exit codes (the same with -o json): 0 ok, 1 error, 2 bad input or usage, 3 key not found,
4 compare-and-swap mismatch, 5 unavailable (nothing applied), 6 outcome unknown (deadline
passed, or a write may have been applied). See docs/cli.md.";

/// The whole command line.
#[derive(Parser, Debug)]
#[command(name = "kv", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Flags every command accepts, before or after the subcommand.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Flags accepted anywhere on the command line.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Nodes to talk to (host:port,...); only these are used. Default: $KV_ENDPOINTS, else
    /// the local cluster.
    #[arg(long, global = true, env = "KV_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Keyspace.
    #[arg(long, short = 'k', global = true, default_value = "cp")]
    pub keyspace: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Request deadline in milliseconds, retries included.
    #[arg(long, global = true, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Folder of the local cluster. Default: $KV_DIR, else ./.kv-local if it exists, else
    /// $XDG_DATA_HOME/kv/local (~/.local/share/kv/local).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// How requests pick a node.
    #[arg(long, global = true, value_enum, default_value_t = RoutingArg::TokenAware)]
    pub routing: RoutingArg,
    /// Bearer token sent with every request. Default: $KV_TOKEN, else the local cluster's
    /// admin token when it runs with --secure.
    #[arg(long, global = true, env = "KV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify nodes with: TLS to the client port. Default: $KV_CA_CERT,
    /// else the local cluster's CA when it runs with --secure.
    #[arg(long, global = true, env = "KV_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// Every command.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Runs one node.
    #[command(after_help = "Example:\n  \
        kv server --name n1 --peers n1=10.0.0.1:7001,n2=10.0.0.2:7001,n3=10.0.0.3:7001 --data-dir /var/lib/kv")]
    Server(ServerArgs),
    /// Manages a local cluster of real `kv server` processes on loopback.
    #[command(after_help = "Examples:\n  \
        kv local up && kv local status\n  \
        kv local kill n3 && kv local start n3\n  \
        export KV_ENDPOINTS=$(kv local endpoints)\n  \
        kv local down --purge\n\n\
        The cluster's folder: --dir, else $KV_DIR, else ./.kv-local if it exists, else\n\
        $XDG_DATA_HOME/kv/local (~/.local/share/kv/local).")]
    Local {
        /// The local-cluster command.
        #[command(subcommand)]
        command: LocalCmd,
    },
    /// Shows CP and AP side by side: a 3-node cluster, a partition, a heal, and a table.
    #[command(after_help = "Examples:\n  \
        kv demo                      # about 20 s; the cluster and its folder are removed after\n  \
        kv demo -o json              # only the comparison table, as JSON\n  \
        kv demo --skew-ms -3000      # n3's clock 3 s behind: last-write-wins loses newer writes\n\n\
        See docs/cli.md (kv demo) and docs/cap-modes.md.")]
    Demo(DemoArgs),
    /// Runs one workload against the cp and ap keyspaces at once under the same fault (a node
    /// cut off, then healed), checks both histories and prints one table.
    #[command(after_help = "Examples:\n  \
        kv compare                                # a 3-node cluster in a temporary folder, 20 s\n  \
        kv compare --duration 60s --clients 8 --seed 7\n  \
        kv compare --report out/                  # out/index.html, out/cp.jsonl, out/ap.jsonl\n  \
        kv --dir .kv-local compare                # the running local cluster (kv local up --chaos)\n  \
        kv compare --sim --seed 7                 # in the turmoil simulation: same seed, same histories\n\n\
        See docs/compare.md.")]
    Compare(CompareArgs),
    /// Injects faults into a running cluster: kill, pause, partition, slow links, clock skew.
    #[command(after_help = "Examples:\n  \
        kv local up --chaos                      # network faults need nodes run with --chaos\n  \
        kv chaos partition n3                    # n3 cut off from every other node, both ways\n  \
        kv chaos partition n1 --from n2,n3 --one-way   # only n1's messages to n2, n3 are dropped\n  \
        kv chaos slow n1 n2 --delay-ms 200       # n1's messages to n2 arrive 200 ms late\n  \
        kv chaos skew n2 --ms -1500              # n2's clock 1.5 s behind\n  \
        kv chaos pause n2 && kv chaos resume n2  # SIGSTOP / SIGCONT\n  \
        kv chaos kill n3 && kv chaos restart n3  # SIGKILL, then start again with its data\n  \
        kv chaos status                          # the faults in place\n  \
        kv chaos heal                            # undo every network fault, resume paused nodes\n\n\
        The cluster: the local one (--dir, $KV_DIR, ./.kv-local, per-user default), or\n\
        --endpoints for network faults (kill, restart, pause, resume need a local cluster).")]
    Chaos {
        /// The fault.
        #[command(subcommand)]
        command: ChaosCmd,
    },
    /// Writes a key.
    #[command(after_help = "Examples:\n  \
        kv put greeting hello\n  \
        kv -k ap put cart:42 '3 items' --consistency all\n  \
        kv put photo - < photo.jpg\n  \
        kv put photo --value-file photo.jpg")]
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(required_unless_present = "value_file")]
        value: Option<OsString>,
        /// Reads the value from this file.
        #[arg(long, conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// Request options.
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Reads a key (exit 3 when it does not exist).
    #[command(after_help = "Examples:\n  \
        kv get greeting\n  \
        kv get greeting -o json                 # value, value_base64, version, served_by\n  \
        kv get photo --raw > photo.jpg          # the bytes exactly, no newline\n  \
        kv get greeting --stale                 # CP: any replica, maybe stale")]
    Get {
        /// The key.
        key: String,
        /// Prints the value's bytes exactly as stored, with no newline.
        #[arg(long)]
        raw: bool,
        /// Request options.
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Deletes a key.
    #[command(after_help = "Example:\n  kv delete greeting")]
    Delete {
        /// The key.
        key: String,
        /// Request options.
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Replaces a key's value if it holds what is expected (CP keyspaces; exit 4 on mismatch).
    #[command(after_help = "Examples:\n  \
        kv cas greeting hi --expect-value hello\n  \
        kv cas counter 8 --expect-version 41\n  \
        kv cas lock me --expect-absent\n  \
        kv cas photo - --expect-version 7 < new.jpg")]
    Cas {
        /// The key.
        key: String,
        /// The new value; `-` reads it from stdin.
        #[arg(required_unless_present = "value_file")]
        new_value: Option<OsString>,
        /// Reads the new value from this file.
        #[arg(long, conflicts_with = "new_value")]
        value_file: Option<PathBuf>,
        /// Swap only if the key's revision is this.
        #[arg(long, group = "expect")]
        expect_version: Option<u64>,
        /// Swap only if the key's value is this.
        #[arg(long, group = "expect")]
        expect_value: Option<OsString>,
        /// Swap only if the key does not exist.
        #[arg(long, group = "expect")]
        expect_absent: bool,
        /// Request options.
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Shows the ring: partitions per node, preference lists, imbalance.
    #[command(after_help = "Examples:\n  kv ring\n  kv ring -o json")]
    Ring,
    /// Asks every node (in parallel) for its view; exit 5 when a node is down or a CP
    /// partition has no leader.
    #[command(after_help = "Examples:\n  \
        kv status\n  \
        kv status --wait-ms 30000   # until every node answers and every partition has a leader")]
    Status {
        /// Asks again until the cluster is healthy or this many milliseconds have passed.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Lists or creates keyspaces.
    #[command(after_help = "Examples:\n  \
        kv keyspace list\n  \
        kv keyspace create orders --mode ap --replicas 3")]
    Keyspace {
        /// The keyspace command.
        #[command(subcommand)]
        command: KeyspaceCmd,
    },
    /// Backs up one keyspace to a file, or restores one from it.
    #[command(after_help = "Examples:\n  \
        kv snapshot save cp.backup                 # keyspace cp: each partition cut at one Raft revision\n  \
        kv -k ap snapshot save ap.backup           # AP: JSON lines with timestamps and tombstones\n  \
        kv snapshot restore cp.backup --endpoints 10.0.1.1:7001   # into a fresh cluster\n  \
        kv snapshot restore cp.backup --into cp_copy\n\n\
        A file is restored only when it is complete and its checksum matches; a truncated or\n\
        corrupted file is refused before anything is written. See docs/operations.md (Backups).")]
    Snapshot {
        /// The snapshot command.
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Loads the cluster and measures throughput and latency (closed or open loop).
    #[command(after_help = "Examples:\n  \
        kv bench --mix put=100 -c 64 --duration 10s             # CP puts, 64 in flight\n  \
        kv bench --mix get=100 -c 64 --preload --stale           # CP stale reads\n  \
        kv -k ap bench --mix get=80,put=20 --consistency one --distribution zipfian\n  \
        kv bench --rate 2000 -c 256 --count 50000 --warmup 2s -o json\n  \
        kv bench --target etcd --endpoints 127.0.0.1:2379 --mix put=100   # needs --features etcd\n\n\
        See docs/performance.md.")]
    Bench(crate::bench::args::BenchArgs),
    /// Checks a history file for linearizability (cp) or AP convergence (ap); exit 1 on a
    /// violation or when undecided, 2 on bad input.
    #[command(after_help = "Examples:\n  \
        kv check target/partition-matrix/cp_bridge-seed1.jsonl\n  \
        kv check history.edn --input edn            # a Jepsen register history\n  \
        kv check run.jsonl --model ap -o json       # needs the file's final replica reads\n\n\
        The JSON-lines format is in docs/partition-suite.md. On a violation it prints the\n\
        smallest window of operations found that cannot be linearized, and the write each\n\
        stuck operation expected.")]
    Check(CheckArgs),
    /// Prints a shell completion script.
    #[command(after_help = "Examples:\n  \
        kv completion bash > ~/.local/share/bash-completion/completions/kv\n  \
        kv completion zsh > \"${fpath[1]}/_kv\"\n  \
        kv completion fish > ~/.config/fish/completions/kv.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `kv check` flags.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The history: JSON lines or Jepsen EDN; `-` reads stdin.
    pub history: PathBuf,
    /// What to check. Default: ap when the file has final replica reads, else cp.
    #[arg(long, value_enum)]
    pub model: Option<CheckModel>,
    /// The file's format. Default: guessed from its first characters.
    #[arg(long, value_enum)]
    pub input: Option<InputFormat>,
    /// CP: search states per key before the key is undecided (histories whose writes carry
    /// revisions need about one per operation).
    #[arg(long, default_value_t = jepsen::linearizability::MAX_SEARCH_STATES)]
    pub max_states: u64,
}

/// What `kv check` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckModel {
    /// Linearizability of every key (CP keyspaces).
    Cp,
    /// No acknowledged write lost, replicas converged, no delete undone (AP keyspaces).
    Ap,
}

/// Format of a history file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// The project's JSON lines.
    Jsonl,
    /// Jepsen's EDN.
    Edn,
}

/// Per-request options of the data commands.
#[derive(Args, Debug, Clone)]
pub struct RequestArgs {
    /// AP: replicas to wait for.
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// CP: allow a possibly stale read from any replica.
    #[arg(long)]
    pub stale: bool,
}

/// `kv snapshot ...`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Saves the keyspace (-k, default cp) to FILE (written to FILE.partial, renamed when complete).
    Save {
        /// The backup file.
        file: PathBuf,
        /// The cluster's value limit (its nodes' --max-value-bytes), so the largest records fit.
        #[arg(long, default_value_t = kv_core::limits::DEFAULT_MAX_VALUE_BYTES)]
        max_value_bytes: usize,
    },
    /// Restores FILE into the keyspace it was saved from (or --into), creating it if needed.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Restore into this keyspace instead of the one named in the file.
        #[arg(long)]
        into: Option<String>,
        /// The cluster's value limit (its nodes' --max-value-bytes), so the largest records fit.
        #[arg(long, default_value_t = kv_core::limits::DEFAULT_MAX_VALUE_BYTES)]
        max_value_bytes: usize,
    },
}

/// `kv keyspace ...`.
#[derive(Subcommand, Debug)]
pub enum KeyspaceCmd {
    /// Lists keyspaces.
    #[command(after_help = "Example:\n  kv keyspace list -o json")]
    List,
    /// Creates a keyspace.
    #[command(after_help = "Example:\n  kv keyspace create orders --mode ap --replicas 3")]
    Create {
        /// Name.
        name: String,
        /// cp or ap.
        #[arg(long)]
        mode: ModeArg,
        /// Replication factor N.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
}

/// Replication mode of a new keyspace.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// Raft per partition: linearizable, unavailable without a majority.
    Cp,
    /// Dynamo-style: available on every side of a partition, last write wins.
    Ap,
}

/// `kv local ...`.
#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// Starts a local cluster (3 nodes on loopback) and returns once it is ready.
    #[command(after_help = "Examples:\n  \
        kv local up\n  \
        kv local up --base-port 0          # free ports chosen now\n  \
        kv local up --dir /tmp/c1 --nodes 5 --chaos\n  \
        kv local up --foreground           # Ctrl-C stops it")]
    Up {
        /// Number of nodes of a new cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// First port of a new cluster: client ports are consecutive from it, peer ports follow
        /// them; 0 picks free ports.
        #[arg(long, env = "KV_BASE_PORT", default_value_t = 7001)]
        base_port: u16,
        /// Stay attached; stop the cluster on Ctrl-C.
        #[arg(long)]
        foreground: bool,
        /// Start nodes with fault injection allowed (--chaos); remembered for restarts.
        #[arg(long)]
        chaos: bool,
        /// A new cluster with TLS on both ports and tokens: makes a throwaway CA, node and
        /// client certificates and an admin token in the folder's secure/; every kv command
        /// uses them.
        #[arg(long)]
        secure: bool,
    },
    /// Stops the local cluster (data is kept unless --purge).
    #[command(after_help = "Examples:\n  kv local down\n  kv local down --purge")]
    Down {
        /// Also delete the folder and all data.
        #[arg(long)]
        purge: bool,
    },
    /// Shows the local cluster's processes.
    #[command(after_help = "Example:\n  kv local status -o json")]
    Status,
    /// Prints nodes' addresses, comma separated (all nodes, or those named).
    #[command(after_help = "Examples:\n  \
        export KV_ENDPOINTS=$(kv local endpoints)\n  \
        kv get greeting --endpoints \"$(kv local endpoints n2)\"")]
    Endpoints {
        /// Node names (default: every node).
        nodes: Vec<String>,
    },
    /// Kills a node with SIGKILL (a crash: no flush, no goodbye).
    #[command(after_help = "Example:\n  kv local kill n3")]
    Kill {
        /// Node name (n1, n2, ...).
        node: String,
    },
    /// Stops a node with SIGTERM (SIGKILL if it has not exited after 10 s).
    #[command(after_help = "Example:\n  kv local stop n3")]
    Stop {
        /// Node name.
        node: String,
    },
    /// Starts a stopped or killed node again with its data, and waits until it is ready.
    #[command(after_help = "Example:\n  kv local start n3")]
    Start {
        /// Node name.
        node: String,
    },
    /// Stops a node (SIGTERM) and starts it again with its data.
    #[command(after_help = "Example:\n  kv local restart n3")]
    Restart {
        /// Node name.
        node: String,
    },
}

/// `kv demo` flags.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Write-and-read rounds of each client while the partition lasts.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Skews the minority node's clock by this many milliseconds during the partition (a
    /// negative skew makes last-write-wins discard its newer writes).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub skew_ms: i64,
}

/// `kv compare` flags.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// How long the workload runs: `20s`, `1500ms` or seconds (`20`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Register-workload clients per keyspace, spread over the nodes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// Seeds the workload's choices (and, with --sim, the whole simulation).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hot keys of the register workload.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub keys: u32,
    /// Operations per second of each register client.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// When the last node is cut off, from the start. Default: a quarter of --duration.
    #[arg(long, value_parser = parse_duration)]
    pub partition_at: Option<std::time::Duration>,
    /// How long it stays cut off. Default: half of --duration.
    #[arg(long, value_parser = parse_duration)]
    pub partition_for: Option<std::time::Duration>,
    /// Writes DIR/index.html (self-contained) and the histories beside it.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Where the histories go without --report. Default: a new folder under the system's
    /// temporary directory.
    #[arg(long, value_name = "DIR", conflicts_with = "report")]
    pub histories: Option<PathBuf>,
    /// Runs inside the turmoil simulation instead of on real processes: deterministic, the
    /// same seed gives byte-identical histories.
    #[arg(long)]
    pub sim: bool,
}

/// A duration: `20s`, `1500ms`, `2m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 20s, 1500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 24.0 * 3600.0) {
        return Err(format!("{s:?}: must be more than 0 and at most 24 h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}
