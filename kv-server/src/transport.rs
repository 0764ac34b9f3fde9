//! gRPC adapters for the engines' transport seams: `RaftTransport` (CP) and `ApTransport` (AP)
//! over the internal service, every message leaving through `PeerLinks::open` (so the
//! fault-injection filter applies to all of them, a batch being one message to it).
//! **Architecture invariant:** the engines never see gRPC; only this file and `service/`
//! convert between engine types and protobuf. AppendEntries (heartbeats included) of every
//! group go to a peer through its `RaftBatcher` as `Internal.RaftBatch` calls, and AP replica
//! writes (hints included) through its AP write batcher as `Internal.ApWriteBatch` calls; votes
//! and snapshot chunks keep their own `Internal.Raft` call (rare, and a snapshot chunk is as
//! large as a whole batch). A peer that answers a batch call with UNIMPLEMENTED (a build from
//! before it) gets single calls for `batch::BATCH_RETRY_AFTER`, so a rolling upgrade keeps replicating.

use crate::ap::{ApRecord, ApTransport, Liveness, RangePage, TransportError as ApTransportError};
use crate::batch::{BatchError, BatchSend, Batcher, NoBatch};
use crate::cp::batch::{BatchItem, ItemResult, RaftBatcher};
use crate::cp::{RaftKind, RaftTransport, TransportError as RaftTransportError};
use crate::metrics::metrics;
use crate::peers::PeerLinks;
use crate::types::{Hlc, NodeId};
use futures::future::BoxFuture;
use kv_proto::internal as ipb;
use kv_proto::internal::internal_client::InternalClient;
use kv_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Deadline of one `Internal.RaftBatch` call unless set with
/// `GrpcTransport::with_raft_rpc_timeout` (the CP engine's default `rpc_timeout_ms`).
pub const DEFAULT_RAFT_BATCH_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline of one `Internal.ApWriteBatch` call: a bound on a hung peer's hold on a call slot.
/// Coordinators give each write their own (shorter) write timeout, and a call whose callers
/// have all given up is cancelled at once.
pub const AP_WRITE_BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes one AP replica write adds to a batch beside its key and value (keyspace id, clock,
/// hint owner, sender, tags and lengths).
const AP_WRITE_OVERHEAD_BYTES: usize = 96;

/// One AP replica write of a batch.
pub struct ApWriteItem(ipb::ApWriteRequest);

impl crate::batch::BatchItem for ApWriteItem {
    fn payload_bytes(&self) -> usize {
        let r = self.0.record.as_ref();
        r.map_or(0, |r| r.key.len() + r.value.len()) + AP_WRITE_OVERHEAD_BYTES
    }
}

impl BatchError for ApTransportError {
    fn unreachable(node: NodeId, reason: String) -> Self {
        ApTransportError::Unreachable { node, reason }
    }
    fn network(node: NodeId, message: String) -> Self {
        ApTransportError::Remote { node, message }
    }
}

/// The batching sender of AP replica writes to one peer.
type ApWriteBatcher = Batcher<ApWriteItem, (), ApTransportError>;

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
    /// One batcher per peer, for AppendEntries.
    raft_batchers: Arc<BTreeMap<NodeId, Arc<RaftBatcher>>>,
    /// One batcher per peer, for AP replica writes.
    ap_batchers: Arc<BTreeMap<NodeId, Arc<ApWriteBatcher>>>,
}

impl GrpcTransport {
    /// A transport over `links`.
    pub fn new(links: Arc<PeerLinks>) -> Self {
        Self::with_raft_rpc_timeout(links, DEFAULT_RAFT_BATCH_TIMEOUT)
    }

    /// A transport over `links` whose Raft batch calls are given up after `timeout` (the CP
    /// engine's `rpc_timeout_ms`, so a batch waits no longer than one message would).
    pub fn with_raft_rpc_timeout(links: Arc<PeerLinks>, timeout: Duration) -> Self {
        // A batch is never larger than one AppendEntries may be, so batching never makes a
        // message the peer refuses (`kv_core::limits`), nor one slower than openraft allows.
        let budget = kv_core::limits::max_raft_append_bytes(links.max_value_bytes());
        let calls: Arc<dyn BatchSend<BatchItem, Vec<u8>, RaftTransportError>> =
            Arc::new(RaftBatchCalls {
                links: links.clone(),
                no_batch: Arc::default(),
            });
        let peers: Vec<NodeId> = links
            .members()
            .filter(|m| m.id != links.me())
            .map(|m| m.id)
            .collect();
        let raft_batchers = peers
            .iter()
            .map(|&id| {
                let batcher = RaftBatcher::new(id, "Raft messages", calls.clone(), budget, timeout);
                (id, Arc::new(batcher))
            })
            .collect();
        // A batch of AP writes is never larger than one write may be.
        let ap_budget = kv_core::limits::max_peer_message_bytes(links.max_value_bytes());
        let ap_calls: Arc<dyn BatchSend<ApWriteItem, (), ApTransportError>> =
            Arc::new(ApWriteBatchCalls {
                links: links.clone(),
                no_batch: Arc::default(),
            });
        let ap_batchers = peers
            .iter()
            .map(|&id| {
                let batcher = Batcher::new(
                    id,
                    "AP replica writes",
                    ap_calls.clone(),
                    ap_budget,
                    AP_WRITE_BATCH_TIMEOUT,
                );
                (id, Arc::new(batcher))
            })
            .collect();
        Self {
            links,
            raft_batchers: Arc::new(raft_batchers),
            ap_batchers: Arc::new(ap_batchers),
        }
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
        let request = ipb::ApWriteRequest {
            keyspace: keyspace_id.to_string(),
            record: Some(record_to_pb(&record)),
            hint_for: hint_for.unwrap_or(0),
            from: self.links.me(),
        };
        match self.ap_batchers.get(&to) {
            Some(batcher) => batcher.send(ApWriteItem(request)),
            None => Box::pin(async move {
                Err(ApTransportError::Unreachable {
                    node: to,
                    reason: "not a member of this cluster".into(),
                })
            }),
        }
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

/// How a failed Raft call reaches openraft: `Unavailable` from the transport means the peer
/// cannot be reached (back off); anything else means it may have been sent (retry).
fn raft_err(to: NodeId, s: tonic::Status) -> RaftTransportError {
    if s.code() == tonic::Code::Unavailable {
        RaftTransportError::Unreachable {
            to,
            reason: s.message().to_string(),
        }
    } else {
        RaftTransportError::Network {
            to,
            reason: s.message().to_string(),
        }
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
        if kind == RaftKind::Append {
            if let Some(batcher) = self.raft_batchers.get(&to) {
                return batcher.send(BatchItem {
                    group,
                    kind,
                    payload,
                });
            }
        }
        let this = self.clone();
        Box::pin(async move {
            let mut client = this
                .client(to, |reason| RaftTransportError::Unreachable { to, reason })
                .await?;
            metrics().raft_calls.inc();
            metrics().raft_messages_sent.inc();
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
                Err(s) => Err(raft_err(to, s)),
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

/// Sends Raft batches as `Internal.RaftBatch` calls, through the fault filter; to a peer that
/// does not know that call (UNIMPLEMENTED: a build from before it), as single `Raft` calls.
struct RaftBatchCalls {
    links: Arc<PeerLinks>,
    no_batch: Arc<NoBatch>,
}

/// Sends each Raft message of a batch as its own `Internal.Raft` call, concurrently.
async fn raft_singles(
    client: InternalClient<Channel>,
    to: NodeId,
    items: Vec<BatchItem>,
) -> Vec<ItemResult> {
    metrics().raft_calls.inc_by(items.len() as u64);
    let calls = items.into_iter().map(|i| {
        let mut client = client.clone();
        async move {
            client
                .raft(ipb::RaftRequest {
                    group: i.group,
                    kind: i.kind.code(),
                    payload: i.payload,
                })
                .await
                .map(|r| r.into_inner().payload)
                .map_err(|s| raft_err(to, s))
        }
    });
    futures::future::join_all(calls).await
}

impl BatchSend<BatchItem, Vec<u8>, RaftTransportError> for RaftBatchCalls {
    fn send_batch(
        &self,
        to: NodeId,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'static, Result<Vec<ItemResult>, RaftTransportError>> {
        let (links, no_batch) = (self.links.clone(), self.no_batch.clone());
        Box::pin(async move {
            let channel = links
                .open(to)
                .await
                .map_err(|e| RaftTransportError::Unreachable {
                    to,
                    reason: e.to_string(),
                })?;
            let mut client = links.internal_client_on(channel);
            metrics().raft_messages_sent.inc_by(items.len() as u64);
            if no_batch.refuses(to) {
                let results = raft_singles(client, to, items).await;
                if results.iter().any(Result::is_ok) {
                    links.membership().heard_from(to);
                }
                return Ok(results);
            }
            metrics().raft_calls.inc();
            let messages = items
                .into_iter()
                .map(|i| ipb::RaftRequest {
                    group: i.group,
                    kind: i.kind.code(),
                    payload: i.payload,
                })
                .collect();
            let resp = match client.raft_batch(ipb::RaftBatchRequest { messages }).await {
                Ok(resp) => resp,
                // A build from before `RaftBatch`: openraft resends these, as single calls.
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    no_batch.refused(to, "RaftBatch");
                    return Err(RaftTransportError::Network {
                        to,
                        reason: "the peer does not know RaftBatch (an older build); its next \
                                 messages go as single calls"
                            .into(),
                    });
                }
                Err(s) => return Err(raft_err(to, s)),
            };
            links.membership().heard_from(to);
            Ok(resp
                .into_inner()
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(ipb::raft_batch_result::Result::Payload(p)) => Ok(p),
                    Some(ipb::raft_batch_result::Result::Error(reason)) => {
                        Err(RaftTransportError::Network { to, reason })
                    }
                    None => Err(RaftTransportError::Network {
                        to,
                        reason: "the peer answered a batched Raft message with nothing".into(),
                    }),
                })
                .collect())
        })
    }
}

/// Sends AP replica writes as `Internal.ApWriteBatch` calls, through the fault filter; to a
/// peer that does not know that call (UNIMPLEMENTED: a build from before it), as single
/// `ApWrite` calls.
struct ApWriteBatchCalls {
    links: Arc<PeerLinks>,
    no_batch: Arc<NoBatch>,
}

/// Sends each AP replica write of a batch as its own `Internal.ApWrite` call, concurrently.
async fn ap_singles(
    client: InternalClient<Channel>,
    to: NodeId,
    items: Vec<ApWriteItem>,
) -> Vec<Result<(), ApTransportError>> {
    metrics().ap_write_calls.inc_by(items.len() as u64);
    let calls = items.into_iter().map(|i| {
        let mut client = client.clone();
        async move {
            client
                .ap_write(i.0)
                .await
                .map(drop)
                .map_err(|s| ap_err(to, s))
        }
    });
    futures::future::join_all(calls).await
}

impl BatchSend<ApWriteItem, (), ApTransportError> for ApWriteBatchCalls {
    fn send_batch(
        &self,
        to: NodeId,
        items: Vec<ApWriteItem>,
    ) -> BoxFuture<'static, Result<Vec<Result<(), ApTransportError>>, ApTransportError>> {
        let (links, no_batch) = (self.links.clone(), self.no_batch.clone());
        Box::pin(async move {
            let channel = links
                .open(to)
                .await
                .map_err(|e| ApTransportError::Unreachable {
                    node: to,
                    reason: e.to_string(),
                })?;
            let mut client = links.internal_client_on(channel);
            metrics().ap_writes_sent.inc_by(items.len() as u64);
            if no_batch.refuses(to) {
                let results = ap_singles(client, to, items).await;
                if results.iter().any(Result::is_ok) {
                    links.membership().heard_from(to);
                }
                return Ok(results);
            }
            metrics().ap_write_calls.inc();
            let writes = items.into_iter().map(|i| i.0).collect();
            let resp = match client
                .ap_write_batch(ipb::ApWriteBatchRequest {
                    writes,
                    from: links.me(),
                })
                .await
            {
                Ok(resp) => resp,
                // A build from before `ApWriteBatch`: these writes fail (the coordinator falls
                // back to hints, which replay later), the next ones go as single calls.
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    no_batch.refused(to, "ApWriteBatch");
                    return Err(ApTransportError::Remote {
                        node: to,
                        message: "the peer does not know ApWriteBatch (an older build); its \
                                  next writes go as single calls"
                            .into(),
                    });
                }
                Err(s) => return Err(ap_err(to, s)),
            };
            links.membership().heard_from(to);
            Ok(resp
                .into_inner()
                .results
                .into_iter()
                .map(|r| match tonic::Code::from(r.code) {
                    tonic::Code::Ok => Ok(()),
                    // The replica's record failed its checksum: no usable copy there.
                    tonic::Code::DataLoss => Err(ApTransportError::Corrupt {
                        node: to,
                        message: r.message,
                    }),
                    _ => Err(ApTransportError::Remote {
                        node: to,
                        message: r.message,
                    }),
                })
                .collect())
        })
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
