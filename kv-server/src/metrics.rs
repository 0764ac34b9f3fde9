//! The node's event metrics (counters and histograms bumped where requests, Raft commits,
//! snapshots, AP background work and flushes happen), kept process-wide in `metrics()`.
//! Values that are state rather than events (leaders held, apply lag, hints pending, bytes on
//! disk, peers' liveness) are read from the node at scrape time by `http::metrics`, which also
//! renders everything in the Prometheus text format.
//!
//! Process-wide because a production process runs one node: threading a handle through every
//! engine constructor would touch every test that builds one. Tests that run several nodes in
//! one process (simulations, engine tests) see their sums; the real-process tests and `kv
//! local` see one node per process. Metric names follow Prometheus conventions (`_total`
//! counters, `_seconds` histograms); every label has a bounded set of values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// Labels of one served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `put`, `delete` or `cas`.
    pub op: &'static str,
    /// The keyspace's name, or `unknown` when no such keyspace exists (so a client cannot grow
    /// the label set with made-up names).
    pub keyspace: String,
    /// `cp`, `ap`, or `unknown`.
    pub mode: &'static str,
    /// The gRPC status code's canonical name (`OK`, `UNAVAILABLE`, ...).
    pub code: &'static str,
}

/// Labels of a latency histogram of requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `get`, `put`, `delete` or `cas`.
    pub op: &'static str,
    /// `cp`, `ap`, or `unknown`.
    pub mode: &'static str,
}

/// Labels of a corrupt stored record event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CorruptLabels {
    /// `cp` or `ap`.
    pub mode: &'static str,
    /// `detected` (a checksum failed on a read, an apply or the scrub), `repaired` (replaced
    /// with a good copy from another replica) or `unrepaired` (no good copy could be fetched).
    pub action: &'static str,
}

/// Latency buckets in seconds: 0.5 ms to ~16 s, doubling (a WAN-free store's range, up to the
/// longest request deadline people set).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Every event metric of this process. Handles are cheap clones of shared atomics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Requests served by the public API (gRPC and HTTP), by outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer a request, forwarding included.
    pub request_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Time from proposing a CP write to this node's Raft group until it is committed and
    /// applied (on the leader).
    pub raft_commit_seconds: Histogram,
    /// CP writes proposed here that failed (not leader, timeout, shutdown).
    pub raft_proposals_failed: Counter,
    /// Snapshots built by this node's CP state machines.
    pub raft_snapshots: Counter,
    /// Hints delivered to their owner and deleted.
    pub hint_replays: Counter,
    /// Hints dropped as older than the hint window.
    pub hints_expired: Counter,
    /// AP read repairs: stale replicas written back.
    pub read_repairs: Counter,
    /// Anti-entropy rounds started (one pass over every AP partition held here).
    pub anti_entropy_rounds: Counter,
    /// Merkle exchanges with one peer about one partition.
    pub anti_entropy_exchanges: Counter,
    /// Records moved by anti-entropy: ours superseded and stored, or ours pushed and taken.
    pub anti_entropy_keys_repaired: Counter,
    /// AP tombstones written by deletes coordinated here.
    pub tombstones_written: Counter,
    /// AP tombstones purged past their grace period.
    pub tombstones_purged: Counter,
    /// Flushes (fsyncs) of the storage engine by the group commit.
    pub storage_flushes: Counter,
    /// gRPC calls carrying Raft messages to peers (`Internal.Raft` and `Internal.RaftBatch`).
    pub raft_calls: Counter,
    /// Raft messages sent to peers (a batch call carries several).
    pub raft_messages_sent: Counter,
    /// gRPC calls carrying AP replica writes to peers (`Internal.ApWriteBatch`).
    pub ap_write_calls: Counter,
    /// AP replica writes and hints sent to peers (a batch call carries several).
    pub ap_writes_sent: Counter,
    /// Time one group-commit flush took.
    pub storage_flush_seconds: Histogram,
    /// Stored records whose checksum failed, by mode and what was done about them.
    pub corrupt_records: Family<CorruptLabels, Counter>,
    /// Records checked by the background scrub.
    pub scrub_records: Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            raft_commit_seconds: latency_histogram(),
            raft_proposals_failed: Counter::default(),
            raft_snapshots: Counter::default(),
            hint_replays: Counter::default(),
            hints_expired: Counter::default(),
            read_repairs: Counter::default(),
            anti_entropy_rounds: Counter::default(),
            anti_entropy_exchanges: Counter::default(),
            anti_entropy_keys_repaired: Counter::default(),
            tombstones_written: Counter::default(),
            tombstones_purged: Counter::default(),
            storage_flushes: Counter::default(),
            raft_calls: Counter::default(),
            raft_messages_sent: Counter::default(),
            ap_write_calls: Counter::default(),
            ap_writes_sent: Counter::default(),
            storage_flush_seconds: latency_histogram(),
            corrupt_records: Family::default(),
            scrub_records: Counter::default(),
        }
    }

    /// Registers every metric (shared handles: the registry sees later increments) under the
    /// `kv_` prefix the registry was made with.
    pub fn register(&self, r: &mut Registry) {
        let c = self.clone();
        r.register("requests", "Requests served by the public API", c.requests);
        r.register(
            "request_duration_seconds",
            "Time to answer a request, forwarding included",
            c.request_seconds,
        );
        r.register(
            "raft_commit_duration_seconds",
            "Time from proposing a CP write here until it is committed and applied",
            c.raft_commit_seconds,
        );
        r.register(
            "raft_proposals_failed",
            "CP writes proposed here that failed (not leader, timeout, shutdown)",
            c.raft_proposals_failed,
        );
        r.register(
            "raft_snapshots",
            "Snapshots built by this node's CP state machines",
            c.raft_snapshots,
        );
        r.register(
            "ap_hint_replays",
            "Hints delivered to their owner and deleted",
            c.hint_replays,
        );
        r.register(
            "ap_hints_expired",
            "Hints dropped as older than the hint window",
            c.hints_expired,
        );
        r.register(
            "ap_read_repairs",
            "Stale AP replicas written back by read repair",
            c.read_repairs,
        );
        r.register(
            "ap_anti_entropy_rounds",
            "Anti-entropy rounds started",
            c.anti_entropy_rounds,
        );
        r.register(
            "ap_anti_entropy_exchanges",
            "Merkle exchanges with one peer about one partition",
            c.anti_entropy_exchanges,
        );
        r.register(
            "ap_anti_entropy_keys_repaired",
            "Records moved by anti-entropy (taken or pushed)",
            c.anti_entropy_keys_repaired,
        );
        r.register(
            "ap_tombstones_written",
            "AP tombstones written by deletes coordinated here",
            c.tombstones_written,
        );
        r.register(
            "ap_tombstones_purged",
            "AP tombstones purged past their grace period",
            c.tombstones_purged,
        );
        r.register(
            "storage_flushes",
            "Storage engine flushes (fsyncs) by the group commit",
            c.storage_flushes,
        );
        r.register(
            "raft_calls",
            "gRPC calls carrying Raft messages to peers (single and batched)",
            c.raft_calls,
        );
        r.register(
            "raft_messages_sent",
            "Raft messages sent to peers (a batch call carries several)",
            c.raft_messages_sent,
        );
        r.register(
            "ap_write_calls",
            "gRPC calls carrying AP replica writes to peers (batched)",
            c.ap_write_calls,
        );
        r.register(
            "ap_writes_sent",
            "AP replica writes and hints sent to peers (a batch call carries several)",
            c.ap_writes_sent,
        );
        r.register(
            "storage_flush_duration_seconds",
            "Time one group-commit flush took",
            c.storage_flush_seconds,
        );
        r.register(
            "corrupt_records",
            "Stored records whose checksum failed: detected, repaired from a replica, unrepaired",
            c.corrupt_records,
        );
        r.register(
            "scrub_records",
            "Records checked by the background scrub",
            c.scrub_records,
        );
    }

    /// Counts one corrupt-record event of `mode` (`cp`/`ap`): `detected`, `repaired` or
    /// `unrepaired`.
    pub fn corrupt(&self, mode: &'static str, action: &'static str) {
        self.corrupt_records
            .get_or_create(&CorruptLabels { mode, action })
            .inc();
    }

    /// Counts one answered request of `op` on `keyspace` (`None`: no such keyspace).
    pub fn request(
        &self,
        op: &'static str,
        keyspace: Option<(&str, &'static str)>,
        code: tonic::Code,
        took: Duration,
    ) {
        let (keyspace, mode) = keyspace.unwrap_or(("unknown", "unknown"));
        self.requests
            .get_or_create(&RequestLabels {
                op,
                keyspace: keyspace.to_string(),
                mode,
                code: code_name(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&OpLabels { op, mode })
            .observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The canonical name of a gRPC status code, as grpc-gateway and the gRPC docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_moves_its_counter_and_histogram() {
        let m = Metrics::new();
        m.request(
            "put",
            Some(("cp", "cp")),
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.request("get", None, tonic::Code::NotFound, Duration::from_millis(1));
        let mut r = Registry::with_prefix("kv");
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains(r#"kv_requests_total{op="put",keyspace="cp",mode="cp",code="OK"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kv_requests_total{op="get",keyspace="unknown",mode="unknown",code="NOT_FOUND"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kv_request_duration_seconds_count{op="put",mode="cp"} 1"#),
            "{text}"
        );
    }
}
