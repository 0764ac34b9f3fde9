//! What `kv compare` measured, judged without I/O: per mode, the workload's operations from
//! the history (final reads and AP compare-and-swaps, which are never sent, left out), the
//! requests per side of the partition, latency percentiles, and the checkers' findings
//! (`jepsen`'s linearizability checker for CP, its AP checker for AP, through the same
//! functions the partition suite uses); then the table, as text and as JSON.

use chaos::scenario::{is_final_read, lost_set_elements, lost_to_lww, Mode, Side};
use jepsen::ap::{ApInput, ApReport};
use jepsen::history::{History, Op, Operation, Outcome};
use jepsen::linearizability::{self, Verdict};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Examples of anomalies kept per mode.
const MAX_EXAMPLES: usize = 3;

/// What the checkers found in one mode's history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checked {
    /// The checker's verdict, in words ("linearizable", "converged", ...).
    pub verdict: String,
    /// Consistency anomalies: CP keys not linearizable (or undecided); AP lost writes,
    /// divergent keys, resurrected deletes and stale reads.
    pub anomalies: usize,
    /// A few of them, described.
    pub examples: Vec<String>,
    /// Acknowledged writes lost (AP: not explained by a write with a higher timestamp).
    pub lost_writes: usize,
    /// AP: acknowledged writes discarded by last-write-wins; `None` for CP.
    pub lww_overwritten: Option<usize>,
    /// CP: from the heal until the cut-off node served again; AP: from the last write
    /// (after the heal) until every replica agreed on every key. `None`: not observed.
    pub converge_ms: Option<u64>,
}

/// One mode's run: its history and the requests it sent per side.
#[derive(Clone, Debug)]
pub struct ModeRun {
    /// CP or AP.
    pub mode: Mode,
    /// Register and append-set operations, final CP reads included.
    pub history: History,
    /// Workload requests per side at send time: (sent, served).
    pub sides: BTreeMap<Side, (usize, usize)>,
    /// AP: the final replica reads and convergence polls the AP checker judged.
    pub ap_input: Option<ApInput>,
    /// The checkers' findings.
    pub checked: Checked,
}

/// The figures of one mode, as the table shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeReport {
    /// CP or AP.
    pub mode: Mode,
    /// Requests sent by the workload, all sides.
    pub requests: usize,
    /// Of those, served.
    pub served: usize,
    /// Per side: (sent, served).
    pub sides: BTreeMap<Side, (usize, usize)>,
    /// Operations that succeeded, failed for sure, or ended with an unknown outcome.
    pub ok: usize,
    /// See `ok`.
    pub failed: usize,
    /// See `ok`.
    pub unknown: usize,
    /// Latency of successful operations, ms: p50 and p99.
    pub latency_ms: Option<(f64, f64)>,
    /// The checkers' findings.
    pub checked: Checked,
}

/// The workload's operations of `mode`: final reads (CP and append-set read-backs) and AP
/// compare-and-swaps (refused by design before sending) left out.
pub fn workload_ops(history: &History, mode: Mode) -> Vec<Operation> {
    history
        .operations()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| !is_final_read(o.process))
        .filter(|o| !(mode == Mode::Ap && matches!(o.op, Op::Cas { .. })))
        .collect()
}

/// How an operation counts in the tables and timelines: a compare-and-swap that found another
/// value was served (it is an answer), so it counts as ok.
pub fn served_as(op: &Operation) -> Outcome {
    if op.mismatch {
        Outcome::Ok
    } else {
        op.outcome
    }
}

/// The `p`th percentile (nearest rank) of `values`.
pub fn percentile(values: &[u64], p: usize) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 100_000.0).round() / 10.0
}

/// The figures of one mode's run.
pub fn report(run: &ModeRun) -> ModeReport {
    let ops = workload_ops(&run.history, run.mode);
    let count = |o: Outcome| ops.iter().filter(|op| served_as(op) == o).count();
    let latencies: Vec<u64> = ops
        .iter()
        .filter(|o| served_as(o) == Outcome::Ok)
        .filter_map(|o| Some(o.complete_ns?.saturating_sub(o.invoke_ns)))
        .collect();
    let (requests, served) = run
        .sides
        .values()
        .fold((0, 0), |(r, s), &(r2, s2)| (r + r2, s + s2));
    ModeReport {
        mode: run.mode,
        requests,
        served,
        sides: run.sides.clone(),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Fail),
        unknown: count(Outcome::Info),
        latency_ms: percentile(&latencies, 50)
            .zip(percentile(&latencies, 99))
            .map(|(a, b)| (ms(a), ms(b))),
        checked: run.checked.clone(),
    }
}

/// CP: the linearizability checker over the whole history, and acknowledged append-set
/// elements missing from the final reads.
pub fn check_cp(history: &History, converge_ms: Option<u64>) -> Checked {
    let lost = lost_set_elements(history);
    let mut checked = Checked {
        lost_writes: lost.len(),
        converge_ms,
        ..Checked::default()
    };
    match linearizability::check(history) {
        Err(e) => {
            checked.verdict = format!("malformed history: {e}");
            checked.anomalies = 1;
        }
        Ok(lin) => {
            checked.verdict = match lin.verdict() {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable => "NOT linearizable",
                Verdict::Unknown => "undecided (search bound hit)",
            }
            .into();
            checked.anomalies = lin.violations.len() + lin.unknown.len();
            checked.examples = lin
                .violations
                .iter()
                .map(|v| v.to_string())
                .chain(lin.unknown.iter().map(|k| format!("{k}: undecided")))
                .take(MAX_EXAMPLES)
                .collect();
        }
    }
    for key in lost.iter().take(MAX_EXAMPLES) {
        checked
            .examples
            .push(format!("{key}: acknowledged, missing from the final reads"));
    }
    checked
}

/// AP: the AP checker (lost writes, divergence, resurrected deletes, stale reads, time to
/// converge) and the writes last-write-wins discarded.
pub fn check_ap(history: &History, input: &ApInput) -> Checked {
    let lww = history
        .operations()
        .map(|ops| lost_to_lww(&ops))
        .unwrap_or(0);
    match jepsen::ap::check(history, input) {
        Err(e) => Checked {
            verdict: format!("malformed history: {e}"),
            anomalies: 1,
            lww_overwritten: Some(lww),
            ..Checked::default()
        },
        Ok(r) => check_ap_report(&r, lww),
    }
}

/// AP findings from the AP checker's report and the count of writes LWW discarded.
pub fn check_ap_report(r: &ApReport, lww: usize) -> Checked {
    let mut examples: Vec<String> = Vec::new();
    examples.extend(
        r.lost_examples
            .iter()
            .map(|(k, v, ts)| format!("{k}: acknowledged {v} (timestamp {ts:?}) lost")),
    );
    examples.extend(
        r.divergent_examples
            .iter()
            .map(|(k, recs)| format!("{k}: replicas disagree: {recs:?}")),
    );
    examples.extend(
        r.resurrected_examples
            .iter()
            .map(|(k, v)| format!("{k}: deleted, yet {v} came back")),
    );
    examples.truncate(MAX_EXAMPLES);
    let verdict = if r.divergent_keys > 0 {
        "replicas diverge"
    } else if r.converge_ns.is_none() {
        "not seen converging"
    } else {
        "converged"
    };
    Checked {
        // Stale reads are allowed in AP (consistency one): counted, not anomalies.
        verdict: format!("{verdict}; {} of {} reads stale", r.stale_reads, r.reads),
        anomalies: r.anomalies(),
        examples,
        lost_writes: r.lost_writes,
        lww_overwritten: Some(lww),
        converge_ms: r.converge_ns.map(|ns| ns / 1_000_000),
    }
}

fn pct(sent: usize, served: usize) -> Value {
    if sent == 0 {
        Value::Null
    } else {
        json!((1000.0 * served as f64 / sent as f64).round() / 10.0)
    }
}

impl ModeReport {
    /// The report as JSON (availability in percent, `null` where nothing was sent).
    pub fn json(&self) -> Value {
        let sides: serde_json::Map<String, Value> = self
            .sides
            .iter()
            .map(|(side, &(sent, served))| {
                (
                    side.name().to_string(),
                    json!({"requests": sent, "served": served, "availability_pct": pct(sent, served)}),
                )
            })
            .collect();
        json!({
            "keyspace": self.mode.name(),
            "requests": self.requests,
            "served": self.served,
            "availability_pct": pct(self.requests, self.served),
            "sides": sides,
            "operations": {"ok": self.ok, "failed": self.failed, "unknown": self.unknown},
            "latency_ms": self.latency_ms.map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
            "checker": self.checked.verdict,
            "anomalies": self.checked.anomalies,
            "anomaly_examples": self.checked.examples,
            "lost_acknowledged_writes": self.checked.lost_writes,
            "lww_overwritten": self.checked.lww_overwritten,
            "converge_ms": self.checked.converge_ms,
        })
    }
}

/// One row of the table: a label and one cell per mode.
pub type Row = (String, Vec<String>);

fn cell_pct(sent: usize, served: usize) -> String {
    if sent == 0 {
        "-".into()
    } else {
        format!(
            "{:.1}% ({served}/{sent})",
            100.0 * served as f64 / sent as f64
        )
    }
}

/// The table's rows, shared by the text table and the HTML report.
pub fn rows(reports: &[ModeReport], minority: &str) -> Vec<Row> {
    let side = |r: &ModeReport, s: Side| r.sides.get(&s).copied().unwrap_or((0, 0));
    let mut rows: Vec<Row> = vec![
        (
            String::new(),
            reports
                .iter()
                .map(|r| match r.mode {
                    Mode::Cp => "cp (Raft)".to_string(),
                    Mode::Ap => "ap (Dynamo, consistency one)".to_string(),
                })
                .collect(),
        ),
        (
            "availability, overall".into(),
            reports
                .iter()
                .map(|r| cell_pct(r.requests, r.served))
                .collect(),
        ),
    ];
    for (s, label) in [
        (Side::Whole, "  no fault".to_string()),
        (Side::Majority, "  majority side".to_string()),
        (Side::Minority, format!("  minority side ({minority})")),
    ] {
        rows.push((
            label,
            reports
                .iter()
                .map(|r| {
                    let (sent, served) = side(r, s);
                    cell_pct(sent, served)
                })
                .collect(),
        ));
    }
    rows.extend([
        (
            "ok / failed / unknown outcome".into(),
            reports
                .iter()
                .map(|r| format!("{} / {} / {}", r.ok, r.failed, r.unknown))
                .collect(),
        ),
        (
            "latency p50 / p99 (ok)".into(),
            reports
                .iter()
                .map(|r| match r.latency_ms {
                    Some((a, b)) => format!("{a} ms / {b} ms"),
                    None => "-".into(),
                })
                .collect(),
        ),
        (
            "checker".into(),
            reports.iter().map(|r| r.checked.verdict.clone()).collect(),
        ),
        (
            "anomalies found".into(),
            reports
                .iter()
                .map(|r| r.checked.anomalies.to_string())
                .collect(),
        ),
        (
            "acknowledged writes lost".into(),
            reports
                .iter()
                .map(|r| r.checked.lost_writes.to_string())
                .collect(),
        ),
        (
            "writes overwritten by LWW".into(),
            reports
                .iter()
                .map(|r| {
                    r.checked
                        .lww_overwritten
                        .map_or("- (no LWW)".into(), |n| n.to_string())
                })
                .collect(),
        ),
        (
            "time to converge".into(),
            reports
                .iter()
                .map(|r| match (r.mode, r.checked.converge_ms) {
                    (_, None) => "not observed".into(),
                    (Mode::Cp, Some(ms)) => format!("{ms} ms (heal -> {minority} serves)"),
                    (Mode::Ap, Some(ms)) => format!("{ms} ms (last write -> replicas agree)"),
                })
                .collect(),
        ),
    ]);
    rows
}

/// The table for people: one column per mode.
pub fn table_text(rows: &[Row]) -> String {
    crate::output::columns(rows)
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
