//! Checkers for AP (Dynamo-style, last-write-wins) keyspaces: lost acknowledged writes,
//! divergence after heal, resurrected deletes, stale reads, time to converge, and the
//! append-set workload's lost elements.
//!
//! Inputs: the client history (ok writes and reads carry their HLC timestamp), a final read of
//! every replica of every key taken after the heal, and convergence samples. Timestamps are
//! opaque totally ordered [`Hlc`] tuples; LWW means the highest timestamp wins.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{History, HistoryError, Hlc, Op, Operation, Outcome};

/// Examples kept per anomaly kind in an [`ApReport`].
pub const MAX_EXAMPLES: usize = 10;

/// A replica's record for a key: a value or a tombstone, with its write timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The value; None is a tombstone.
    pub value: Option<String>,
    /// LWW timestamp of the write that produced it.
    pub timestamp: Hlc,
}

/// One replica's answer, read directly from that node, for one key it owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRead {
    /// Replica node index.
    pub node: usize,
    /// The key.
    pub key: String,
    /// What the replica holds; None = nothing (never written, or tombstone purged).
    pub record: Option<Record>,
    /// When it was read, ns since run start.
    pub time_ns: u64,
}

/// One convergence poll after the heal: did every replica agree on every key?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergenceSample {
    /// When the poll was taken, ns since run start.
    pub time_ns: u64,
    /// True when all replicas agreed.
    pub converged: bool,
}

/// A node index and what that replica held.
pub type NodeRecord = (usize, Option<Record>);

/// Everything the AP checker needs besides the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApInput {
    /// Final per-replica reads (only replicas that own the key).
    pub final_reads: Vec<ReplicaRead>,
    /// Convergence polls, any order.
    pub samples: Vec<ConvergenceSample>,
    /// When the last fault healed, ns since run start.
    pub heal_ns: u64,
    /// How long after the heal replicas may still disagree.
    pub convergence_deadline_ns: u64,
}

/// Counts and examples of each AP anomaly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApReport {
    /// Acknowledged writes (puts).
    pub acknowledged_writes: usize,
    /// (a) Acknowledged puts absent from every replica and not overwritten by a higher timestamp.
    pub lost_writes: usize,
    /// Examples of (a): key, value, timestamp.
    pub lost_examples: Vec<(String, String, Hlc)>,
    /// (b) Keys whose replicas disagree in reads taken after the convergence deadline.
    pub divergent_keys: usize,
    /// Examples of (b): key and the records seen per node.
    pub divergent_examples: Vec<(String, Vec<NodeRecord>)>,
    /// (c) Keys whose newest acknowledged write is a delete, yet a value older than it came back.
    pub resurrected_keys: usize,
    /// Examples of (c): key and the resurrected value.
    pub resurrected_examples: Vec<(String, String)>,
    /// Ok reads checked for staleness.
    pub reads: usize,
    /// (d) Reads older than the newest write acknowledged before the read began.
    pub stale_reads: usize,
    /// Examples of (d): the stale read.
    pub stale_examples: Vec<Operation>,
    /// (e) Time from heal to the first poll after which every poll converged; None = never.
    pub converge_ns: Option<u64>,
}

impl ApReport {
    /// Fraction of ok reads that were stale (0 when there were no reads).
    pub fn stale_read_rate(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.stale_reads as f64 / self.reads as f64
        }
    }

    /// True when convergence was not observed within the deadline.
    pub fn converged_late(&self, deadline_ns: u64) -> bool {
        self.converge_ns.is_none_or(|t| t > deadline_ns)
    }

    /// Safety anomalies: lost writes, divergence and resurrections (stale reads are allowed in
    /// AP mode and reported as a rate instead).
    pub fn anomalies(&self) -> usize {
        self.lost_writes + self.divergent_keys + self.resurrected_keys
    }
}

fn push_example<T>(list: &mut Vec<T>, item: T) {
    if list.len() < MAX_EXAMPLES {
        list.push(item);
    }
}

/// Runs checks (a)–(e) on an AP history.
pub fn check(history: &History, input: &ApInput) -> Result<ApReport, HistoryError> {
    Ok(check_operations(&history.operations()?, input))
}

/// Runs checks (a)–(e) on paired operations.
pub fn check_operations(ops: &[Operation], input: &ApInput) -> ApReport {
    let mut report = ApReport::default();
    let settled_ns = input.heal_ns.saturating_add(input.convergence_deadline_ns);

    let mut replicas: BTreeMap<&str, Vec<&ReplicaRead>> = BTreeMap::new();
    for read in &input.final_reads {
        replicas.entry(read.key.as_str()).or_default().push(read);
    }
    // Newest timestamp any replica holds per key: what a read-all would return.
    let newest = |key: &str| -> Option<&Record> {
        replicas
            .get(key)?
            .iter()
            .filter_map(|r| r.record.as_ref())
            .max_by_key(|r| r.timestamp)
    };
    // Acknowledged writes per key: (timestamp, value, is_delete).
    let mut acked: BTreeMap<&str, Vec<(Hlc, Option<&str>)>> = BTreeMap::new();
    for op in ops {
        let value = match &op.op {
            Op::Write(v) => Some(v.as_str()),
            Op::Cas { new, .. } => new.as_deref(),
            Op::Delete => None,
            Op::Read => continue,
        };
        if let (Outcome::Ok, Some(ts)) = (op.outcome, op.timestamp) {
            acked.entry(op.key.as_str()).or_default().push((ts, value));
        }
    }

    // (a) Lost writes.
    for (&key, writes) in &acked {
        let final_ts = newest(key).map(|r| r.timestamp);
        let newest_delete = writes.iter().filter(|w| w.1.is_none()).map(|w| w.0).max();
        for &(ts, value) in writes {
            let Some(value) = value else { continue };
            report.acknowledged_writes += 1;
            let survived = match final_ts {
                Some(f) => f >= ts,
                // A purged tombstone of a later delete explains an empty key.
                None => newest_delete.is_some_and(|d| d > ts),
            };
            if !survived {
                report.lost_writes += 1;
                push_example(
                    &mut report.lost_examples,
                    (key.to_string(), value.to_string(), ts),
                );
            }
        }
    }

    // (b) Divergence after the deadline. A purged tombstone and a tombstone are the same state.
    for (&key, reads) in &replicas {
        let late: Vec<&&ReplicaRead> = reads.iter().filter(|r| r.time_ns >= settled_ns).collect();
        let states: BTreeSet<Option<(Hlc, &str)>> = late
            .iter()
            .map(|r| {
                r.record
                    .as_ref()
                    .and_then(|rec| rec.value.as_deref().map(|v| (rec.timestamp, v)))
            })
            .collect();
        if states.len() > 1 {
            report.divergent_keys += 1;
            let seen = late.iter().map(|r| (r.node, r.record.clone())).collect();
            push_example(&mut report.divergent_examples, (key.to_string(), seen));
        }
    }

    // (c) Resurrected deletes: the newest acknowledged write is a delete, yet a replica (or a
    // client read begun after the deadline) returns a value older than that delete.
    for (&key, writes) in &acked {
        let Some(&(delete_ts, None)) = writes.iter().max_by_key(|w| w.0) else {
            continue;
        };
        let from_replicas = replicas.get(key).into_iter().flatten().filter_map(|r| {
            let rec = r.record.as_ref()?;
            Some((rec.value.as_deref()?, rec.timestamp))
        });
        let from_clients = ops.iter().filter_map(|op| {
            let late = op.key == key && op.invoke_ns >= settled_ns && op.outcome == Outcome::Ok;
            match (&op.op, late) {
                (Op::Read, true) => Some((op.read.as_deref()?, op.timestamp?)),
                _ => None,
            }
        });
        let back = from_replicas
            .chain(from_clients)
            .find(|&(_, ts)| ts < delete_ts);
        if let Some((value, _)) = back {
            report.resurrected_keys += 1;
            push_example(
                &mut report.resurrected_examples,
                (key.to_string(), value.to_string()),
            );
        }
    }

    // (d) Stale reads: compare with the newest write acknowledged before the read began.
    let mut acked_at: BTreeMap<&str, Vec<(u64, Hlc, bool)>> = BTreeMap::new();
    for op in ops {
        if op.op != Op::Read && op.outcome == Outcome::Ok {
            if let (Some(done), Some(ts)) = (op.complete_ns, op.timestamp) {
                let entry = acked_at.entry(op.key.as_str()).or_default();
                let deletes = matches!(op.op, Op::Delete | Op::Cas { new: None, .. });
                entry.push((done, ts, deletes));
            }
        }
    }
    for op in ops {
        if op.op != Op::Read || op.outcome != Outcome::Ok {
            continue;
        }
        report.reads += 1;
        let required = acked_at
            .get(op.key.as_str())
            .into_iter()
            .flatten()
            .filter(|(done, _, _)| *done < op.invoke_ns)
            .max_by_key(|(_, ts, _)| *ts);
        let stale = match (required, op.timestamp) {
            (None, _) => false,
            (Some(&(_, ts, _)), Some(read_ts)) => read_ts < ts,
            // Found nothing and carried no timestamp: right only if the newest write deleted.
            (Some(&(_, _, deleted)), None) => !deleted || op.read.is_some(),
        };
        if stale {
            report.stale_reads += 1;
            push_example(&mut report.stale_examples, op.clone());
        }
    }

    // (e) Time to converge: from the heal to the first poll after which all polls agree.
    let mut samples: Vec<&ConvergenceSample> = input
        .samples
        .iter()
        .filter(|s| s.time_ns >= input.heal_ns)
        .collect();
    samples.sort_by_key(|s| s.time_ns);
    let mut converged_since = None;
    for s in samples {
        match (s.converged, converged_since) {
            (true, None) => converged_since = Some(s.time_ns),
            (false, _) => converged_since = None,
            _ => {}
        }
    }
    report.converge_ns = converged_since.map(|t| t - input.heal_ns);
    report
}

/// Result of the append-set workload check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReport {
    /// Elements whose write was acknowledged.
    pub acknowledged: usize,
    /// Acknowledged elements missing from the final reads.
    pub lost: Vec<String>,
    /// Acknowledged elements no final read answered for (unavailable, not lost).
    pub unread: usize,
    /// Elements with unknown outcome that were found (informational).
    pub recovered: usize,
    /// Final reads returning a value no write attempted.
    pub unexpected: Vec<String>,
}

/// Checks the append-set workload: every element is its own key, written once; the history
/// ends with final reads of every attempted key (ok reads invoked at or after `final_from_ns`).
pub fn check_set(history: &History, final_from_ns: u64) -> Result<SetReport, HistoryError> {
    let ops = history.operations()?;
    let mut attempted: BTreeMap<&str, (&str, Outcome)> = BTreeMap::new();
    let mut found: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for op in &ops {
        match &op.op {
            Op::Write(v) => {
                attempted.insert(op.key.as_str(), (v.as_str(), op.outcome));
            }
            Op::Read if op.outcome == Outcome::Ok && op.invoke_ns >= final_from_ns => {
                found
                    .entry(op.key.as_str())
                    .or_default()
                    .insert(op.read.as_deref());
            }
            _ => {}
        }
    }
    let mut report = SetReport::default();
    for (&key, &(value, outcome)) in &attempted {
        let reads = found.get(key);
        let seen = reads.is_some_and(|reads| reads.contains(&Some(value)));
        match outcome {
            Outcome::Ok => {
                report.acknowledged += 1;
                if reads.is_none() {
                    report.unread += 1;
                } else if !seen {
                    report.lost.push(key.to_string());
                }
            }
            Outcome::Info if seen => report.recovered += 1,
            _ => {}
        }
    }
    for (&key, reads) in &found {
        for value in reads.iter().flatten() {
            if attempted.get(key).is_none_or(|&(v, _)| v != *value) {
                report.unexpected.push(format!("{key}={value}"));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[path = "ap_tests.rs"]
mod tests;
