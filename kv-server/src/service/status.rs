//! The answers of `ClusterStatus` and `Ring`: what this node sees of the cluster (liveness,
//! hints, keyspaces, the partitions it leads) and the ring every node computes.

use super::convert::keyspace_pb;
use crate::node::Node;
use kv_proto::v1 as pb;

/// This node's view of the cluster.
pub(super) fn cluster_status(node: &Node) -> pb::ClusterStatusResponse {
    let ap = node.ap.status();
    let hints = ap.hints;
    let nodes = node
        .config
        .peers
        .iter()
        .map(|m| pb::NodeStatus {
            id: m.id,
            name: m.name.clone(),
            address: m.addr.clone(),
            state: node.links.membership().state(m.id) as i32,
            hints_pending: hints.get(&m.id).copied().unwrap_or(0) as u64,
        })
        .collect();
    let keyspaces = node
        .keyspaces
        .read()
        .expect("keyspace lock")
        .values()
        .map(keyspace_pb)
        .collect();
    let leader_of = node
        .cp()
        .map(|cp| {
            cp.groups_led()
                .into_iter()
                .filter(|g| *g != crate::cp::META_GROUP)
                .map(|g| (g & u64::from(u32::MAX)) as u32)
                .collect()
        })
        .unwrap_or_default();
    pb::ClusterStatusResponse {
        cluster_name: node.config.cluster_name.clone(),
        node_id: node.me.id,
        node_name: node.me.name.clone(),
        nodes,
        keyspaces,
        leader_of,
        clock_skew_events: ap.skew_events,
        read_repairs: ap.read_repairs,
    }
}

/// The ring: members and every partition's preference list.
pub(super) fn ring(node: &Node) -> pb::RingResponse {
    let ring = &node.ring;
    pb::RingResponse {
        cluster_name: node.config.cluster_name.clone(),
        partition_count: ring.partition_count(),
        tokens_per_node: ring.tokens_per_node(),
        members: node
            .config
            .peers
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                address: m.addr.clone(),
            })
            .collect(),
        partitions: (0..ring.partition_count())
            .map(|p| pb::Partition {
                id: p,
                preference: ring.preference_list(p).to_vec(),
            })
            .collect(),
    }
}
