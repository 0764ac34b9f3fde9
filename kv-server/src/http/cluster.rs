//! `/v1/cluster`: what the status page draws. This node asks every member for its
//! `ClusterStatus` in parallel (a member that does not answer within `PEER_STATUS_TIMEOUT` is
//! shown unreachable) and adds the ring and its own view of each CP partition's leader and term.

use super::prometheus::state_name;
use crate::node::{Node, CP_REPLICAS};
use crate::service::KvService;
use crate::types::NodeId;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kv_proto::v1 as pb;
use kv_proto::v1::kv_server::Kv;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long the page's data waits for one member's status: short, because the page refreshes
/// every second and a dead member must not hold it up.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

pub(super) async fn cluster(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        cluster_json(&node).await.to_string(),
    )
        .into_response()
}

async fn member_status(node: &Arc<Node>, id: NodeId) -> Result<pb::ClusterStatusResponse, String> {
    if id == node.me.id {
        return KvService::new(node.clone())
            .cluster_status(tonic::Request::new(pb::ClusterStatusRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string());
    }
    // Through the peer link, like forwarded requests: the member's public `ClusterStatus` on
    // the address the links dial (if peers get a port of their own, it must serve this too).
    let call = async {
        let mut client = node.links.kv_client(id).await.map_err(|e| e.to_string())?;
        client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    match tokio::time::timeout(PEER_STATUS_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {} ms",
            PEER_STATUS_TIMEOUT.as_millis()
        )),
    }
}

/// The page's data (documented in docs/operations.md).
pub async fn cluster_json(node: &Arc<Node>) -> Value {
    let name = |id: NodeId| {
        node.member(id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    };
    let ids: Vec<NodeId> = node.config.peers.iter().map(|m| m.id).collect();
    let answers = futures::future::join_all(ids.iter().map(|id| member_status(node, *id))).await;
    let views: Vec<Value> = ids
        .iter()
        .zip(answers)
        .map(|(id, answer)| match answer {
            Ok(s) => json!({
                "node": name(*id),
                "reachable": true,
                "error": null,
                "peers": s.nodes.iter().map(|n| json!({
                    "name": n.name,
                    "state": state_name(pb::NodeState::try_from(n.state).unwrap_or(pb::NodeState::Unknown)),
                    "hintsPending": n.hints_pending,
                })).collect::<Vec<_>>(),
                "leaderOf": s.leader_of,
            }),
            Err(e) => json!({
                "node": name(*id),
                "reachable": false,
                "error": crate::error::truncate(&e, 300),
                "peers": [],
                "leaderOf": [],
            }),
        })
        .collect();
    let ring = &node.ring;
    let stats = ring.stats(CP_REPLICAS as usize);
    let per_node = |m: &std::collections::BTreeMap<NodeId, u32>| {
        m.iter()
            .map(|(id, n)| (name(*id), json!(n)))
            .collect::<serde_json::Map<_, _>>()
    };
    let partitions: Vec<Value> = (0..ring.partition_count())
        .map(|p| {
            json!({
                "id": p,
                "preference": ring.preference_list(p).iter().map(|id| name(*id)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let cp: Vec<Value> = node
        .cp()
        .map(|cp| {
            cp.status()
                .into_iter()
                .filter(|g| g.group != crate::cp::META_GROUP)
                .map(|g| {
                    json!({
                        "partition": g.partition,
                        "leader": g.leader.map(name),
                        "term": g.term,
                        "role": g.role,
                        "members": g.members.iter().map(|id| name(*id)).collect::<Vec<_>>(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "node": node.me.name,
        "cluster": node.config.cluster_name,
        "members": node.config.peers.iter().map(|m| json!({
            "name": m.name, "address": m.addr,
        })).collect::<Vec<_>>(),
        "ring": {
            "partitionCount": ring.partition_count(),
            "replicas": CP_REPLICAS,
            "replicasPerNode": per_node(&stats.replicas_per_node),
            "ownedPerNode": per_node(&stats.owned_per_node),
            "partitions": partitions,
        },
        "views": views,
        "cp": cp,
    })
}
