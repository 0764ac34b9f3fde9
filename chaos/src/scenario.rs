//! One case of the partition matrix: a 3-node simulated cluster, client processes pinned to
//! each node (so clients sit on both sides of every partition), a `jepsen` nemesis schedule
//! interpreted at its simulated times, a heal, and the final reads — then the checkers.
//!
//! Timeline of a case (simulated time):
//! 1. warm-up: every node answers a linearizable read of every hot key and sees its peers alive
//!    (bounded by [`WARMUP_MAX`]);
//! 2. the workload: `jepsen::workload::run_register` on a few hot keys plus
//!    `run_append_set` (every element its own key, written once), for the schedule's heal time
//!    plus [`Settings::tail_ms`]; the outer step loop applies the schedule's faults at
//!    `workload start + at_ms`;
//! 3. CP: final linearizable reads of every key through every node, recorded in the history so
//!    the linearizability checker judges them too. AP: per-replica reads (`ApRead`) of every key
//!    on every node, polled until all replicas agree or [`Settings::convergence_bound`] passes,
//!    then one final read of every replica.
//!
//! What a case checks ([`Outcome::failures`]):
//! - CP: the history is linearizable (an `Unknown` verdict is a failure to investigate); no
//!   acknowledged element of the append set is missing from the final reads; every request a
//!   client of a minority-side node invoked after `partition start + grace` and completed
//!   before the heal was refused, and at least one such request exists.
//! - AP: no acknowledged write lost (other than to a higher timestamp), no divergence at the
//!   final reads, no resurrected delete, convergence within the bound, and availability of at
//!   least [`AP_MIN_AVAILABILITY_PCT`] on both sides of a partition (crashed nodes excluded).
//!   Writes lost to last-write-wins are counted ([`Outcome::lost_to_lww`]), not failed.
//!
//! Every check holds for any interleaving: windows come from the times the harness actually
//! applied each fault, never from the schedule alone.

use futures::StreamExt;
use jepsen::ap::{ApInput, ApReport, ConvergenceSample, Record, ReplicaRead};
use jepsen::history::{History, Op, Outcome as OpOutcome, Recorder};
use jepsen::linearizability::{LinReport, Verdict};
use jepsen::nemesis::{Fault, Schedule};
use jepsen::report::SummaryRow;
use jepsen::workload::{self, CasResult, ClientError, KvClient, ReadResult, Stop, WorkloadConfig};
use kv_core::net::Dialer;
use kv_proto::internal::internal_client::InternalClient;
use kv_testkit::sim::{client, TurmoilDialer, SIM_PORT};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nodes in every case.
pub const NODES: usize = 3;
/// Longest warm-up before the workload starts.
pub const WARMUP_MAX: Duration = Duration::from_secs(60);
/// Id of the `ap` keyspace (created second, after `cp`), as `ApRead` wants it.
pub const AP_KEYSPACE_ID: &str = "2";
/// Least availability (% served) an AP case must show on each side of a partition.
pub const AP_MIN_AVAILABILITY_PCT: f64 = 90.0;
/// Attempts at each final CP read before it counts as never served.
pub const MAX_FINAL_READ_ATTEMPTS: usize = 20;
/// Concurrent requests of the final-read and convergence phases.
pub const FINAL_READ_CONCURRENCY: usize = 16;
/// Process ids of final CP reads start here (above any workload process id).
pub const FINAL_READ_PROCESS_BASE: u64 = 1 << 40;
/// Offset added to append-set event and process ids when merged into one history.
const SET_ID_OFFSET: u64 = 1 << 32;
/// Latency bounds turmoil uses by default; a healed slow link goes back to them.
const DEFAULT_LINK_LATENCY_MAX: Duration = Duration::from_millis(100);

/// Which side of CAP the case exercises (the keyspace of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Raft per partition: linearizable, unavailable on a minority.
    Cp,
    /// Dynamo-style, last-write-wins: available everywhere, converges after heal.
    Ap,
}

impl Mode {
    /// The keyspace name, also used in case names.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cp => "cp",
            Mode::Ap => "ap",
        }
    }
}

/// Where a node stood at some moment, as seen from the clients pinned to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// No fault active anywhere.
    Whole,
    /// A fault is active and this node reaches a majority of the nodes (itself included).
    Majority,
    /// A fault is active and this node reaches only a minority.
    Minority,
    /// The node is crashed.
    Down,
}

impl Side {
    /// Label used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Side::Whole => "whole",
            Side::Majority => "majority",
            Side::Minority => "minority",
            Side::Down => "down",
        }
    }
}

/// One case: a schedule, a mode, a seed.
#[derive(Clone, Debug)]
pub struct Case {
    /// CP or AP.
    pub mode: Mode,
    /// The faults, over node indices `0..NODES`.
    pub schedule: Schedule,
    /// Seeds the simulation (network, scheduler) and the workload.
    pub seed: u64,
    /// Map schedule node 0 to the node leading the first hot key's CP partition when the
    /// workload starts (so "isolate node 0" isolates that leader); the others keep their order.
    pub target_leader: bool,
    /// Turn on the deliberate test-only bug `unsafe_skip_read_index` on every node.
    pub skip_read_index: bool,
}

impl Case {
    /// `mode/schedule[+skip-read-index]`: what `KV_CASE` names.
    pub fn name(&self) -> String {
        let mut name = format!("{}/{}", self.mode.name(), self.schedule.name);
        if self.skip_read_index {
            name.push_str("+skip-read-index");
        }
        name
    }

    /// The command that reruns exactly this case.
    pub fn rerun_command(&self) -> String {
        format!(
            "KV_CASE={} KV_SEED={} cargo test -p tests --test partition_matrix -- --exact rerun --nocapture",
            self.name(),
            self.seed
        )
    }
}

/// The schedules of the matrix (workload-relative times, 3 nodes). Node 0 is the first hot
/// key's CP leader in cases built by [`catalogue`].
pub fn schedules() -> Vec<Schedule> {
    let mut isolate_leader = Schedule::isolate_one(NODES, 0, 2_000, 5_000);
    isolate_leader.name = "isolate-leader".into();
    let mut crash_leader = Schedule::crash_restart(NODES, 0, 2_000, 4_000);
    crash_leader.name = "crash-restart-leader".into();
    vec![
        Schedule::none(NODES),
        isolate_leader,
        Schedule::majority_minority(NODES, 2_000, 5_000),
        Schedule::bridge(NODES, 2_000, 5_000),
        Schedule::flapping(NODES, 1_000, 3_000, 3),
        crash_leader,
        Schedule::slow_link(NODES, (0, 1), 300, 2_000, 4_000),
    ]
}

/// Every case of the matrix for `seed`: each schedule in both modes, plus the deliberate-bug
/// case (CP, leader isolated, read index skipped).
pub fn catalogue(seed: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for mode in [Mode::Cp, Mode::Ap] {
        for schedule in schedules() {
            cases.push(Case {
                mode,
                schedule,
                seed,
                target_leader: true,
                skip_read_index: false,
            });
        }
    }
    cases.push(bug_case(seed));
    cases
}

/// The deliberate-bug case: the first hot key's leader is isolated while every node skips the
/// read index, so the old leader keeps serving stale reads.
pub fn bug_case(seed: u64) -> Case {
    let schedule = schedules()
        .into_iter()
        .find(|s| s.name == "isolate-leader")
        .expect("isolate-leader is in the catalogue");
    Case {
        mode: Mode::Cp,
        schedule,
        seed,
        target_leader: true,
        skip_read_index: true,
    }
}

/// The catalogue case named `name` (see [`Case::name`]) with `seed`.
pub fn find_case(name: &str, seed: u64) -> Option<Case> {
    catalogue(seed).into_iter().find(|c| c.name() == name)
}

/// Knobs of a case run; the defaults are what the matrix uses.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Register-workload processes per node.
    pub clients_per_node: usize,
    /// Operations per second per register process.
    pub register_rate: f64,
    /// Hot keys of the register workload.
    pub keys: usize,
    /// Elements per second per append-set process (one process per node).
    pub set_rate: f64,
    /// Client deadline of one request, retries included.
    pub request_timeout: Duration,
    /// Workload time after the schedule's last step.
    pub tail_ms: u64,
    /// CP minority check: requests invoked earlier than this after a partition starts are
    /// not judged (in-flight requests, leader step-down).
    pub grace_ms: u64,
    /// AP: how long after the heal (and the last write) replicas may disagree: the stated bound (ARCHITECTURE.md, AP promise 2) for the anti-entropy period the
    /// simulated nodes run ([`AP_ANTI_ENTROPY_INTERVAL`]): two rounds + down detection + hint
    /// replay + a Merkle call timeout + slack. Hints (the coordinator keeps them when no
    /// fallback exists) usually converge replicas within seconds.
    pub convergence_bound: Duration,
    /// AP: time between convergence polls.
    pub poll_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            clients_per_node: 2,
            register_rate: 10.0,
            keys: 3,
            set_rate: 4.0,
            request_timeout: Duration::from_secs(1),
            tail_ms: 1_000,
            grace_ms: 1_000,
            convergence_bound: AP_ANTI_ENTROPY_INTERVAL * 2 + Duration::from_millis(14_450),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Anti-entropy period of the simulated nodes (shorter than the 60 s default, so a quick
/// matrix can wait out the convergence bound).
pub const AP_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(10);

/// One request as the harness saw it (for availability and the minority check).
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// Host index (0 = n1) the client is pinned to.
    pub node: usize,
    /// Sent, ns of simulated time.
    pub start_ns: u64,
    /// Answered (or gave up), ns of simulated time.
    pub end_ns: u64,
    /// The node answered the request (a cas mismatch is served; an error is not).
    pub served: bool,
}

/// The network state from one applied step on: each host's side.
#[derive(Clone, Debug)]
pub struct Window {
    /// When the step was applied, ns of simulated time.
    pub from_ns: u64,
    /// What was applied (None = the start of the run).
    pub fault: Option<Fault>,
    /// Side of each host (index 0 = n1).
    pub sides: Vec<Side>,
}

/// Result of the CP minority-side check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinorityCheck {
    /// Requests judged: invoked after partition start + grace, completed before it ended.
    pub judged: usize,
    /// Of those, refused (error or unknown outcome).
    pub refused: usize,
    /// Of those, served: each one breaks CP guarantee 3.
    pub served: usize,
}

/// Everything one case produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The case run.
    pub case: Case,
    /// Register and append-set operations, final CP reads included, in one history.
    pub history: History,
    /// CP: the linearizability checker's report.
    pub lin: Option<LinReport>,
    /// AP: the AP checker's report.
    pub ap: Option<ApReport>,
    /// Requests per side: (issued, served).
    pub availability: BTreeMap<Side, (usize, usize)>,
    /// CP minority-side check (None when no minority side existed).
    pub minority: Option<MinorityCheck>,
    /// Acknowledged writes lost (CP: set elements missing; AP: not explained by LWW).
    pub lost_writes: usize,
    /// AP: acknowledged register writes discarded by a higher-timestamped write that did not
    /// follow them in real time (concurrent, or earlier). Reported, not a failure.
    pub lost_to_lww: usize,
    /// AP: from the last write (after the heal) to convergence.
    pub converge_ms: Option<u64>,
    /// Consistency anomalies found by the checkers.
    pub anomalies: usize,
    /// CP: ms from the first fault to the completion of the first operation the
    /// linearizability checker could not place (how fast a violation showed).
    pub violation_after_ms: Option<u64>,
    /// Fault windows as applied.
    pub windows: Vec<Window>,
    /// Why the case failed; empty = passed.
    pub failures: Vec<String>,
    /// Simulated time the case took.
    pub sim_ms: u64,
    /// Wall time the case took.
    pub wall: Duration,
}

impl Outcome {
    /// True when every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Saves the history as JSON lines under `dir`; returns the file's path.
    pub fn save_history(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let file = format!(
            "{}-seed{}.jsonl",
            self.case.name().replace(['/', '+'], "_"),
            self.case.seed
        );
        let path = dir.join(file);
        self.history
            .save(&path)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(path)
    }

    /// Requests issued and served on all sides together.
    pub fn totals(&self) -> (usize, usize) {
        self.availability
            .values()
            .fold((0, 0), |(r, s), &(r2, s2)| (r + r2, s + s2))
    }

    /// A multi-line description of the failure: case, seed, rerun command, reasons.
    pub fn describe_failure(&self, history_path: Option<&Path>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "case {} seed {} FAILED ({} ms simulated)",
            self.case.name(),
            self.case.seed,
            self.sim_ms
        );
        let _ = writeln!(out, "  rerun: {}", self.case.rerun_command());
        if let Some(p) = history_path {
            let _ = writeln!(out, "  history: {}", p.display());
        }
        for f in &self.failures {
            for (i, line) in f.lines().enumerate() {
                let _ = writeln!(out, "{}{line}", if i == 0 { "  - " } else { "    " });
            }
        }
        out
    }
}

/// The summary rows (one per mode and schedule, seeds summed; converge = the slowest).
pub fn summarize(outcomes: &[Outcome]) -> Vec<SummaryRow> {
    let mut rows: BTreeMap<(Mode, String), SummaryRow> = BTreeMap::new();
    let mut order = Vec::new();
    for o in outcomes {
        let schedule = match o.case.name().split_once('/') {
            Some((_, s)) => s.to_string(),
            None => o.case.name(),
        };
        let key = (o.case.mode, schedule.clone());
        if !rows.contains_key(&key) {
            order.push(key.clone());
        }
        let row = rows.entry(key).or_insert_with(|| SummaryRow {
            mode: o.case.mode.name().into(),
            schedule,
            ..SummaryRow::default()
        });
        let (requests, served) = o.totals();
        row.requests += requests;
        row.served += served;
        row.anomalies += o.anomalies;
        row.lost_writes += match o.case.mode {
            Mode::Cp => o.lost_writes,
            Mode::Ap => o.lost_writes + o.lost_to_lww,
        };
        row.converge_ms = match (row.converge_ms, o.converge_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    order.into_iter().filter_map(|k| rows.remove(&k)).collect()
}

/// Availability per side, one line per mode and schedule (seeds summed).
pub fn render_sides(outcomes: &[Outcome]) -> String {
    let mut rows: BTreeMap<String, BTreeMap<Side, (usize, usize)>> = BTreeMap::new();
    let mut order = Vec::new();
    for o in outcomes {
        let name = o.case.name();
        if !rows.contains_key(&name) {
            order.push(name.clone());
        }
        let row = rows.entry(name).or_default();
        for (side, (r, s)) in &o.availability {
            let e = row.entry(*side).or_default();
            e.0 += r;
            e.1 += s;
        }
    }
    let width = order.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:>16}  {:>16}  {:>16}  {:>16}\n",
        "case", "whole", "majority", "minority", "down"
    );
    for name in order {
        let row = &rows[&name];
        let _ = write!(out, "{name:<width$}");
        for side in [Side::Whole, Side::Majority, Side::Minority, Side::Down] {
            let cell = match row.get(&side) {
                Some(&(r, s)) if r > 0 => {
                    format!("{:.1}% ({s}/{r})", 100.0 * s as f64 / r as f64)
                }
                _ => "-".into(),
            };
            let _ = write!(out, "  {cell:>16}");
        }
        out.push('\n');
    }
    out
}

/// Where failing cases write their histories: `$CARGO_TARGET_DIR/partition-matrix`, or the
/// workspace's `target/partition-matrix`.
pub fn history_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("partition-matrix")
}

fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn host_name(index: usize) -> String {
    format!("n{}", index + 1)
}

fn host_addr(index: usize) -> String {
    format!("n{}:{SIM_PORT}", index + 1)
}

/// A `jepsen` client over `kv_client::Client`, pinned to one node.
#[derive(Clone)]
pub struct SimKv {
    client: kv_client::Client,
    mode: Mode,
    node: usize,
    options: kv_client::Options,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl SimKv {
    /// A client of `mode`'s keyspace talking only to host `node` (AP requests at consistency
    /// one, so a lone node can serve them).
    pub async fn connect(
        mode: Mode,
        node: usize,
        timeout: Duration,
        calls: Arc<Mutex<Vec<Call>>>,
    ) -> Result<SimKv, kv_client::Error> {
        let client = client(&[host_addr(node).as_str()], timeout).await?;
        let options = match mode {
            Mode::Cp => kv_client::Options::default(),
            Mode::Ap => kv_client::Options {
                consistency: kv_client::Consistency::One,
                ..Default::default()
            },
        };
        Ok(SimKv {
            client,
            mode,
            node,
            options,
            calls,
        })
    }

    fn log(&self, start_ns: u64, served: bool) {
        let call = Call {
            node: self.node,
            start_ns,
            end_ns: now_ns(),
            served,
        };
        self.calls.lock().expect("calls lock").push(call);
    }
}

fn versions(v: Option<&kv_proto::v1::Version>) -> (Option<u64>, Option<jepsen::Hlc>) {
    match v {
        None => (None, None),
        Some(v) => (
            (v.revision > 0).then_some(v.revision),
            v.hlc
                .as_ref()
                .map(|h| (h.physical_ms, h.logical, h.node_id)),
        ),
    }
}

/// A write's error: definite failure only when the request certainly had no effect.
fn write_error(e: kv_client::Error) -> ClientError {
    use kv_client::Error as E;
    match e {
        E::InvalidArgument(_)
        | E::KeyspaceNotFound(_)
        | E::FailedPrecondition(_)
        | E::Connect { .. }
        | E::NotLeader { .. }
        | E::Config(_) => ClientError::Fail(e.to_string()),
        _ => ClientError::Info(e.to_string()),
    }
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl KvClient for SimKv {
    async fn get(&self, key: &str) -> Result<ReadResult, ClientError> {
        let start = now_ns();
        let r = self
            .client
            .get(self.mode.name(), key.as_bytes(), self.options.clone())
            .await;
        self.log(start, r.is_ok());
        // A failed read has no effect: always a definite failure.
        let r = r.map_err(|e| ClientError::Fail(e.to_string()))?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(ReadResult {
            value: text(r.value),
            version,
            timestamp,
        })
    }

    async fn put(&self, key: &str, value: &str) -> Result<workload::WriteResult, ClientError> {
        let start = now_ns();
        let r = self
            .client
            .put(
                self.mode.name(),
                key.as_bytes(),
                value.as_bytes(),
                self.options.clone(),
            )
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(workload::WriteResult { version, timestamp })
    }

    async fn delete(&self, key: &str) -> Result<workload::WriteResult, ClientError> {
        let start = now_ns();
        let r = self
            .client
            .delete(self.mode.name(), key.as_bytes(), self.options.clone())
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(workload::WriteResult { version, timestamp })
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<CasResult, ClientError> {
        if self.mode == Mode::Ap {
            // AP keyspaces refuse cas by design; not sent, so not counted as a request.
            return Err(ClientError::Fail("cas is CP-only".into()));
        }
        let expected = match expected {
            None => kv_client::Expected::Absent,
            Some(v) => kv_client::Expected::Value(v.as_bytes().to_vec()),
        };
        let start = now_ns();
        let r = self
            .client
            .cas(
                self.mode.name(),
                key.as_bytes(),
                expected,
                new.as_bytes(),
                self.options.clone(),
            )
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        if !r.succeeded {
            return Ok(CasResult::Mismatch);
        }
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(CasResult::Applied(workload::WriteResult {
            version,
            timestamp,
        }))
    }
}

/// What the workload host hands back to the step loop.
#[derive(Default)]
struct Shared {
    /// Workload start, ns of simulated time; the step loop applies faults from then on.
    t0_ns: Option<u64>,
    /// Schedule node index -> host index.
    hosts: Vec<usize>,
    /// When writes stopped (after the heal).
    quiet_from_ns: u64,
    /// AP: convergence polls and final replica reads.
    samples: Vec<ConvergenceSample>,
    final_reads: Vec<ReplicaRead>,
    /// Problems the workload host found (warm-up, final reads never served).
    problems: Vec<String>,
    /// Keys written (register hot keys and set elements).
    keys: Vec<String>,
}

/// Network state the step loop keeps while applying faults.
struct Net {
    cut: BTreeSet<(usize, usize)>,
    down: BTreeSet<usize>,
    slow: BTreeSet<(usize, usize)>,
}

impl Net {
    fn sides(&self) -> Vec<Side> {
        let faulty = !self.cut.is_empty() || !self.down.is_empty() || !self.slow.is_empty();
        (0..NODES)
            .map(|n| {
                if self.down.contains(&n) {
                    Side::Down
                } else if !faulty {
                    Side::Whole
                } else {
                    let reach = (0..NODES)
                        .filter(|&m| {
                            m == n
                                || (!self.down.contains(&m)
                                    && !self.cut.contains(&(n.min(m), n.max(m))))
                        })
                        .count();
                    if reach > NODES / 2 {
                        Side::Majority
                    } else {
                        Side::Minority
                    }
                }
            })
            .collect()
    }
}

fn apply_fault(sim: &mut turmoil::Sim<'_>, fault: &Fault, hosts: &[usize], net: &mut Net) {
    let h = |i: usize| hosts.get(i).copied().unwrap_or(i);
    let mut cut = |sim: &mut turmoil::Sim<'_>, a: usize, b: usize| {
        sim.partition(host_name(a), host_name(b));
        net.cut.insert((a.min(b), a.max(b)));
    };
    match fault {
        Fault::Partition(groups) => {
            for (i, g) in groups.iter().enumerate() {
                for other in &groups[i + 1..] {
                    for &a in g {
                        for &b in other {
                            cut(sim, h(a), h(b));
                        }
                    }
                }
            }
        }
        Fault::Bridge { left, right, .. } => {
            for &a in left {
                for &b in right {
                    cut(sim, h(a), h(b));
                }
            }
        }
        Fault::Heal => {
            for (a, b) in std::mem::take(&mut net.cut) {
                sim.repair(host_name(a), host_name(b));
            }
            for (a, b) in std::mem::take(&mut net.slow) {
                sim.set_link_latency(host_name(a), host_name(b), Duration::ZERO);
                sim.set_link_max_message_latency(
                    host_name(a),
                    host_name(b),
                    DEFAULT_LINK_LATENCY_MAX,
                );
            }
        }
        Fault::Crash(n) => {
            sim.crash(host_name(h(*n)));
            net.down.insert(h(*n));
        }
        Fault::Restart(n) => {
            sim.bounce(host_name(h(*n)));
            net.down.remove(&h(*n));
        }
        Fault::SlowLink(a, b, delay_ms) => {
            let (a, b) = (h(*a), h(*b));
            sim.set_link_latency(host_name(a), host_name(b), Duration::from_millis(*delay_ms));
            net.slow.insert((a.min(b), a.max(b)));
        }
    }
}

/// Runs one case with the default [`Settings`].
pub fn run(case: &Case) -> Outcome {
    run_with(case, &Settings::default())
}

/// Runs one case.
pub fn run_with(case: &Case, settings: &Settings) -> Outcome {
    let wall_start = Instant::now();
    let sim_limit = WARMUP_MAX
        + Duration::from_millis(case.schedule.heal_ms() + settings.tail_ms)
        + settings.convergence_bound
        + Duration::from_secs(120);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(sim_limit)
        .rng_seed(case.seed)
        .tcp_capacity(4096)
        .build();
    let skip = case.skip_read_index;
    let opts = kv_testkit::sim::SimOptions {
        tweak: Arc::new(move |cfg| {
            cfg.unsafe_skip_read_index = skip;
            cfg.anti_entropy_interval_ms = AP_ANTI_ENTROPY_INTERVAL.as_millis() as u64;
        }),
        ..kv_testkit::sim::SimOptions::default()
    };
    // Elections draw from the case's seed too, so a rerun repeats them.
    kv_testkit::sim::add_seeded_nodes(&mut sim, &opts, case.seed);

    let shared = Arc::new(Mutex::new(Shared::default()));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let clock: jepsen::history::Clock = Arc::new(now_ns);
    let register = Recorder::with_clock(clock.clone());
    let set = Recorder::with_clock(clock);
    sim.client(
        "workload",
        workload_host(
            case.clone(),
            settings.clone(),
            shared.clone(),
            calls.clone(),
            register.clone(),
            set.clone(),
        ),
    );

    // The step loop: applies the schedule's faults at workload start + at_ms. Bounded by the
    // simulation duration (turmoil fails the step past it).
    let mut net = Net {
        cut: BTreeSet::new(),
        down: BTreeSet::new(),
        slow: BTreeSet::new(),
    };
    let mut windows = vec![Window {
        from_ns: 0,
        fault: None,
        sides: vec![Side::Whole; NODES],
    }];
    let mut failures = Vec::new();
    let mut next_step = 0;
    loop {
        let (t0, hosts) = {
            let s = shared.lock().expect("shared lock");
            (s.t0_ns, s.hosts.clone())
        };
        if let Some(t0) = t0 {
            let now = u64::try_from(sim.elapsed().as_nanos()).unwrap_or(u64::MAX);
            while let Some(step) = case.schedule.steps.get(next_step) {
                if t0 + step.at_ms * 1_000_000 > now {
                    break;
                }
                apply_fault(&mut sim, &step.fault, &hosts, &mut net);
                windows.push(Window {
                    from_ns: now,
                    fault: Some(step.fault.clone()),
                    sides: net.sides(),
                });
                next_step += 1;
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                failures.push(format!("simulation error: {e}"));
                break;
            }
        }
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    if next_step < case.schedule.steps.len() {
        failures.push(format!(
            "only {next_step} of {} schedule steps were applied",
            case.schedule.steps.len()
        ));
    }

    let shared = std::mem::take(&mut *shared.lock().expect("shared lock"));
    let calls = std::mem::take(&mut *calls.lock().expect("calls lock"));
    failures.extend(shared.problems.iter().cloned());
    let history = merge(register.history(), set.history());
    let mut outcome = Outcome {
        case: case.clone(),
        history,
        lin: None,
        ap: None,
        availability: availability(&calls, &windows, shared.t0_ns.unwrap_or(0), &shared),
        minority: None,
        lost_writes: 0,
        lost_to_lww: 0,
        converge_ms: None,
        anomalies: 0,
        violation_after_ms: None,
        windows,
        failures,
        sim_ms,
        wall: Duration::ZERO,
    };
    match case.mode {
        Mode::Cp => check_cp(&mut outcome, &calls, settings),
        Mode::Ap => check_ap(&mut outcome, &shared, settings),
    }
    outcome.wall = wall_start.elapsed();
    outcome
}

/// Merges the register and append-set histories (set ids and processes offset), by time.
fn merge(register: History, set: History) -> History {
    let mut set = set;
    for e in &mut set.events {
        e.id += SET_ID_OFFSET;
        e.process += SET_ID_OFFSET;
    }
    let mut events = Vec::with_capacity(register.events.len() + set.events.len());
    let (mut a, mut b) = (
        register.events.into_iter().peekable(),
        set.events.into_iter().peekable(),
    );
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.time_ns <= y.time_ns,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        events.extend(if take_a { a.next() } else { b.next() });
    }
    History { events }
}

fn side_at(windows: &[Window], node: usize, t_ns: u64) -> Side {
    windows
        .iter()
        .rev()
        .find(|w| w.from_ns <= t_ns)
        .map_or(Side::Whole, |w| w.sides[node])
}

/// Workload requests (final reads excluded) per side at invoke time.
fn availability(
    calls: &[Call],
    windows: &[Window],
    t0_ns: u64,
    shared: &Shared,
) -> BTreeMap<Side, (usize, usize)> {
    let mut out: BTreeMap<Side, (usize, usize)> = BTreeMap::new();
    for c in calls
        .iter()
        .filter(|c| c.start_ns >= t0_ns && c.start_ns < shared.quiet_from_ns)
    {
        let e = out.entry(side_at(windows, c.node, c.start_ns)).or_default();
        e.0 += 1;
        e.1 += usize::from(c.served);
    }
    out
}

fn check_cp(outcome: &mut Outcome, calls: &[Call], settings: &Settings) {
    let lin = match jepsen::linearizability::check(&outcome.history) {
        Ok(r) => r,
        Err(e) => {
            outcome.failures.push(format!("malformed history: {e}"));
            return;
        }
    };
    let first_fault_ns = outcome.windows.get(1).map_or(0, |w| w.from_ns);
    match lin.verdict() {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable => {
            let mut text = format!(
                "not linearizable: {} of {} keys",
                lin.violations.len(),
                lin.keys
            );
            for v in lin.violations.iter().take(2) {
                let _ = write!(text, "\n{v}");
            }
            outcome.failures.push(text);
            outcome.violation_after_ms = lin
                .violations
                .iter()
                .flat_map(|v| v.stuck.iter())
                .filter_map(|op| op.complete_ns)
                .min()
                .map(|t| t.saturating_sub(first_fault_ns) / 1_000_000);
        }
        Verdict::Unknown => outcome.failures.push(format!(
            "linearizability UNKNOWN (search bound hit) on keys {:?}: investigate — treat as a possible violation",
            lin.unknown
        )),
    }
    outcome.anomalies = lin.violations.len() + lin.unknown.len();
    outcome.lin = Some(lin);

    // No acknowledged write lost: every acknowledged set element is read back by a final read.
    if let Ok(ops) = outcome.history.operations() {
        let mut acked: BTreeMap<&str, &str> = BTreeMap::new();
        let mut found: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
        for op in &ops {
            match &op.op {
                Op::Write(v) if op.outcome == OpOutcome::Ok && op.key.contains("/set/") => {
                    acked.insert(op.key.as_str(), v.as_str());
                }
                Op::Read
                    if op.outcome == OpOutcome::Ok && op.process >= FINAL_READ_PROCESS_BASE =>
                {
                    found
                        .entry(op.key.as_str())
                        .or_default()
                        .insert(op.read.as_deref());
                }
                _ => {}
            }
        }
        let lost: Vec<&str> = acked
            .iter()
            .filter(|(k, v)| found.get(*k).is_some_and(|f| !f.contains(&Some(**v))))
            .map(|(k, _)| *k)
            .collect();
        outcome.lost_writes = lost.len();
        if !lost.is_empty() {
            outcome.failures.push(format!(
                "{} acknowledged writes lost, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
    }

    // The minority side refuses: judge requests invoked after a minority window's start plus
    // the grace and completed before the window ended.
    let grace_ns = settings.grace_ms * 1_000_000;
    let mut check = MinorityCheck::default();
    let mut any_minority = false;
    for (i, w) in outcome.windows.iter().enumerate() {
        let end_ns = outcome.windows.get(i + 1).map_or(u64::MAX, |n| n.from_ns);
        for node in 0..NODES {
            if w.sides[node] != Side::Minority {
                continue;
            }
            any_minority = true;
            for c in calls.iter().filter(|c| {
                c.node == node && c.start_ns >= w.from_ns + grace_ns && c.end_ns < end_ns
            }) {
                check.judged += 1;
                if c.served {
                    check.served += 1;
                } else {
                    check.refused += 1;
                }
            }
        }
    }
    if any_minority {
        if check.served > 0 {
            outcome.failures.push(format!(
                "the minority side served {} of {} requests judged while the partition held",
                check.served, check.judged
            ));
        }
        if check.refused == 0 {
            outcome.failures.push(
                "no minority-side request completed inside a partition window: the refusal check saw nothing"
                    .into(),
            );
        }
        outcome.minority = Some(check);
    }
}

fn check_ap(outcome: &mut Outcome, shared: &Shared, settings: &Settings) {
    let bound_ns = u64::try_from(settings.convergence_bound.as_nanos()).unwrap_or(u64::MAX);
    let final_ns = shared
        .final_reads
        .iter()
        .map(|r| r.time_ns)
        .min()
        .unwrap_or(shared.quiet_from_ns);
    let input = ApInput {
        final_reads: shared.final_reads.clone(),
        samples: shared.samples.clone(),
        heal_ns: shared.quiet_from_ns,
        // Divergence is judged on the final reads, taken once replicas agreed or the bound passed.
        convergence_deadline_ns: final_ns.saturating_sub(shared.quiet_from_ns),
    };
    let report = match jepsen::ap::check(&outcome.history, &input) {
        Ok(r) => r,
        Err(e) => {
            outcome.failures.push(format!("malformed history: {e}"));
            return;
        }
    };
    outcome.converge_ms = report.converge_ns.map(|ns| ns / 1_000_000);
    if report.lost_writes > 0 {
        outcome.failures.push(format!(
            "{} acknowledged writes lost (not overwritten by a higher timestamp), e.g. {:?}",
            report.lost_writes, report.lost_examples
        ));
    }
    if report.divergent_keys > 0 {
        outcome.failures.push(format!(
            "{} keys still diverge at the final reads, e.g. {:?}",
            report.divergent_keys, report.divergent_examples
        ));
    }
    if report.resurrected_keys > 0 {
        outcome.failures.push(format!(
            "{} deleted keys came back, e.g. {:?}",
            report.resurrected_keys, report.resurrected_examples
        ));
    }
    if report.converged_late(bound_ns) {
        outcome.failures.push(format!(
            "replicas did not converge within {:?} of the heal (converged after {:?} ms)",
            settings.convergence_bound, outcome.converge_ms
        ));
    }
    for side in [Side::Majority, Side::Minority] {
        if let Some(&(requests, served)) = outcome.availability.get(&side) {
            let pct = 100.0 * served as f64 / requests.max(1) as f64;
            if requests > 0 && pct < AP_MIN_AVAILABILITY_PCT {
                outcome.failures.push(format!(
                    "AP availability on the {} side {pct:.1}% ({served}/{requests}) is under {AP_MIN_AVAILABILITY_PCT}%",
                    side.name()
                ));
            }
        }
    }
    outcome.lost_writes = report.lost_writes;
    outcome.anomalies = report.anomalies();
    if let Ok(ops) = outcome.history.operations() {
        outcome.lost_to_lww = lost_to_lww(&ops);
    }
    outcome.ap = Some(report);
}

/// Acknowledged register writes (puts and deletes) discarded by an acknowledged write with a
/// higher timestamp that was invoked before they completed (so did not follow them).
pub fn lost_to_lww(ops: &[jepsen::Operation]) -> usize {
    let mut by_key: BTreeMap<&str, Vec<&jepsen::Operation>> = BTreeMap::new();
    for op in ops {
        let write = matches!(op.op, Op::Write(_) | Op::Delete);
        if write && op.outcome == OpOutcome::Ok && op.timestamp.is_some() {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut lost = 0;
    for writes in by_key.values() {
        for w in writes {
            let done = w.complete_ns.unwrap_or(u64::MAX);
            if writes
                .iter()
                .any(|o| o.timestamp > w.timestamp && o.invoke_ns < done)
            {
                lost += 1;
            }
        }
    }
    lost
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

async fn workload_host(
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
