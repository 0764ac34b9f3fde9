//! What a case produced and how it is judged: the request log and fault windows, the CP checks
//! (linearizability, no lost set element, the minority side refuses), the AP checks (lost
//! writes, divergence, resurrection, convergence, availability), and the summary tables.

use super::workload_host::Shared;
use super::{Case, Mode, Settings, Side, AP_MIN_AVAILABILITY_PCT, FINAL_READ_PROCESS_BASE, NODES};
use jepsen::ap::{ApInput, ApReport};
use jepsen::history::{History, Op, Outcome as OpOutcome};
use jepsen::linearizability::{LinReport, Verdict};
use jepsen::nemesis::Fault;
use jepsen::report::SummaryRow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// AP: what the AP checker was given besides the history (final replica reads,
    /// convergence polls), to save with it.
    pub ap_input: Option<ApInput>,
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
    /// Every workload request as the harness saw it (final reads excluded), in send order.
    pub calls: Vec<Call>,
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

/// The side `node` stood on at `t_ns`, from the windows applied.
pub fn side_at(windows: &[Window], node: usize, t_ns: u64) -> Side {
    windows
        .iter()
        .rev()
        .find(|w| w.from_ns <= t_ns)
        .map_or(Side::Whole, |w| w.sides[node])
}

/// Workload requests (final reads excluded) per side at invoke time.
pub(super) fn availability(
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

pub(super) fn check_cp(outcome: &mut Outcome, calls: &[Call], settings: &Settings) {
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
    let lost = lost_set_elements(&outcome.history);
    outcome.lost_writes = lost.len();
    if !lost.is_empty() {
        outcome.failures.push(format!(
            "{} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
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

pub(super) fn check_ap(outcome: &mut Outcome, shared: &Shared, settings: &Settings) {
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
    outcome.ap_input = Some(input);
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

/// CP: acknowledged append-set elements (keys containing `/set/`) that a final read (process
/// at or above [`FINAL_READ_PROCESS_BASE`]) found without their value. Keys no final read
/// reached are not judged.
pub fn lost_set_elements(history: &History) -> Vec<String> {
    let Ok(ops) = history.operations() else {
        return Vec::new();
    };
    let mut acked: BTreeMap<&str, &str> = BTreeMap::new();
    let mut found: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for op in &ops {
        match &op.op {
            Op::Write(v) if op.outcome == OpOutcome::Ok && op.key.contains("/set/") => {
                acked.insert(op.key.as_str(), v.as_str());
            }
            Op::Read if op.outcome == OpOutcome::Ok && op.process >= FINAL_READ_PROCESS_BASE => {
                found
                    .entry(op.key.as_str())
                    .or_default()
                    .insert(op.read.as_deref());
            }
            _ => {}
        }
    }
    acked
        .iter()
        .filter(|(k, v)| found.get(*k).is_some_and(|f| !f.contains(&Some(**v))))
        .map(|(k, _)| k.to_string())
        .collect()
}
