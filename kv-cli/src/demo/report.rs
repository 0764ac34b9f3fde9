//! What `kv demo` measured, judged without I/O: the operations each client ran (with their
//! real-time intervals), and the per-mode figures computed from them — availability on each
//! side of the partition, latency percentiles, stale reads, acknowledged writes lost, writes
//! discarded by last-write-wins, and the time to converge — as a table for people and as JSON.
//!
//! The anomaly checks rely on every write of a key carrying a value no other write has, so a
//! value read names the write that produced it.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// A replication mode, and the keyspace of that mode every cluster starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Raft per partition.
    Cp,
    /// Dynamo-style.
    Ap,
}

impl Mode {
    /// The keyspace (and the mode's short name).
    pub fn keyspace(self) -> &'static str {
        match self {
            Mode::Cp => "cp",
            Mode::Ap => "ap",
        }
    }
}

/// The side of the partition a client is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The side holding a majority of the nodes.
    Majority,
    /// The node cut off alone.
    Minority,
}

impl Side {
    /// Its name, as in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Side::Majority => "majority",
            Side::Minority => "minority",
        }
    }
}

/// A put or a get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A put.
    Write,
    /// A get.
    Read,
}

/// One operation a demo client ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Keyspace mode.
    pub mode: Mode,
    /// The client's side.
    pub side: Side,
    /// Put or get.
    pub kind: Kind,
    /// Ran while the partition was in place.
    pub during_partition: bool,
    /// The key.
    pub key: String,
    /// A write's value; the value a successful read returned (`None`: not found).
    pub value: Option<String>,
    /// `None` when it succeeded; else the kind of error (`Unavailable`, `DeadlineExceeded`...).
    pub error: Option<String>,
    /// When it was sent, from the demo's start.
    pub start: Duration,
    /// When its answer (or error) arrived, from the demo's start.
    pub end: Duration,
}

impl Op {
    /// Acknowledged (a write) or answered (a read).
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// Served and total operations of one side during the partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Operations that succeeded.
    pub ok: usize,
    /// Operations run.
    pub total: usize,
}

/// The figures of one mode.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeReport {
    /// The mode.
    pub mode: Mode,
    /// The majority side's operations during the partition.
    pub majority: Served,
    /// The minority side's operations during the partition.
    pub minority: Served,
    /// Latency of the successful operations during the partition: p50 and p99.
    pub latency_ok: Option<(Duration, Duration)>,
    /// How long failed operations took to fail, p50.
    pub failed_after_p50: Option<Duration>,
    /// Failed operations by error kind.
    pub errors: BTreeMap<String, usize>,
    /// Successful reads that returned a value already replaced before they began.
    pub stale_reads: usize,
    /// Acknowledged writes missing from the final state with nothing newer to explain it.
    pub lost_writes: usize,
    /// Each side's last acknowledged write of a key during the partition, not kept.
    pub discarded_by_lww: usize,
    /// Failed writes whose value is in the final state: refused, yet applied.
    pub failed_writes_applied: usize,
    /// Time from the heal until every node answered every key with the same value.
    pub converged_after: Option<Duration>,
}

/// Judges one mode's operations. `finals` is each key's value once the nodes agree.
pub fn judge(
    mode: Mode,
    ops: &[Op],
    finals: &BTreeMap<String, Option<String>>,
    converged_after: Option<Duration>,
) -> ModeReport {
    let ops: Vec<&Op> = ops.iter().filter(|o| o.mode == mode).collect();
    let during: Vec<&Op> = ops.iter().copied().filter(|o| o.during_partition).collect();
    let served = |side: Side| {
        let of_side: Vec<&&Op> = during.iter().filter(|o| o.side == side).collect();
        Served {
            ok: of_side.iter().filter(|o| o.ok()).count(),
            total: of_side.len(),
        }
    };
    let ok_latency: Vec<Duration> = during
        .iter()
        .filter(|o| o.ok())
        .map(|o| o.latency())
        .collect();
    let failed_latency: Vec<Duration> = during
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.latency())
        .collect();
    let mut errors = BTreeMap::new();
    for e in during.iter().filter_map(|o| o.error.clone()) {
        *errors.entry(e).or_insert(0) += 1;
    }
    ModeReport {
        mode,
        majority: served(Side::Majority),
        minority: served(Side::Minority),
        latency_ok: percentile(&ok_latency, 50).zip(percentile(&ok_latency, 99)),
        failed_after_p50: percentile(&failed_latency, 50),
        errors,
        stale_reads: stale_reads(&ops).len(),
        lost_writes: lost_writes(&ops, finals).len(),
        discarded_by_lww: discarded_by_lww(&ops, finals).len(),
        failed_writes_applied: failed_writes_applied(&ops, finals).len(),
        converged_after,
    }
}

/// The `p`th percentile (nearest rank) of `values`; `None` when there are none.
pub fn percentile(values: &[Duration], p: usize) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The write that produced `value` for `key` (any outcome: a failed write may have applied).
/// `Some(None)` stands for "absent before anything was written".
fn source<'a>(ops: &[&'a Op], key: &str, value: &Option<String>) -> Option<Option<&'a Op>> {
    match value {
        None => Some(None),
        Some(v) => ops
            .iter()
            .find(|o| o.kind == Kind::Write && o.key == key && o.value.as_deref() == Some(v))
            .map(|o| Some(*o)),
    }
}

/// An acknowledged write of `key`, other than `value`'s, that began after `value`'s write
/// ended and ended before `before`: proof that `value` was replaced by then.
fn replaced_before<'a>(
    ops: &[&'a Op],
    key: &str,
    value: &Option<String>,
    src: Option<&Op>,
    before: Duration,
) -> Option<&'a Op> {
    ops.iter().copied().find(|w| {
        w.kind == Kind::Write
            && w.ok()
            && w.key == key
            && w.value != *value
            && src.is_none_or(|s| w.start > s.end)
            && w.end < before
    })
}

/// Successful reads that returned a value some acknowledged write had replaced before the read
/// began (or a value nobody wrote), with the write they missed.
pub fn stale_reads<'a>(ops: &[&'a Op]) -> Vec<(&'a Op, Option<&'a Op>)> {
    ops.iter()
        .copied()
        .filter(|r| r.kind == Kind::Read && r.ok())
        .filter_map(|r| match source(ops, &r.key, &r.value) {
            None => Some((r, None)),
            Some(src) => replaced_before(ops, &r.key, &r.value, src, r.start).map(|w| (r, Some(w))),
        })
        .collect()
}

/// Acknowledged writes whose key's final value is one written before they began (in real
/// time), or no known write's: an acknowledged write that vanished.
pub fn lost_writes<'a>(ops: &[&'a Op], finals: &BTreeMap<String, Option<String>>) -> Vec<&'a Op> {
    ops.iter()
        .copied()
        .filter(|w| w.kind == Kind::Write && w.ok())
        .filter(|w| {
            let Some(fin) = finals.get(&w.key) else {
                return false;
            };
            if *fin == w.value {
                return false;
            }
            match source(ops, &w.key, fin) {
                None => true,
                Some(None) => true,
                Some(Some(src)) => src.end < w.start,
            }
        })
        .collect()
}

/// For each key and side, the side's last acknowledged write during the partition when the
/// final value is another: the writes one side kept seeing that the merge threw away.
pub fn discarded_by_lww<'a>(
    ops: &[&'a Op],
    finals: &BTreeMap<String, Option<String>>,
) -> Vec<&'a Op> {
    let mut last: BTreeMap<(&str, Side), &Op> = BTreeMap::new();
    for w in ops
        .iter()
        .copied()
        .filter(|w| w.kind == Kind::Write && w.ok() && w.during_partition)
    {
        let slot = last.entry((w.key.as_str(), w.side)).or_insert(w);
        if w.end > slot.end {
            *slot = w;
        }
    }
    last.into_values()
        .filter(|w| finals.get(&w.key).is_some_and(|f| *f != w.value))
        .collect()
}

/// Writes that failed (refused, or of unknown outcome) whose value is a key's final value.
pub fn failed_writes_applied<'a>(
    ops: &[&'a Op],
    finals: &BTreeMap<String, Option<String>>,
) -> Vec<&'a Op> {
    ops.iter()
        .copied()
        .filter(|w| w.kind == Kind::Write && !w.ok())
        .filter(|w| finals.get(&w.key).is_some_and(|f| *f == w.value))
        .collect()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration for people: "0.4 ms", "850 ms" or "2.3 s".
pub fn human(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl ModeReport {
    /// The report as JSON.
    pub fn json(&self) -> Value {
        let side = |s: &Served| {
            json!({
                "ok": s.ok,
                "total": s.total,
                "availability": if s.total == 0 { Value::Null } else { json!(s.ok as f64 / s.total as f64) },
            })
        };
        json!({
            "keyspace": self.mode.keyspace(),
            "majority": side(&self.majority),
            "minority": side(&self.minority),
            "latency_ms": self.latency_ok.map(|(p50, p99)| json!({"p50": ms(p50), "p99": ms(p99)})),
            "failed_after_ms_p50": self.failed_after_p50.map(ms),
            "errors": self.errors,
            "anomalies": {
                "stale_reads": self.stale_reads,
                "lost_acknowledged_writes": self.lost_writes,
            },
            "discarded_by_lww": self.discarded_by_lww,
            "failed_writes_applied": self.failed_writes_applied,
            "converged": self.converged_after.is_some(),
            "converged_after_ms": self.converged_after.map(ms),
        })
    }
}

/// The comparison table for people: one column per mode.
pub fn table_text(reports: &[ModeReport], majority: &str, minority: &str) -> String {
    let served = |s: &Served| format!("{}/{} served", s.ok, s.total);
    let rows: Vec<(String, Vec<String>)> = vec![
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
            format!("majority side ({majority})"),
            reports.iter().map(|r| served(&r.majority)).collect(),
        ),
        (
            format!("minority side ({minority})"),
            reports.iter().map(|r| served(&r.minority)).collect(),
        ),
        (
            "latency p50 / p99".into(),
            reports
                .iter()
                .map(|r| match r.latency_ok {
                    Some((p50, p99)) => format!("{} / {}", human(p50), human(p99)),
                    None => "-".into(),
                })
                .collect(),
        ),
        (
            "refused after (p50)".into(),
            reports
                .iter()
                .map(|r| r.failed_after_p50.map_or("-".into(), human))
                .collect(),
        ),
        (
            "stale reads".into(),
            reports.iter().map(|r| r.stale_reads.to_string()).collect(),
        ),
        (
            "acknowledged writes lost".into(),
            reports.iter().map(|r| r.lost_writes.to_string()).collect(),
        ),
        (
            "writes discarded by LWW".into(),
            reports
                .iter()
                .map(|r| r.discarded_by_lww.to_string())
                .collect(),
        ),
        (
            "time to converge".into(),
            reports
                .iter()
                .map(|r| r.converged_after.map_or("not converged".into(), human))
                .collect(),
        ),
    ];
    crate::output::columns(&rows)
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
