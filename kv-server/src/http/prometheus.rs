//! `/metrics`: the process's event metrics (`crate::metrics`) plus the node's state read at
//! scrape time (peers' liveness, Raft leadership, terms and apply lag, hints pending, clock
//! skew, bytes on disk), in the Prometheus text format (OpenMetrics flavour, which Prometheus
//! scrapes natively).

use crate::metrics::metrics;
use crate::node::Node;
use kv_proto::v1 as pb;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::path::Path;

/// Most directory entries visited when summing the data directory's size: a sled directory
/// holds a handful of files, so a larger count means the path is wrong, not that it is big.
const MAX_DATA_DIR_ENTRIES: usize = 10_000;

/// Every metric of this node in the Prometheus text format.
pub fn render_metrics(node: &Node) -> String {
    let mut r = Registry::with_prefix("kv");
    metrics().register(&mut r);
    node_state(node, &mut r);
    let mut text = String::new();
    // Writing into a String cannot fail; a metric that fails to encode is a bug shown here.
    if let Err(e) = encode(&mut text, &r) {
        text = format!("# encoding the metrics failed: {e}\n# EOF\n");
    }
    text
}

fn node_state(node: &Node, r: &mut Registry) {
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![
        ("node".into(), node.me.name.clone()),
        ("cluster".into(), node.config.cluster_name.clone()),
    ])
    .set(1);
    r.register("node_info", "This node's name and cluster (always 1)", info);

    let peers: Family<Vec<(String, String)>, Gauge> = Family::default();
    for m in &node.config.peers {
        let state = node.links.membership().state(m.id);
        for s in [
            pb::NodeState::Alive,
            pb::NodeState::Suspect,
            pb::NodeState::Down,
            pb::NodeState::Unknown,
        ] {
            peers
                .get_or_create(&vec![
                    ("peer".into(), m.name.clone()),
                    ("state".into(), state_name(s).into()),
                ])
                .set(i64::from(state == s));
        }
    }
    r.register(
        "peer_state",
        "Liveness of each member as this node sees it (1 for its current state)",
        peers,
    );

    r.register(
        "writes_in_flight",
        "Writes admitted and not yet answered",
        ConstGauge::new(node.writes_in_flight() as i64),
    );

    if let Ok(cp) = node.cp() {
        let groups = cp.status();
        let me = node.me.id;
        let led = groups.iter().filter(|g| g.leader == Some(me)).count();
        let without_leader = groups.iter().filter(|g| g.leader.is_none()).count();
        let terms: u64 = groups.iter().map(|g| g.term).sum();
        let lag: u64 = groups
            .iter()
            .map(|g| {
                g.last_log_index
                    .unwrap_or(0)
                    .saturating_sub(g.last_applied_index.unwrap_or(0))
            })
            .sum();
        r.register(
            "raft_groups",
            "Raft groups this node is a member of (CP partitions and the metadata group)",
            ConstGauge::new(groups.len() as i64),
        );
        r.register(
            "raft_leaders",
            "Raft groups this node currently leads",
            ConstGauge::new(led as i64),
        );
        r.register(
            "raft_groups_without_leader",
            "Raft groups of this node that know no leader",
            ConstGauge::new(without_leader as i64),
        );
        r.register(
            "raft_elections",
            "Terms begun across this node's Raft groups (each new term is one election)",
            ConstCounter::new(terms),
        );
        r.register(
            "raft_apply_lag_entries",
            "Log entries appended but not yet applied, summed over this node's groups",
            ConstGauge::new(lag as i64),
        );
    }

    let ap = node.ap.status();
    let hints: Family<Vec<(String, String)>, Gauge> = Family::default();
    for m in &node.config.peers {
        if m.id == node.me.id {
            continue;
        }
        let n = ap.hints.get(&m.id).copied().unwrap_or(0);
        hints
            .get_or_create(&vec![("peer".into(), m.name.clone())])
            .set(n as i64);
    }
    r.register(
        "ap_hints_pending",
        "Hints this node holds for each peer",
        hints,
    );
    r.register(
        "ap_clock_skew_events",
        "Remote timestamps seen more than half the maximum clock offset ahead",
        ConstCounter::new(ap.skew_events),
    );
    r.register(
        "ap_clock_skew_refusals",
        "Remote timestamps refused as beyond the maximum clock offset",
        ConstCounter::new(ap.clock_refusals),
    );

    if let Some(dir) = &node.config.data_dir {
        r.register(
            "storage_bytes_on_disk",
            "Bytes of every file under the data directory",
            ConstGauge::new(dir_bytes(dir) as i64),
        );
    }
}

/// `alive`, `suspect`, `down` or `unknown`.
pub(super) fn state_name(s: pb::NodeState) -> &'static str {
    match s {
        pb::NodeState::Alive => "alive",
        pb::NodeState::Suspect => "suspect",
        pb::NodeState::Down => "down",
        pb::NodeState::Unknown => "unknown",
    }
}

/// Total size of the files under `dir` (0 when it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_DATA_DIR_ENTRIES {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
