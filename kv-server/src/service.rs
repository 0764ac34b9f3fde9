//! The gRPC services: the public `Kv` API and the node-to-node `Internal` API. Thin adapters:
//! they parse, validate, pick the path (serve here or forward to the owner) and convert errors
//! to statuses through `NodeError::into_status`.

use crate::ap::engine::{ApError, Consistency as ApConsistency, RequestOptions as ApOptions};
use crate::error::{NodeError, NodeResult};
use crate::transport::{record_from_pb, record_to_pb};
use crate::node::{Node, FORWARDED_HEADER};
use crate::storage::record::StoredRecord;
use crate::types::{KeyspaceDef, Mode, NodeId, Version};
use kv_proto::internal as ipb;
use kv_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Reads the request deadline from the `grpc-timeout` header (or the node default).
pub fn request_timeout<T>(node: &Node, req: &Request<T>) -> Duration {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(node.config.default_timeout)
}

/// Parses gRPC's timeout format: digits followed by H, M, S, m, u or n.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn version_pb(v: Version) -> pb::Version {
    match v {
        Version::Revision(r) => pb::Version {
            revision: r,
            hlc: None,
        },
        Version::Hlc(h) => pb::Version {
            revision: 0,
            hlc: Some(pb::Hlc {
                physical_ms: h.physical_ms,
                logical: h.logical,
                node_id: h.node_id,
            }),
        },
    }
}

fn keyspace_pb(k: &KeyspaceDef) -> pb::Keyspace {
    pb::Keyspace {
        name: k.name.clone(),
        mode: match k.mode {
            Mode::Cp => pb::Mode::Cp as i32,
            Mode::Ap => pb::Mode::Ap as i32,
        },
        replicas: k.replicas,
        read_replicas: k.read_replicas,
        write_replicas: k.write_replicas,
    }
}

/// The AP engine's options for a request.
fn ap_options(o: &Option<pb::RequestOptions>) -> NodeResult<ApOptions> {
    let Some(o) = o else {
        return Ok(ApOptions::default());
    };
    if o.read_replicas > 0 || o.write_replicas > 0 {
        return Ok(ApOptions {
            consistency: Some(ApConsistency::Explicit {
                r: if o.read_replicas > 0 { o.read_replicas } else { o.write_replicas },
                w: if o.write_replicas > 0 { o.write_replicas } else { o.read_replicas },
            }),
        });
    }
    let consistency = match pb::Consistency::try_from(o.consistency) {
        Ok(pb::Consistency::Default) => None,
        Ok(pb::Consistency::One) => Some(ApConsistency::One),
        Ok(pb::Consistency::Quorum) => Some(ApConsistency::Quorum),
        Ok(pb::Consistency::All) => Some(ApConsistency::All),
        Err(_) => {
            return Err(NodeError::InvalidArgument(format!(
                "unknown consistency level {}; use one, quorum or all",
                o.consistency
            )))
        }
    };
    Ok(ApOptions { consistency })
}

impl From<ApError> for NodeError {
    fn from(e: ApError) -> Self {
        match e {
            ApError::InvalidArgument(m) => NodeError::InvalidArgument(m),
            ApError::Storage(s) => s.into(),
            e @ (ApError::Unavailable { .. } | ApError::HintsFull { .. } | ApError::Transport(_)) => {
                NodeError::Unavailable(e.to_string())
            }
        }
    }
}

/// The public API.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn status(&self, e: NodeError) -> Status {
        e.into_status(&self.node.me.name)
    }

    /// The key's full preference list (replicas first, then fallbacks).
    fn preference(&self, key: &[u8]) -> Vec<NodeId> {
        let p = self.node.ring.partition_for_key(key);
        self.node.ring.preference_list(p).to_vec()
    }

    /// Where a key's request is served: here, or the owner to forward to.
    fn route<T>(&self, req: &Request<T>, key: &[u8]) -> Option<NodeId> {
        if req.metadata().get(FORWARDED_HEADER).is_some() {
            return None;
        }
        let partition = self.node.ring.partition_for_key(key);
        let owner = self.node.ring.owner(partition);
        (owner != self.node.me.id).then_some(owner)
    }

    /// Forwards a request to `owner`, within the remaining deadline.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        owner: NodeId,
        key: &[u8],
        timeout: Duration,
        body: Req,
        call: F,
    ) -> NodeResult<Resp>
    where
        F: FnOnce(
            kv_proto::v1::kv_client::KvClient<tonic::transport::Channel>,
            Request<Req>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let partition = self.node.ring.partition_for_key(key);
        if self.node.membership.state(owner) == kv_proto::v1::NodeState::Down {
            return Err(NodeError::Unavailable(format!(
                "node {}, owner of partition {partition}, is down (no heartbeat for {} ms); retry when it is back",
                self.node.describe(owner),
                crate::membership::DOWN_AFTER.as_millis()
            )));
        }
        let client = self.node.kv_client(owner)?;
        let mut request = Request::new(body);
        request.set_timeout(timeout);
        if let Ok(v) = self.node.me.name.parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        match tokio::time::timeout(timeout, call(client, request)).await {
            Ok(Ok(resp)) => {
                self.node.membership.heard_from(owner);
                Ok(resp.into_inner())
            }
            Ok(Err(status)) if status.metadata().get(kv_client::error::NODE_HEADER).is_some() => {
                // The owner answered with an error of its own: pass it on unchanged.
                Err(NodeError::Remote(status))
            }
            Ok(Err(status)) => Err(NodeError::Unavailable(format!(
                "node {}, owner of partition {partition}, is unreachable: {}; retry later or read from another replica",
                self.node.describe(owner),
                status.message()
            ))),
            Err(_) => Err(NodeError::DeadlineExceeded(format!(
                "node {}, owner of partition {partition}, did not answer within {} ms",
                self.node.describe(owner),
                timeout.as_millis()
            ))),
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let timeout = request_timeout(&self.node, &req);
        let owner = self.route(&req, &req.get_ref().key);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            let ks = self.node.keyspace(&body.keyspace)?;
            if let Some(owner) = owner {
                let key = body.key.clone();
                return self
                    .forward(owner, &key, timeout, body, |mut c, r| async move {
                        c.get(r).await
                    })
                    .await;
            }
            let rec = self.node.local_get(&ks, &body.key)?;
            Ok(match rec {
                Some(StoredRecord {
                    version,
                    value: Some(value),
                }) => pb::GetResponse {
                    found: true,
                    value,
                    version: Some(version_pb(version)),
                    served_by: self.node.me.name.clone(),
                    maybe_stale: false,
                },
                _ => pb::GetResponse {
                    served_by: self.node.me.name.clone(),
                    ..Default::default()
                },
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let timeout = request_timeout(&self.node, &req);
        let owner = self.route(&req, &req.get_ref().key);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            self.node.validate_value(&body.value)?;
            let ks = self.node.keyspace(&body.keyspace)?;
            if ks.mode == Mode::Ap {
                let opts = ap_options(&body.options)?;
                let pref = self.preference(&body.key);
                let hlc = self.node.ap.put(&ks, &pref, &body.key, body.value, opts).await?;
                return Ok(pb::PutResponse {
                    version: Some(version_pb(Version::Hlc(hlc))),
                    served_by: self.node.me.name.clone(),
                });
            }
            if let Some(owner) = owner {
                let key = body.key.clone();
                return self
                    .forward(owner, &key, timeout, body, |mut c, r| async move {
                        c.put(r).await
                    })
                    .await;
            }
            let rev = self.node.local_put(&ks, &body.key, Some(body.value))?;
            Ok(pb::PutResponse {
                version: Some(version_pb(Version::Revision(rev))),
                served_by: self.node.me.name.clone(),
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let timeout = request_timeout(&self.node, &req);
        let owner = self.route(&req, &req.get_ref().key);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            let ks = self.node.keyspace(&body.keyspace)?;
            if let Some(owner) = owner {
                let key = body.key.clone();
                return self
                    .forward(owner, &key, timeout, body, |mut c, r| async move {
                        c.delete(r).await
                    })
                    .await;
            }
            let rev = self.node.local_put(&ks, &body.key, None)?;
            Ok(pb::DeleteResponse {
                version: Some(version_pb(Version::Revision(rev))),
                served_by: self.node.me.name.clone(),
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let timeout = request_timeout(&self.node, &req);
        let owner = self.route(&req, &req.get_ref().key);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            self.node.validate_value(&body.new_value)?;
            let ks = self.node.keyspace(&body.keyspace)?;
            if ks.mode == Mode::Ap {
                return Err(NodeError::FailedPrecondition(format!(
                    "compare-and-swap is not supported on AP keyspace {:?}: last-write-wins replicas cannot make it atomic; use a CP keyspace",
                    ks.name
                )));
            }
            let Some(expected) = body.expected.clone() else {
                return Err(NodeError::InvalidArgument(
                    "compare-and-swap needs an expectation: expected_version, expected_value or expect_absent".into(),
                ));
            };
            if let Some(owner) = owner {
                let key = body.key.clone();
                return self
                    .forward(owner, &key, timeout, body, |mut c, r| async move {
                        c.compare_and_swap(r).await
                    })
                    .await;
            }
            let current = self
                .node
                .local_get(&ks, &body.key)?
                .filter(|r| r.value.is_some());
            use pb::compare_and_swap_request::Expected as E;
            let matches = match (&expected, &current) {
                (E::ExpectAbsent(_), None) => true,
                (E::ExpectedVersion(v), Some(r)) => r.version == Version::Revision(*v),
                (E::ExpectedValue(v), Some(r)) => r.value.as_ref() == Some(v),
                _ => false,
            };
            if matches {
                let rev = self.node.local_put(&ks, &body.key, Some(body.new_value))?;
                Ok(pb::CompareAndSwapResponse {
                    succeeded: true,
                    version: Some(version_pb(Version::Revision(rev))),
                    served_by: self.node.me.name.clone(),
                    ..Default::default()
                })
            } else {
                Ok(pb::CompareAndSwapResponse {
                    succeeded: false,
                    version: current.as_ref().map(|r| version_pb(r.version)),
                    found: current.is_some(),
                    current_value: current.and_then(|r| r.value).unwrap_or_default(),
                    served_by: self.node.me.name.clone(),
                })
            }
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let node = &self.node;
        let hints = node.ap.hint_counts();
        let nodes = node
            .config
            .peers
            .iter()
            .map(|m| pb::NodeStatus {
                id: m.id,
                name: m.name.clone(),
                address: m.addr.clone(),
                state: node.membership.state(m.id) as i32,
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
        Ok(Response::new(pb::ClusterStatusResponse {
            cluster_name: node.config.cluster_name.clone(),
            node_id: node.me.id,
            node_name: node.me.name.clone(),
            nodes,
            keyspaces,
            leader_of: vec![],
        }))
    }

    async fn ring(
        &self,
        _req: Request<pb::RingRequest>,
    ) -> Result<Response<pb::RingResponse>, Status> {
        let ring = &self.node.ring;
        Ok(Response::new(pb::RingResponse {
            cluster_name: self.node.config.cluster_name.clone(),
            partition_count: ring.partition_count(),
            tokens_per_node: ring.tokens_per_node(),
            members: self
                .node
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
        }))
    }

    async fn create_keyspace(
        &self,
        _req: Request<pb::CreateKeyspaceRequest>,
    ) -> Result<Response<pb::CreateKeyspaceResponse>, Status> {
        Err(self.status(NodeError::FailedPrecondition(
            "creating keyspaces needs the metadata Raft group, which this build does not have yet; use the built-in keyspaces `cp` and `ap`".into(),
        )))
    }

    async fn list_keyspaces(
        &self,
        _req: Request<pb::ListKeyspacesRequest>,
    ) -> Result<Response<pb::ListKeyspacesResponse>, Status> {
        let keyspaces = self
            .node
            .keyspaces
            .read()
            .expect("keyspace lock")
            .values()
            .map(keyspace_pb)
            .collect();
        Ok(Response::new(pb::ListKeyspacesResponse { keyspaces }))
    }
}

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
        let req = req.into_inner();
        if let Err(msg) = check_handshake(&self.node, &req) {
            tracing::warn!(peer = req.node_id, %msg, "refused handshake");
            return Err(NodeError::FailedPrecondition(msg).into_status(&self.node.me.name));
        }
        self.node.membership.heard_from(req.node_id);
        Ok(Response::new(ipb::HandshakeResponse {
            cluster_name: self.node.config.cluster_name.clone(),
            node_id: self.node.me.id,
        }))
    }

    async fn raft(
        &self,
        _req: Request<ipb::RaftRequest>,
    ) -> Result<Response<ipb::RaftResponse>, Status> {
        Err(self.unimplemented("raft"))
    }

    async fn ap_write(
        &self,
        req: Request<ipb::ApWriteRequest>,
    ) -> Result<Response<ipb::ApWriteResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            let ks = self.keyspace_id(&req.keyspace)?;
            let record = req
                .record
                .ok_or_else(|| NodeError::InvalidArgument("ApWrite without a record".into()))?;
            self.node.validate_key(&record.key)?;
            let hint_for = (req.hint_for != 0).then_some(req.hint_for);
            self.node.membership.heard_from(req.from);
            self.node.ap.apply_replica(ks, record_from_pb(record), hint_for)?;
            Ok(ipb::ApWriteResponse {})
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
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
            let records = self.node.ap.merkle_range(ks, req.partition, &req.leaves)?;
            Ok(ipb::MerkleRangeResponse {
                records: records.iter().map(record_to_pb).collect(),
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
        self.node.faults.set(
            req.drop_to.into_iter().collect(),
            req.delay_ms.into_iter().collect(),
        );
        self.node.clock.set_skew_ms(req.clock_skew_ms);
        Ok(Response::new(ipb::ChaosResponse {}))
    }
}
