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
//!
//! The runner is split by phase: `runner` builds the simulation and applies the schedule,
//! `workload_host` runs inside it (warm-up, workload, final reads), `sim_kv` adapts the kv
//! client to `jepsen`, and `checks` judges what came back. Faults here are turmoil's own
//! (partition, crash, link latency): the simulation's network, not the nodes' `Chaos` call.

mod checks;
mod runner;
mod sim_kv;
mod workload_host;

pub use checks::{
    history_dir, lost_set_elements, lost_to_lww, render_sides, side_at, summarize, Call,
    MinorityCheck, Outcome, Window,
};
pub use runner::{merge, run, run_with, SET_ID_OFFSET};
pub use sim_kv::{text, versions, write_error, SimKv};

use jepsen::nemesis::Schedule;
use kv_testkit::sim::SIM_PORT;
use std::time::Duration;

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

/// True for the process of a final read in a merged history: the final CP reads, and the
/// append-set workload's read-back of its elements (its reader process, offset as merged).
pub fn is_final_read(process: u64) -> bool {
    process >= FINAL_READ_PROCESS_BASE
        || process == SET_ID_OFFSET + jepsen::workload::MAX_PROCESSES as u64 * 1_000_000
}

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

/// Simulated time since the simulation started, in ns (0 outside one).
fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Host name of node index `index` (0 = n1).
fn host_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// Client address of node index `index`.
fn host_addr(index: usize) -> String {
    format!("n{}:{SIM_PORT}", index + 1)
}
