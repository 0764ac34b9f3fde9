//! gRPC adapters for the engines' transport seams: `RaftTransport` (CP) and `ApTransport` (AP)
//! over the internal service, every message leaving through `PeerLinks::open` (so the
//! fault-injection filter applies to all of them). **Architecture invariant:** the engines never see gRPC; only this file and
//! `service/` convert between engine types and protobuf.

use crate::ap::{ApRecord, ApTransport, Liveness, RangePage, TransportError as ApTransportError};
use crate::cp::{RaftKind, RaftTransport, TransportError as RaftTransportError};
use crate::peers::PeerLinks;
use crate::types::{Hlc, NodeId};
use futures::future::BoxFuture;
use kv_proto::internal as ipb;
use kv_proto::internal::internal_client::InternalClient;
use kv_proto::v1 as pb;
use std::sync::Arc;
use tonic::transport::Channel;

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

/// Both engines' transports (and the AP engine's liveness view) over the peer links. Holds the
/// links, not the node: it is made before the node and the node never needs to be reached from
/// here.
#[derive(Clone)]
pub struct GrpcTransport {
    links: Arc<PeerLinks>,
}

impl GrpcTransport {
    /// A transport over `links`.
    pub fn new(links: Arc<PeerLinks>) -> Self {
        Self { links }
    }

    /// An internal-API client to `to`, after the fault filter; a refusal becomes `unreachable`.
    async fn client<E>(
        &self,
        to: NodeId,
        unreachable: impl FnOnce(String) -> E,
    ) -> Result<InternalClient<Channel>, E> {
        self.links
            .internal_client(to)
            .await
            .map_err(|e| unreachable(e.to_string()))
    }
}

impl Liveness for GrpcTransport {
    fn is_alive(&self, node: NodeId) -> bool {
        self.links.membership().is_alive(node)
    }
}

fn ap_unreachable(to: NodeId) -> impl FnOnce(String) -> ApTransportError {
    move |reason| ApTransportError::Unreachable { node: to, reason }
}

fn ap_err(to: NodeId, s: tonic::Status) -> ApTransportError {
    if s.code() == tonic::Code::DataLoss {
        // The replica's record failed its checksum (`NodeError::DataLoss`): no usable copy.
        return ApTransportError::Corrupt {
            node: to,
            message: s.message().to_string(),
        };
    }
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
            let mut client = this.client(to, ap_unreachable(to)).await?;
            client
                .ap_write(ipb::ApWriteRequest {
                    keyspace: keyspace_id.to_string(),
                    record: Some(record_to_pb(&record)),
                    hint_for: hint_for.unwrap_or(0),
                    from: this.links.me(),
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            this.links.membership().heard_from(to);
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
            let mut client = this.client(to, ap_unreachable(to)).await?;
            let resp = client
                .ap_read(ipb::ApReadRequest {
                    keyspace: keyspace_id.to_string(),
                    key,
                })
                .await
                .map_err(|s| ap_err(to, s))?;
            this.links.membership().heard_from(to);
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
            let mut client = this.client(to, ap_unreachable(to)).await?;
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
        after: Option<Vec<u8>>,
    ) -> BoxFuture<'static, Result<RangePage, ApTransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut client = this.client(to, ap_unreachable(to)).await?;
            let resp = client
                .merkle_range(ipb::MerkleRangeRequest {
                    keyspace: keyspace_id.to_string(),
                    partition,
                    leaves,
                    after: after.unwrap_or_default(),
                })
                .await
                .map_err(|s| ap_err(to, s))?
                .into_inner();
            Ok(RangePage {
                records: resp.records.into_iter().map(record_from_pb).collect(),
                resume_after: Some(resp.resume_after).filter(|k| !k.is_empty()),
            })
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
        let this = self.clone();
        Box::pin(async move {
            let mut client = this
                .client(to, |reason| RaftTransportError::Unreachable { to, reason })
                .await?;
            let resp = client
                .raft(ipb::RaftRequest {
                    group,
                    kind: kind.code(),
                    payload,
                })
                .await;
            match resp {
                Ok(r) => {
                    this.links.membership().heard_from(to);
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

impl crate::cp::engine::RecordFetcher for GrpcTransport {
    fn fetch(
        &self,
        to: NodeId,
        group: u64,
        key: Vec<u8>,
        min_applied: u64,
        wait_ms: u64,
    ) -> BoxFuture<'static, Result<crate::cp::state_machine::RecordAt, String>> {
        let this = self.clone();
        Box::pin(async move {
            let mut client = this.client(to, |reason| reason).await?;
            let r = client
                .cp_record(ipb::CpRecordRequest {
                    group,
                    key,
                    min_applied,
                    wait_ms,
                })
                .await
                .map_err(|s| format!("node {to}: {}", s.message()))?
                .into_inner();
            Ok(crate::cp::state_machine::RecordAt {
                record: r.found.then_some((r.value, r.revision)),
                applied: r.applied,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Member;
    use std::collections::{BTreeMap, BTreeSet};

    /// A dialer that can reach nobody: what a transport does before dialing is all there is.
    struct NoRoute;

    impl kv_core::net::Dialer for NoRoute {
        fn channel(&self, addr: &str) -> Result<Channel, String> {
            Err(format!("no route to {addr} in this test"))
        }
    }

    fn transport() -> GrpcTransport {
        let peers: Vec<Member> = (1..=3)
            .map(|i| Member {
                id: i,
                name: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
                peer_addr: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        GrpcTransport::new(Arc::new(PeerLinks::new(1, &peers, Arc::new(NoRoute))))
    }

    fn record() -> ApRecord {
        ApRecord {
            key: b"k".to_vec(),
            hlc: Hlc {
                physical_ms: 1,
                logical: 0,
                node_id: 1,
            },
            value: Some(b"v".to_vec()),
        }
    }

    #[tokio::test]
    async fn a_dropped_link_is_unreachable_for_both_engines_without_dialing() {
        let t = transport();
        t.links.faults().set(BTreeSet::from([2]), BTreeMap::new());
        let dropped = "traffic to n2 (127.0.0.1:7002) is dropped by fault injection".to_string();
        let ap = ApTransport::write(&t, 2, 2, record(), None).await;
        assert!(
            matches!(&ap, Err(ApTransportError::Unreachable { node: 2, reason }) if *reason == dropped),
            "{ap:?}"
        );
        let raft = t.send(2, 7, RaftKind::Vote, vec![1]).await;
        assert_eq!(
            raft,
            Err(RaftTransportError::Unreachable {
                to: 2,
                reason: dropped
            })
        );
        // The other link is not dropped: the message reaches the dialer (which has no route).
        let ap = ApTransport::read(&t, 3, 2, b"k".to_vec()).await;
        assert!(
            matches!(&ap, Err(ApTransportError::Unreachable { node: 3, reason })
                if reason == "node n3: no route to 127.0.0.1:7003 in this test"),
            "{ap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_is_the_links_view() {
        let t = transport();
        t.links.membership().heard_from(2);
        assert!(t.is_alive(2));
        tokio::time::advance(crate::membership::DOWN_AFTER * 2).await;
        assert!(!t.is_alive(2), "silent past DOWN_AFTER");
        assert!(t.is_alive(3), "a peer never heard from is tried");
    }

    #[test]
    fn records_round_trip_through_the_wire_form() {
        let r = record();
        assert_eq!(record_from_pb(record_to_pb(&r)), r);
        let tombstone = ApRecord { value: None, ..r };
        let pb = record_to_pb(&tombstone);
        assert!(pb.tombstone);
        assert_eq!(record_from_pb(pb), tombstone);
    }
}
