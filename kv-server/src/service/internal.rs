//! The node-to-node `Internal` service: handshake (cluster identity and liveness), Raft
//! messages (one by one and in batches), AP replica calls and anti-entropy, fault injection.

use crate::cp::batch::MAX_BATCH_MESSAGES;
use crate::cp::CpError;
use crate::error::{NodeError, NodeResult};
use crate::node::Node;
use crate::transport::{record_from_pb, record_to_pb};
use crate::types::{Mode, NodeId};
use kv_proto::internal as ipb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The node-to-node API.
pub struct InternalService {
    node: Arc<Node>,
}

impl InternalService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn status(&self, e: NodeError) -> Status {
        e.into_status(&self.node.me.name)
    }

    /// Refuses a request whose claimed sender `from` is not the node its certificate names.
    fn check_sender<T>(&self, req: &Request<T>, from: NodeId) -> Result<(), Status> {
        let claimed = self.node.member(from).map(|m| m.name.as_str());
        crate::security::check_sender(req, claimed)
    }

    /// Parses the keyspace id an internal AP request carries, checking it is an AP keyspace.
    fn keyspace_id(&self, s: &str) -> NodeResult<u32> {
        let id: u32 = s
            .parse()
            .map_err(|_| NodeError::InvalidArgument(format!("malformed keyspace id {s:?}")))?;
        let ks = self.node.keyspace_by_id(id)?;
        if ks.mode != Mode::Ap {
            return Err(NodeError::InvalidArgument(format!(
                "keyspace {} is not an AP keyspace",
                ks.name
            )));
        }
        Ok(id)
    }

    /// Refuses a batch of more than [`MAX_BATCH_MESSAGES`] items, before any is handled.
    fn check_batch_len(&self, batch: &str, items: &str, len: usize) -> Result<(), Status> {
        if len > MAX_BATCH_MESSAGES {
            return Err(self.status(NodeError::InvalidArgument(format!(
                "{batch} holds at most {MAX_BATCH_MESSAGES} {items}; this one has {len}"
            ))));
        }
        Ok(())
    }

    /// Counts a call from `from` as a sign of life, unless its traffic is dropped by a fault.
    fn heard_from(&self, from: NodeId) {
        if !self.node.links.faults().drops(from) {
            self.node.links.membership().heard_from(from);
        }
    }

    /// Stores one replica write from coordinator `from` (alone or from a batch) durably.
    async fn apply_ap_write(&self, from: NodeId, req: ipb::ApWriteRequest) -> NodeResult<()> {
        if req.from != from {
            return Err(NodeError::InvalidArgument(format!(
                "a write of a batch from node {from} claims to come from node {}",
                req.from
            )));
        }
        let ks = self.keyspace_id(&req.keyspace)?;
        let record = req
            .record
            .ok_or_else(|| NodeError::InvalidArgument("ApWrite without a record".into()))?;
        self.node.validate_key(&record.key)?;
        let hint_for = (req.hint_for != 0).then_some(req.hint_for);
        self.node
            .ap
            .apply_replica(ks, record_from_pb(record), hint_for)
            .await?;
        Ok(())
    }

    fn check_partition(&self, p: u32) -> NodeResult<()> {
        if p >= self.node.ring.partition_count() {
            return Err(NodeError::InvalidArgument(format!(
                "partition {p} does not exist (the ring has {})",
                self.node.ring.partition_count()
            )));
        }
        Ok(())
    }

    fn unimplemented(&self, what: &str) -> Status {
        NodeError::FailedPrecondition(format!("{what} is not available in this build"))
            .into_status(&self.node.me.name)
    }
}

/// The node error of a Raft message that could not be handled.
fn raft_error(e: CpError) -> NodeError {
    match e {
        // A payload that does not decode is bad input from the network, not a bug.
        CpError::UnknownRaftGroup { .. }
        | CpError::UnknownKind(_)
        | CpError::Codec(crate::cp::codec::CodecError::Decode { .. }) => {
            NodeError::InvalidArgument(e.to_string())
        }
        other => NodeError::Internal(other.to_string()),
    }
}

/// Compares a peer's handshake with this node's config; `Err` says what differs.
pub fn check_handshake(node: &Node, req: &ipb::HandshakeRequest) -> Result<(), String> {
    if req.cluster_name != node.config.cluster_name {
        return Err(format!(
            "cluster name differs: node {} is in cluster {:?}, the caller (node id {}) in {:?}",
            node.me.name, node.config.cluster_name, req.node_id, req.cluster_name
        ));
    }
    let mine = node.config.peer_strings();
    if req.peers != mine {
        return Err(format!(
            "peer list differs: node {} has [{}], the caller (node id {}) has [{}]; every node must be started with the same --peers",
            node.me.name,
            mine.join(","),
            req.node_id,
            req.peers.join(",")
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl ipb::internal_server::Internal for InternalService {
    async fn handshake(
        &self,
        req: Request<ipb::HandshakeRequest>,
    ) -> Result<Response<ipb::HandshakeResponse>, Status> {
        self.check_sender(&req, req.get_ref().node_id)?;
        let req = req.into_inner();
        if self.node.links.faults().drops(req.node_id) {
            // Fault injection cuts the link both ways as far as liveness goes: a peer we drop
            // traffic to is not heard from either.
            return Err(self.status(NodeError::Unavailable(format!(
                "traffic with node {} is dropped by fault injection",
                self.node.describe(req.node_id)
            ))));
        }
        if let Err(msg) = check_handshake(&self.node, &req) {
            tracing::warn!(peer = req.node_id, %msg, "refused handshake");
            return Err(NodeError::FailedPrecondition(msg).into_status(&self.node.me.name));
        }
        self.node.links.membership().heard_from(req.node_id);
        Ok(Response::new(ipb::HandshakeResponse {
            cluster_name: self.node.config.cluster_name.clone(),
            node_id: self.node.me.id,
        }))
    }

    async fn raft(
        &self,
        req: Request<ipb::RaftRequest>,
    ) -> Result<Response<ipb::RaftResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let cp = self.node.cp()?;
            cp.handle_raft(req.group, req.kind, &req.payload)
                .await
                .map_err(raft_error)
        }
        .await;
        result
            .map(|payload| Response::new(ipb::RaftResponse { payload }))
            .map_err(|e| self.status(e))
    }

    async fn raft_batch(
        &self,
        req: Request<ipb::RaftBatchRequest>,
    ) -> Result<Response<ipb::RaftBatchResponse>, Status> {
        let messages = req.into_inner().messages;
        self.check_batch_len("a Raft batch", "messages", messages.len())?;
        let cp = self.node.cp().map_err(|e| self.status(e))?;
        // Groups are independent: their messages are handled concurrently, so their log
        // appends meet in one group commit, and the answer waits for the slowest.
        let results = futures::future::join_all(messages.iter().map(|m| async move {
            let result = match cp.handle_raft(m.group, m.kind, &m.payload).await {
                Ok(payload) => ipb::raft_batch_result::Result::Payload(payload),
                Err(e) => ipb::raft_batch_result::Result::Error(raft_error(e).to_string()),
            };
            ipb::RaftBatchResult {
                result: Some(result),
            }
        }))
        .await;
        Ok(Response::new(ipb::RaftBatchResponse { results }))
    }

    async fn ap_write(
        &self,
        req: Request<ipb::ApWriteRequest>,
    ) -> Result<Response<ipb::ApWriteResponse>, Status> {
        self.check_sender(&req, req.get_ref().from)?;
        let req = req.into_inner();
        let from = req.from;
        self.heard_from(from);
        self.apply_ap_write(from, req)
            .await
            .map(|()| Response::new(ipb::ApWriteResponse {}))
            .map_err(|e| self.status(e))
    }

    async fn ap_write_batch(
        &self,
        req: Request<ipb::ApWriteBatchRequest>,
    ) -> Result<Response<ipb::ApWriteBatchResponse>, Status> {
        let from = req.get_ref().from;
        self.check_sender(&req, from)?;
        let writes = req.into_inner().writes;
        self.check_batch_len("an AP write batch", "writes", writes.len())?;
        self.heard_from(from);
        // Stored concurrently, so their flush waits meet in one group commit.
        let results = futures::future::join_all(writes.into_iter().map(|w| async move {
            match self.apply_ap_write(from, w).await {
                Ok(()) => ipb::ApWriteResult::default(),
                Err(e) => {
                    let status = self.status(e);
                    ipb::ApWriteResult {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }
                }
            }
        }))
        .await;
        Ok(Response::new(ipb::ApWriteBatchResponse { results }))
    }

    async fn ap_read(
        &self,
        req: Request<ipb::ApReadRequest>,
    ) -> Result<Response<ipb::ApReadResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let ks = self.keyspace_id(&req.keyspace)?;
            let record = self.node.ap.read_replica(ks, &req.key)?;
            Ok(ipb::ApReadResponse {
                record: record.as_ref().map(record_to_pb),
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn merkle_tree(
        &self,
        req: Request<ipb::MerkleTreeRequest>,
    ) -> Result<Response<ipb::MerkleTreeResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let ks = self.keyspace_id(&req.keyspace)?;
            self.check_partition(req.partition)?;
            let leaves = self.node.ap.merkle_leaves(ks, req.partition)?;
            Ok(ipb::MerkleTreeResponse { leaves })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn merkle_range(
        &self,
        req: Request<ipb::MerkleRangeRequest>,
    ) -> Result<Response<ipb::MerkleRangeResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let ks = self.keyspace_id(&req.keyspace)?;
            self.check_partition(req.partition)?;
            // Keys are never empty, so an empty `after` means "from the first key".
            let after = Some(req.after.as_slice()).filter(|k| !k.is_empty());
            let page = self
                .node
                .ap
                .merkle_range(ks, req.partition, &req.leaves, after)?;
            Ok(ipb::MerkleRangeResponse {
                records: page.records.iter().map(record_to_pb).collect(),
                resume_after: page.resume_after.unwrap_or_default(),
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn gossip(
        &self,
        _req: Request<ipb::GossipPacket>,
    ) -> Result<Response<ipb::GossipAck>, Status> {
        Err(self.unimplemented("gossip"))
    }

    async fn chaos(
        &self,
        req: Request<ipb::ChaosRequest>,
    ) -> Result<Response<ipb::ChaosResponse>, Status> {
        if !self.node.config.chaos {
            return Err(self.status(NodeError::FailedPrecondition(
                "fault injection is off on this node; start it with --chaos to allow it".into(),
            )));
        }
        let req = req.into_inner();
        for id in req.drop_to.iter().chain(req.delay_ms.keys()) {
            if self.node.member(*id).is_none() {
                return Err(self.status(NodeError::InvalidArgument(format!(
                    "node id {id} is not a member of the cluster"
                ))));
            }
        }
        if let Some(ms) = req
            .delay_ms
            .values()
            .find(|ms| **ms > crate::faults::MAX_DELAY_MS)
        {
            return Err(self.status(NodeError::InvalidArgument(format!(
                "delay {ms} ms is over the limit of {} ms",
                crate::faults::MAX_DELAY_MS
            ))));
        }
        tracing::warn!(drop_to = ?req.drop_to, delay_ms = ?req.delay_ms, clock_skew_ms = req.clock_skew_ms, "fault injection");
        self.node.links.faults().set(
            req.drop_to.into_iter().collect(),
            req.delay_ms.into_iter().collect(),
        );
        self.node.clock.set_skew_ms(req.clock_skew_ms);
        Ok(Response::new(ipb::ChaosResponse {}))
    }

    async fn cp_record(
        &self,
        req: Request<ipb::CpRecordRequest>,
    ) -> Result<Response<ipb::CpRecordResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let cp = self.node.cp()?;
            // A peer's wait is bounded here whatever it asks: it never holds a handler longer.
            let wait = std::time::Duration::from_millis(req.wait_ms.min(MAX_CP_RECORD_WAIT_MS));
            let deadline = tokio::time::Instant::now() + wait;
            cp.record_for_repair(req.group, &req.key, req.min_applied, deadline)
                .await
                .map_err(|e| match e {
                    CpError::UnknownRaftGroup { .. } => NodeError::InvalidArgument(e.to_string()),
                    CpError::Storage(s) => s.into(),
                    other => NodeError::Unavailable(other.to_string()),
                })
        }
        .await;
        result
            .map(|at| {
                let (found, (value, revision)) = match at.record {
                    Some(r) => (true, r),
                    None => (false, (Vec::new(), 0)),
                };
                Response::new(ipb::CpRecordResponse {
                    found,
                    value,
                    revision,
                    applied: at.applied,
                })
            })
            .map_err(|e| self.status(e))
    }
}

/// Longest a peer's `CpRecord` call waits for this node to apply far enough.
pub const MAX_CP_RECORD_WAIT_MS: u64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::NodeConfig;
    use crate::cp::codec;
    use crate::cp::{CpConfig, RaftKind};
    use crate::storage::memory::MemoryEngine;
    use crate::types::Member;
    use ipb::internal_server::Internal;
    use ipb::raft_batch_result::Result as Item;
    use kv_core::net::TcpDialer;
    use openraft::raft::{VoteRequest, VoteResponse};
    use openraft::Vote;

    /// A one-node cluster's internal service; its CP engine is started when `cp` is set.
    async fn service(cp: bool) -> InternalService {
        let peers = vec![Member {
            id: 1,
            name: "n1".into(),
            addr: "127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:1".into(),
        }];
        let node = Node::new(
            NodeConfig::new("n1", "c", peers),
            Arc::new(MemoryEngine::new()),
            Arc::new(TcpDialer),
            Arc::new(SystemClock::default()),
        )
        .unwrap();
        if cp {
            node.start_cp(CpConfig::default()).await.unwrap();
        }
        InternalService::new(node)
    }

    fn message(group: u64, kind: u32, payload: Vec<u8>) -> ipb::RaftRequest {
        ipb::RaftRequest {
            group,
            kind,
            payload,
        }
    }

    #[tokio::test]
    async fn a_batch_answers_each_message_and_a_bad_one_fails_alone() {
        let s = service(true).await;
        let group = s.node.cp().unwrap().group_ids()[0];
        let vote = VoteRequest::<NodeId> {
            vote: Vote::new(0, 2),
            last_log_id: None,
        };
        let vote = codec::encode("vote", &vote).unwrap();
        let batch = ipb::RaftBatchRequest {
            messages: vec![
                message(group, RaftKind::Vote.code(), vote.clone()),
                message(12345, RaftKind::Vote.code(), vote.clone()),
                message(group, 9, vote),
                message(group, RaftKind::Append.code(), b"not bincode".to_vec()),
            ],
        };
        let results = s
            .raft_batch(Request::new(batch))
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), 4);
        let items: Vec<_> = results.into_iter().map(|r| r.result.unwrap()).collect();
        match &items[0] {
            Item::Payload(p) => {
                let answer: Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>> =
                    codec::decode("vote response", p).unwrap();
                assert!(
                    !answer.unwrap().vote_granted,
                    "a stale candidate is refused"
                );
            }
            other => panic!("expected an answer, got {other:?}"),
        }
        for (i, expected) in [(1, "12345"), (2, "9"), (3, "decod")] {
            match &items[i] {
                Item::Error(e) => assert!(e.contains(expected), "{i}: {e}"),
                other => panic!("{i}: expected an error, got {other:?}"),
            }
        }
        s.node.cp().unwrap().shutdown().await;
    }

    #[tokio::test]
    async fn an_oversized_batch_or_a_node_without_raft_is_refused_whole() {
        let s = service(false).await;
        let refused = s
            .raft_batch(Request::new(ipb::RaftBatchRequest {
                messages: vec![message(1, 1, vec![])],
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("starting"), "{refused:?}");

        let refused = s
            .raft_batch(Request::new(ipb::RaftBatchRequest {
                messages: vec![message(1, 1, vec![]); MAX_BATCH_MESSAGES + 1],
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            refused.message(),
            format!(
                "[n1] a Raft batch holds at most {MAX_BATCH_MESSAGES} messages; this one has 257"
            )
        );
    }

    fn ap_write(keyspace: &str, key: &str, hint_for: u64, from: u64) -> ipb::ApWriteRequest {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        ipb::ApWriteRequest {
            keyspace: keyspace.into(),
            record: Some(ipb::Record {
                key: key.as_bytes().to_vec(),
                value: format!("value of {key}").into_bytes(),
                tombstone: false,
                hlc: Some(kv_proto::v1::Hlc {
                    physical_ms: now_ms,
                    logical: 0,
                    node_id: 1,
                }),
            }),
            hint_for,
            from,
        }
    }

    #[tokio::test]
    async fn an_ap_write_batch_stores_each_write_and_a_bad_one_fails_alone() {
        let s = service(false).await;
        let batch = ipb::ApWriteBatchRequest {
            writes: vec![
                ap_write("2", "a", 0, 1),
                ap_write("1", "b", 0, 1),  // the CP keyspace
                ap_write("2", "c", 77, 1), // a hint for a node that is not a member
                ap_write("2", "d", 0, 5),  // claims another sender than the batch
                ap_write("2", "e", 0, 1),
            ],
            from: 1,
        };
        let results = s
            .ap_write_batch(Request::new(batch))
            .await
            .unwrap()
            .into_inner()
            .results;
        let codes: Vec<_> = results.iter().map(|r| tonic::Code::from(r.code)).collect();
        use tonic::Code::{InvalidArgument, Ok as Stored};
        assert_eq!(
            codes[..],
            [Stored, InvalidArgument, codes[2], InvalidArgument, Stored],
            "{results:?}"
        );
        assert_ne!(codes[2], Stored, "{results:?}");
        assert!(
            results[1].message.contains("not an AP keyspace"),
            "{results:?}"
        );
        assert!(results[2].message.contains("77"), "{results:?}");
        assert!(results[3].message.contains("node 5"), "{results:?}");
        let stored = |key: &str| s.node.ap.read_replica(2, key.as_bytes()).unwrap();
        assert_eq!(stored("a").unwrap().value, Some(b"value of a".to_vec()));
        assert_eq!(stored("e").unwrap().value, Some(b"value of e".to_vec()));
        assert!(stored("d").is_none(), "a refused write changes nothing");

        let refused = s
            .ap_write_batch(Request::new(ipb::ApWriteBatchRequest {
                writes: vec![ap_write("2", "x", 0, 1); MAX_BATCH_MESSAGES + 1],
                from: 1,
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            refused.message(),
            format!(
                "[n1] an AP write batch holds at most {MAX_BATCH_MESSAGES} writes; this one has 257"
            )
        );
        assert!(stored("x").is_none(), "a refused batch changes nothing");
    }
}
