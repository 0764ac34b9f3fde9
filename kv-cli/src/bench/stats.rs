//! What `kv bench` measures: each worker's `Recorder` (HDR latency histograms per kind of
//! request, answers, errors by kind, server-side hops, serving nodes), merged into one at the
//! end, and the latency summary of a histogram.

use super::args::Op;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest latency a histogram records exactly; anything longer counts as this (a request's
/// deadline is far below it).
pub const LATENCY_MAX_US: u64 = 600_000_000;
/// Significant decimal digits the histograms keep (0.1% resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

/// How a request that got an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done: value read, written, deleted, swapped.
    Ok,
    /// A read of a key that does not exist.
    NotFound,
    /// A compare-and-swap that found another value.
    CasMismatch,
}

/// One answered request: how it ended, and whether its serving node differed from the node
/// the client sent it to (`None` when that is not measured).
#[derive(Clone, Debug)]
pub struct Done {
    /// How it ended.
    pub answer: Answer,
    /// The node that served it, when the store says.
    pub served_by: Option<String>,
    /// True when another node than the one the client chose first served it.
    pub hop: Option<bool>,
}

/// A failed request: a stable snake_case kind and the error's text.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The kind, e.g. `unavailable`, `deadline_exceeded`.
    pub kind: &'static str,
    /// What the error said.
    pub message: String,
}

/// Per-kind counts and latencies.
#[derive(Clone)]
struct OpStats {
    latency_us: Histogram<u64>,
    not_found: u64,
    cas_mismatch: u64,
    errors: u64,
}

/// Everything one worker measured; workers' recorders merge into the report.
#[derive(Clone)]
pub struct Recorder {
    ops: [OpStats; 4],
    errors: BTreeMap<&'static str, (u64, String)>,
    hops: u64,
    hops_known: u64,
    served_by: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl Default for Recorder {
    fn default() -> Self {
        let op = || OpStats {
            latency_us: histogram(),
            not_found: 0,
            cas_mismatch: 0,
            errors: 0,
        };
        Recorder {
            ops: [op(), op(), op(), op()],
            errors: BTreeMap::new(),
            hops: 0,
            hops_known: 0,
            served_by: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// Records one request of kind `op` that took `latency`.
    pub fn record(&mut self, op: Op, latency: Duration, result: Result<Done, Failure>) {
        let stats = &mut self.ops[op.index()];
        match result {
            Ok(done) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(us.max(1));
                match done.answer {
                    Answer::Ok => {}
                    Answer::NotFound => stats.not_found += 1,
                    Answer::CasMismatch => stats.cas_mismatch += 1,
                }
                if let Some(hop) = done.hop {
                    self.hops_known += 1;
                    self.hops += u64::from(hop);
                }
                if let Some(node) = done.served_by {
                    *self.served_by.entry(node).or_default() += 1;
                }
            }
            Err(failure) => {
                stats.errors += 1;
                let entry = self
                    .errors
                    .entry(failure.kind)
                    .or_insert_with(|| (0, failure.message));
                entry.0 += 1;
            }
        }
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.latency_us.add(&theirs.latency_us);
            mine.not_found += theirs.not_found;
            mine.cas_mismatch += theirs.cas_mismatch;
            mine.errors += theirs.errors;
        }
        for (kind, (count, message)) in &other.errors {
            let entry = self.errors.entry(kind).or_insert((0, message.clone()));
            entry.0 += count;
        }
        self.hops += other.hops;
        self.hops_known += other.hops_known;
        for (node, count) in &other.served_by {
            *self.served_by.entry(node.clone()).or_default() += count;
        }
    }

    /// Answered requests (not-found and cas mismatches included).
    pub fn answered(&self) -> u64 {
        self.ops.iter().map(|o| o.latency_us.len()).sum()
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }

    /// The latencies of every answered request.
    pub fn all_latencies(&self) -> Histogram<u64> {
        let mut all = histogram();
        for o in &self.ops {
            let _ = all.add(&o.latency_us);
        }
        all
    }

    /// The measurements as JSON, over a measured period of `elapsed`.
    pub fn to_json(&self, elapsed: Duration, hop_method: Option<&str>) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ops: serde_json::Map<String, Value> = Op::ALL
            .into_iter()
            .filter_map(|op| {
                let o = &self.ops[op.index()];
                let count = o.latency_us.len() + o.errors;
                (count > 0).then(|| {
                    (
                        op.name().to_string(),
                        json!({
                            "requests": count,
                            "answered": o.latency_us.len(),
                            "not_found": o.not_found,
                            "cas_mismatch": o.cas_mismatch,
                            "errors": o.errors,
                            "throughput_ops_s": o.latency_us.len() as f64 / secs,
                            "latency_ms": latency_json(&o.latency_us),
                        }),
                    )
                })
            })
            .collect();
        let by_kind: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(kind, (count, message))| {
                (
                    kind.to_string(),
                    json!({"count": count, "example": message}),
                )
            })
            .collect();
        let hops = match hop_method {
            Some(method) => json!({
                "count": self.hops,
                "of": self.hops_known,
                "ratio": if self.hops_known > 0 { self.hops as f64 / self.hops_known as f64 } else { 0.0 },
                "method": method,
            }),
            None => Value::Null,
        };
        json!({
            "requests": self.answered() + self.failed(),
            "answered": self.answered(),
            "errors": {"total": self.failed(), "by_kind": by_kind},
            "elapsed_s": elapsed.as_secs_f64(),
            "throughput_ops_s": self.answered() as f64 / secs,
            "latency_ms": latency_json(&self.all_latencies()),
            "ops": ops,
            "hops": hops,
            "served_by": self.served_by,
        })
    }
}

/// p50, p90, p99, p99.9, max and mean of a histogram of microseconds, in milliseconds;
/// null when it is empty.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": h.mean() / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(hop: bool, node: &str) -> Result<Done, Failure> {
        Ok(Done {
            answer: Answer::Ok,
            served_by: Some(node.into()),
            hop: Some(hop),
        })
    }

    #[test]
    fn recorders_merge_counts_latencies_errors_and_hops() {
        let mut a = Recorder::default();
        for ms in 1..=100u64 {
            a.record(Op::Get, Duration::from_millis(ms), ok(ms % 4 == 0, "n1"));
        }
        let mut b = Recorder::default();
        b.record(
            Op::Put,
            Duration::from_millis(500),
            Err(Failure {
                kind: "unavailable",
                message: "no quorum".into(),
            }),
        );
        b.record(
            Op::Get,
            Duration::from_millis(2),
            Ok(Done {
                answer: Answer::NotFound,
                served_by: Some("n2".into()),
                hop: Some(false),
            }),
        );
        a.merge(&b);
        assert_eq!(a.answered(), 101);
        assert_eq!(a.failed(), 1);
        let j = a.to_json(Duration::from_secs(2), Some("test"));
        assert_eq!(j["requests"], 102);
        assert_eq!(j["errors"]["by_kind"]["unavailable"]["count"], 1);
        assert_eq!(
            j["errors"]["by_kind"]["unavailable"]["example"],
            "no quorum"
        );
        assert_eq!(j["hops"]["count"], 25);
        assert_eq!(j["hops"]["of"], 101);
        assert_eq!(j["served_by"]["n1"], 100);
        assert_eq!(j["served_by"]["n2"], 1);
        assert_eq!(j["ops"]["get"]["not_found"], 1);
        assert_eq!(j["ops"]["put"]["errors"], 1);
        assert_eq!(j["ops"]["put"]["latency_ms"], Value::Null);
        assert_eq!(j["throughput_ops_s"], 50.5);
        // Percentiles of 1..=100 ms (plus one 2 ms read), within the histogram's 0.1%.
        let p = |name: &str| j["ops"]["get"]["latency_ms"][name].as_f64().unwrap();
        assert!((p("p50") - 50.0).abs() < 0.1, "{}", p("p50"));
        assert!((p("p99") - 99.0).abs() < 0.1, "{}", p("p99"));
        assert!((p("max") - 100.0).abs() < 0.1, "{}", p("max"));
        assert!(p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p99_9"));
    }

    #[test]
    fn without_a_hop_method_hops_are_null() {
        let mut r = Recorder::default();
        r.record(Op::Put, Duration::from_millis(1), ok(true, "n1"));
        assert_eq!(r.to_json(Duration::from_secs(1), None)["hops"], Value::Null);
    }
}
