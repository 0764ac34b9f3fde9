//! gRPC adapters for the engines' transport seams: `RaftTransport` (CP) and `ApTransport` (AP)
//! over the internal service, with the fault-injection filter applied to every outgoing
//! message. **Architecture invariant:** the engines never see gRPC; only this file and
//! `service/` convert between engine types and protobuf.

use crate::ap::engine::{ApTransport, Liveness, TransportError as ApTransportError};
use crate::ap::lww::ApRecord;
use crate::cp::network::{RaftKind, RaftTransport, TransportError as RaftTransportError};
use crate::node::Node;
use crate::types::{Hlc, NodeId};
use futures::future::BoxFuture;
use kv_proto::internal as ipb;
use kv_proto::v1 as pb;
use std::sync::{Arc, OnceLock, Weak};

/// Converts an AP record to its wire form.
pub fn record_to_pb(r: &ApRecord) -> ipb::Record {
    ipb::Record {
        key: r.key.clone(),
        value: r.value.clone().unwrap_or_default(),
        tombstone: r.value.is_none(),
        hlc: Some(pb::Hlc {
            physical_ms: r.hlc.physical_ms,
            logical: r.hlc.logical,
            node_id: r.hlc.node_id,
        }),
    }
}

/// Converts a wire record to an AP record.
pub fn record_from_pb(r: ipb::Record) -> ApRecord {
    let hlc = r.hlc.unwrap_or_default();
    ApRecord {
        key: r.key,
        hlc: Hlc {
            physical_ms: hlc.physical_ms,
            logical: hlc.logical,
            node_id: hlc.node_id,
        },
        value: if r.tombstone { None } else { Some(r.value) },
    }
}

/// Both engines' transports (and the AP engine's liveness view) over the node's internal gRPC
/// clients. Holds the node weakly: the node owns the engines, which own this. Made before the
/// node (the engines need it to open) and bound to it right after; clones share the binding.
#[derive(Clone, Default)]
pub struct GrpcTransport {
    node: Arc<OnceLock<Weak<Node>>>,
}

impl GrpcTransport {
    /// A transport bound to `node`.
    pub fn new(node: Weak<Node>) -> Self {
        let t = Self::default();
        t.bind(node);
        t
    }

    /// Binds the transport to its node (once; later calls are ignored).
    pub fn bind(&self, node: Weak<Node>) {
        let _ = self.node.set(node);
    }

    fn upgrade(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }
}

impl Liveness for GrpcTransport {
    fn is_alive(&self, node: NodeId) -> bool {
        self.upgrade().is_some_and(|n| n.membership.is_alive(node))
    }
}

/// Why an outgoing message was not sent: node gone, or a fault injected by chaos.
fn blocked(node: &Option<Arc<Node>>, to: NodeId) -> Option<String> {
    match node {
        None => Some("node is shutting down".into()),
        Some(n) if n.faults.drops(to) => Some(format!(
            "traffic to {} is dropped by fault injection",
            n.describe(to)
        )),
        Some(_) => None,
    }
}

fn ap_err(to: NodeId, s: tonic::Status) -> ApTransportError {
    if s.code() == tonic::Code::Unavailable
        && s.metadata().get(kv_core::headers::NODE_HEADER).is_none()
    {
        ApTransportError::Unreachable {
            node: to,
            reason: s.message().to_string(),
        }
    } else {
        ApTransportError::Remote {
            node: to,
            message: s.message().to_string(),
        }
    }
}

impl GrpcTransport {
    /// The node and a client to `to`, after the fault filter.
    async fn client(
        &self,
        to: NodeId,
    ) -> Result<
        (
            Arc<Node>,
            ipb::internal_client::InternalClient<tonic::transport::Channel>,
        ),
        ApTransportError,
    > {
        let node = self.upgrade();
        if let Some(reason) = blocked(&node, to) {
            return Err(ApTransportError::Unreachable { node: to, reason });
        }
        let node = node.expect("checked by blocked");
        node.faults.delay(to).await;
        let client = node
            .internal_client(to)
            .map_err(|e| ApTransportError::Unreachable {
                node: to,
                reason: e.to_string(),
            })?;
        Ok((node, client))
    }
}

impl ApTransport for GrpcTransport {
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> BoxFuture<'static, Result<(), ApTransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (node, mut client) = this.client(to).await?;
            client
                .ap_write(ipb::ApWriteRequest {
                    keyspace: keyspace_id.to_string(),
                    record: Some(record_to_pb(&record)),
                    hint_for: hint_for.unwrap_or(0),
                    from: node.me.id,
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            node.membership.heard_from(to);
            Ok(())
        })
    }

    fn read(
        &self,
        to: NodeId,
        keyspace_id: u32,
        key: Vec<u8>,
    ) -> BoxFuture<'static, Result<Option<ApRecord>, ApTransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (node, mut client) = this.client(to).await?;
            let resp = client
                .ap_read(ipb::ApReadRequest {
                    keyspace: keyspace_id.to_string(),
                    key,
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            node.membership.heard_from(to);
            Ok(resp.into_inner().record.map(record_from_pb))
        })
    }

    fn merkle_leaves(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
    ) -> BoxFuture<'static, Result<Vec<u64>, ApTransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (_, mut client) = this.client(to).await?;
            let resp = client
                .merkle_tree(ipb::MerkleTreeRequest {
                    keyspace: keyspace_id.to_string(),
                    partition,
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            Ok(resp.into_inner().leaves)
        })
    }

    fn merkle_range(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
        leaves: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ApRecord>, ApTransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (_, mut client) = this.client(to).await?;
            let resp = client
                .merkle_range(ipb::MerkleRangeRequest {
                    keyspace: keyspace_id.to_string(),
                    partition,
                    leaves,
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            Ok(resp
                .into_inner()
                .records
                .into_iter()
                .map(record_from_pb)
                .collect())
        })
    }
}
impl RaftTransport for GrpcTransport {
    fn send(
        &self,
        to: NodeId,
        group: u64,
        kind: RaftKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, RaftTransportError>> {
        let node = self.upgrade();
        Box::pin(async move {
            if let Some(reason) = blocked(&node, to) {
                return Err(RaftTransportError::Unreachable { to, reason });
            }
            let node = node.expect("checked by blocked");
            node.faults.delay(to).await;
            let mut client =
                node.internal_client(to)
                    .map_err(|e| RaftTransportError::Unreachable {
                        to,
                        reason: e.to_string(),
                    })?;
            let resp = client
                .raft(ipb::RaftRequest {
                    group,
                    kind: kind.code(),
                    payload,
                })
                .await;
            match resp {
                Ok(r) => {
                    node.membership.heard_from(to);
                    Ok(r.into_inner().payload)
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    Err(RaftTransportError::Unreachable {
                        to,
                        reason: s.message().to_string(),
                    })
                }
                Err(s) => Err(RaftTransportError::Network {
                    to,
                    reason: s.message().to_string(),
                }),
            }
        })
    }
}
