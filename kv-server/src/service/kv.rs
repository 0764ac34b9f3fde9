//! The public `Kv` service: validation, the CP path (the partition's Raft group, forwarding to
//! the leader) and the AP path (this node coordinates), keyspace administration.

use super::{ap_options, keyspace_pb, request_timeout, version_pb};
use crate::cp::{
    CasOutcome, CpError, Expected as CpExpected, KeyspaceOutcome, Request as CpRequest,
    Response as CpResponse,
};
use crate::error::{NodeError, NodeResult};
use crate::node::{Node, CP_GROUP_KEYSPACE, CP_REPLICAS, FORWARDED_HEADER};
use crate::types::{KeyspaceDef, Mode, NodeId, Version};
use kv_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// A public-API client to a peer (requests are forwarded through it).
type Client = kv_proto::v1::kv_client::KvClient<tonic::transport::Channel>;

/// Most times one request is forwarded between nodes (a non-member to a member, a follower to
/// the leader); past it the caller gets `ABORTED` with the leader's address.
pub const MAX_FORWARD_HOPS: u32 = 2;
/// Pause before retrying a request whose leader could not be reached.
const LEADER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Bounds of the part of a request's timeout the node keeps for the round trip (a fifth of
/// the timeout, within these), so it answers `UNAVAILABLE` before the client's own deadline
/// expires even when the network is slow.
const SERVER_DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(50);
const SERVER_DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(500);

/// The key under which a CP keyspace's key lives in the shared Raft groups: keyspace id first,
/// so keyspaces sharing a group never collide.
pub fn cp_key(keyspace_id: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&keyspace_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Deadline and hop count of one incoming request.
#[derive(Clone, Copy)]
struct Ctx {
    deadline: Instant,
    hops: u32,
}

impl Ctx {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
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

    fn ctx<T>(&self, req: &Request<T>) -> Ctx {
        let timeout = request_timeout(&self.node, req);
        let margin = (timeout / 5)
            .clamp(SERVER_DEADLINE_MARGIN_MIN, SERVER_DEADLINE_MARGIN_MAX)
            .min(timeout / 2);
        let hops = req
            .metadata()
            .get(FORWARDED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u32)
            .min(MAX_FORWARD_HOPS);
        Ctx {
            deadline: Instant::now() + timeout - margin,
            hops,
        }
    }

    /// The key's full preference list (replicas first, then fallbacks).
    fn preference(&self, key: &[u8]) -> Vec<NodeId> {
        let p = self.node.ring.partition_for_key(key);
        self.node.ring.preference_list(p).to_vec()
    }

    /// Where a CP request on partition `p` must go when this node holds no replica: the first
    /// member not known to be down.
    fn cp_target(&self, partition: u32) -> NodeResult<Option<NodeId>> {
        let members = self.node.cp_members(partition);
        if members.contains(&self.node.me.id) {
            return Ok(None);
        }
        members
            .iter()
            .copied()
            .find(|m| self.node.membership.is_alive(*m))
            .map(Some)
            .ok_or_else(|| {
                NodeError::Unavailable(format!(
                    "partition {partition}: every replica ({}) is down",
                    members
                        .iter()
                        .map(|m| self.node.describe(*m))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Converts a CP engine error, naming the keyspace and the leader's address.
    fn cp_error(&self, e: CpError, keyspace: &str) -> NodeError {
        match e {
            CpError::NotLeader { partition, leader } => NodeError::NotLeader {
                partition,
                leader: leader
                    .and_then(|l| self.node.member(l))
                    .map(|m| m.addr.clone()),
            },
            CpError::Unavailable { partition, reason } => NodeError::Unavailable(format!(
                "keyspace {keyspace} partition {partition} is unavailable on node {}: {reason}",
                self.node.me.name
            )),
            CpError::Storage(s) => s.into(),
            other => NodeError::Internal(other.to_string()),
        }
    }

    /// Forwards a request to `to`, within the remaining deadline, one hop further.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        to: NodeId,
        partition: u32,
        ctx: Ctx,
        body: Req,
        call: F,
    ) -> NodeResult<Resp>
    where
        F: FnOnce(Client, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        if self.node.membership.state(to) == kv_proto::v1::NodeState::Down {
            return Err(NodeError::NotSent(format!(
                "node {}, which serves partition {partition}, is down (no heartbeat for {} ms); retry when it is back",
                self.node.describe(to),
                crate::membership::DOWN_AFTER.as_millis()
            )));
        }
        if self.node.faults.drops(to) {
            return Err(NodeError::NotSent(format!(
                "node {}, which serves partition {partition}, is unreachable (traffic dropped by fault injection)",
                self.node.describe(to)
            )));
        }
        self.node.faults.delay(to).await;
        let client = self.node.kv_client(to)?;
        let mut request = Request::new(body);
        let timeout = ctx.remaining();
        request.set_timeout(timeout);
        if let Ok(v) = (ctx.hops + 1).to_string().parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        match tokio::time::timeout(timeout, call(client, request)).await {
            Ok(Ok(resp)) => {
                self.node.membership.heard_from(to);
                Ok(resp.into_inner())
            }
            Ok(Err(status)) if status.metadata().get(kv_core::headers::NODE_HEADER).is_some() => {
                // The node answered with an error of its own: pass it on unchanged.
                Err(NodeError::Remote(status))
            }
            Ok(Err(status)) => {
                let msg = format!(
                    "node {}, which serves partition {partition}, is unreachable: {}; retry later",
                    self.node.describe(to),
                    status.message()
                );
                if kv_core::headers::is_connect_failure(&status) {
                    Err(NodeError::NotSent(msg))
                } else {
                    Err(NodeError::Unavailable(msg))
                }
            }
            Err(_) => Err(NodeError::Unavailable(format!(
                "node {}, which serves partition {partition}, did not answer before the deadline ({} ms); a write's outcome is unknown",
                self.node.describe(to),
                timeout.as_millis()
            ))),
        }
    }

    /// Runs a CP write here, or forwards it to the member or leader that can. A leader that
    /// cannot be reached (it may have just died) is waited out: the write is retried here until
    /// a new leader is elected or the deadline passes.
    async fn cp_write<Req, Resp, F, Fut>(
        &self,
        ks: &KeyspaceDef,
        key: &[u8],
        ctx: Ctx,
        req: CpRequest,
        body: Req,
        call: F,
    ) -> NodeResult<Result<CpResponse, Resp>>
    where
        Req: Clone,
        F: Fn(Client, Request<Req>) -> Fut + Copy,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let partition = self.node.ring.partition_for_key(key);
        if let Some(to) = self.cp_target(partition)? {
            return self.hop(to, partition, ctx, body, call).await.map(Err);
        }
        loop {
            let result = self
                .node
                .cp()?
                .execute(CP_GROUP_KEYSPACE, partition, req.clone(), ctx.deadline)
                .await;
            match result {
                Ok(r) => return Ok(Ok(r)),
                Err(CpError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if ctx.hops < MAX_FORWARD_HOPS => {
                    match self.hop(leader, partition, ctx, body.clone(), call).await {
                        Err(NodeError::NotSent(msg)) => self.pause_for_election(ctx, msg).await?,
                        other => return other.map(Err),
                    }
                }
                Err(e) => return Err(self.cp_error(e, &ks.name)),
            }
        }
    }

    /// Waits a little for a new leader before another try, or gives up at the deadline.
    async fn pause_for_election(&self, ctx: Ctx, last: String) -> NodeResult<()> {
        if ctx.remaining() <= LEADER_RETRY_PAUSE {
            return Err(NodeError::Unavailable(last));
        }
        tokio::time::sleep(LEADER_RETRY_PAUSE).await;
        Ok(())
    }

    async fn hop<Req, Resp, F, Fut>(
        &self,
        to: NodeId,
        partition: u32,
        ctx: Ctx,
        body: Req,
        call: F,
    ) -> NodeResult<Resp>
    where
        F: FnOnce(Client, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        if ctx.hops >= MAX_FORWARD_HOPS {
            return Err(NodeError::NotLeader {
                partition,
                leader: self.node.member(to).map(|m| m.addr.clone()),
            });
        }
        self.forward(to, partition, ctx, body, call).await
    }

    /// A put (`Some(value)`) or delete (`None`): coordinated here for an AP keyspace, through
    /// the partition's Raft group for a CP one. `Ok(version)` when it was done here, `Err` with
    /// the answer of the node it was forwarded to.
    #[allow(clippy::too_many_arguments)]
    async fn write<Req, Resp, F, Fut>(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        options: &Option<pb::RequestOptions>,
        ctx: Ctx,
        body: Req,
        send: F,
    ) -> NodeResult<Result<Version, Resp>>
    where
        Req: Clone,
        F: Fn(Client, Request<Req>) -> Fut + Copy,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.node.validate_key(key)?;
        if let Some(v) = &value {
            self.node.validate_value(v)?;
        }
        let ks = self.node.keyspace(keyspace).await?;
        if ks.mode == Mode::Ap {
            let opts = ap_options(options)?;
            let pref = self.preference(key);
            let hlc = match value {
                Some(v) => self.node.ap.put(&ks, &pref, key, v, opts).await?,
                None => self.node.ap.delete(&ks, &pref, key, opts).await?,
            };
            return Ok(Ok(Version::Hlc(hlc)));
        }
        let stored_key = cp_key(ks.id, key);
        let req = match value {
            Some(value) => CpRequest::Put {
                keyspace: CP_GROUP_KEYSPACE,
                key: stored_key,
                value,
            },
            None => CpRequest::Delete {
                keyspace: CP_GROUP_KEYSPACE,
                key: stored_key,
            },
        };
        Ok(match self.cp_write(&ks, key, ctx, req, body, send).await? {
            Ok(r) => Ok(Version::Revision(self.written(r)?)),
            Err(forwarded) => Err(forwarded),
        })
    }

    fn written(&self, r: CpResponse) -> NodeResult<u64> {
        match r {
            CpResponse::Written { revision } => Ok(revision),
            other => Err(NodeError::Internal(format!(
                "the state machine answered {other:?} to a write"
            ))),
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let ctx = self.ctx(&req);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            let ks = self.node.keyspace(&body.keyspace).await?;
            let me = self.node.me.name.clone();
            let found = |value, version, maybe_stale| pb::GetResponse {
                found: true,
                value,
                version: Some(version_pb(version)),
                served_by: me.clone(),
                maybe_stale,
            };
            let missing = |maybe_stale| pb::GetResponse {
                served_by: me.clone(),
                maybe_stale,
                ..Default::default()
            };
            if ks.mode == Mode::Ap {
                let opts = ap_options(&body.options)?;
                let pref = self.preference(&body.key);
                return Ok(match self.node.ap.get(&ks, &pref, &body.key, opts).await? {
                    Some((value, hlc)) => found(value, Version::Hlc(hlc), false),
                    None => missing(false),
                });
            }
            let stale = body.options.as_ref().is_some_and(|o| o.stale);
            let partition = self.node.ring.partition_for_key(&body.key);
            if let Some(to) = self.cp_target(partition)? {
                return self
                    .hop(to, partition, ctx, body, |mut c, r| async move {
                        c.get(r).await
                    })
                    .await;
            }
            let key = cp_key(ks.id, &body.key);
            loop {
                let read = self
                    .node
                    .cp()?
                    .read(CP_GROUP_KEYSPACE, partition, &key, stale, ctx.deadline)
                    .await;
                match read {
                    Ok(Some((value, rev))) => {
                        return Ok(found(value, Version::Revision(rev), stale))
                    }
                    Ok(None) => return Ok(missing(stale)),
                    Err(CpError::NotLeader {
                        leader: Some(leader),
                        ..
                    }) if ctx.hops < MAX_FORWARD_HOPS => {
                        let forwarded = self
                            .hop(
                                leader,
                                partition,
                                ctx,
                                body.clone(),
                                |mut c, r| async move { c.get(r).await },
                            )
                            .await;
                        match forwarded {
                            Err(NodeError::NotSent(msg)) => {
                                self.pause_for_election(ctx, msg).await?
                            }
                            other => return other,
                        }
                    }
                    Err(e) => return Err(self.cp_error(e, &ks.name)),
                }
            }
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let ctx = self.ctx(&req);
        let body = req.into_inner();
        let (keyspace, key, value, options) = (
            body.keyspace.clone(),
            body.key.clone(),
            body.value.clone(),
            body.options,
        );
        let send = |mut c: Client, r| async move { c.put(r).await };
        let result = self
            .write(&keyspace, &key, Some(value), &options, ctx, body, send)
            .await
            .map(|w| match w {
                Ok(version) => pb::PutResponse {
                    version: Some(version_pb(version)),
                    served_by: self.node.me.name.clone(),
                },
                Err(forwarded) => forwarded,
            });
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let ctx = self.ctx(&req);
        let body = req.into_inner();
        let (keyspace, key, options) = (body.keyspace.clone(), body.key.clone(), body.options);
        let send = |mut c: Client, r| async move { c.delete(r).await };
        let result = self
            .write(&keyspace, &key, None, &options, ctx, body, send)
            .await
            .map(|w| match w {
                Ok(version) => pb::DeleteResponse {
                    version: Some(version_pb(version)),
                    served_by: self.node.me.name.clone(),
                },
                Err(forwarded) => forwarded,
            });
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let ctx = self.ctx(&req);
        let body = req.into_inner();
        let result = async {
            self.node.validate_key(&body.key)?;
            self.node.validate_value(&body.new_value)?;
            let ks = self.node.keyspace(&body.keyspace).await?;
            if ks.mode == Mode::Ap {
                return Err(NodeError::FailedPrecondition(format!(
                    "compare-and-swap is not supported on AP keyspace {:?}: last-write-wins replicas cannot make it atomic; use a CP keyspace",
                    ks.name
                )));
            }
            use pb::compare_and_swap_request::Expected as E;
            let expected = match &body.expected {
                Some(E::ExpectedVersion(v)) => CpExpected::Revision(*v),
                Some(E::ExpectedValue(v)) => CpExpected::Value(v.clone()),
                Some(E::ExpectAbsent(_)) => CpExpected::Absent,
                None => {
                    return Err(NodeError::InvalidArgument(
                        "compare-and-swap needs an expectation: expected_version, expected_value or expect_absent".into(),
                    ))
                }
            };
            let req = CpRequest::Cas {
                keyspace: CP_GROUP_KEYSPACE,
                key: cp_key(ks.id, &body.key),
                expected,
                new_value: body.new_value.clone(),
            };
            let key = body.key.clone();
            let me = self.node.me.name.clone();
            match self
                .cp_write(&ks, &key, ctx, req, body, |mut c, r| async move {
                    c.compare_and_swap(r).await
                })
                .await?
            {
                Ok(CpResponse::Cas(CasOutcome::Swapped { revision })) => {
                    Ok(pb::CompareAndSwapResponse {
                        succeeded: true,
                        version: Some(version_pb(Version::Revision(revision))),
                        served_by: me,
                        ..Default::default()
                    })
                }
                Ok(CpResponse::Cas(CasOutcome::Mismatch { current })) => {
                    Ok(pb::CompareAndSwapResponse {
                        succeeded: false,
                        version: current
                            .as_ref()
                            .map(|(_, rev)| version_pb(Version::Revision(*rev))),
                        found: current.is_some(),
                        current_value: current.map(|(v, _)| v).unwrap_or_default(),
                        served_by: me,
                    })
                }
                Ok(other) => Err(NodeError::Internal(format!(
                    "the state machine answered {other:?} to a compare-and-swap"
                ))),
                Err(forwarded) => Ok(forwarded),
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
        Ok(Response::new(pb::ClusterStatusResponse {
            cluster_name: node.config.cluster_name.clone(),
            node_id: node.me.id,
            node_name: node.me.name.clone(),
            nodes,
            keyspaces,
            leader_of,
            clock_skew_events: ap.skew_events,
            read_repairs: ap.read_repairs,
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
        req: Request<pb::CreateKeyspaceRequest>,
    ) -> Result<Response<pb::CreateKeyspaceResponse>, Status> {
        let ctx = self.ctx(&req);
        let body = req.into_inner();
        let result = async {
            let def = self.keyspace_def(&body)?;
            let cp = self.node.cp()?;
            // Ids are taken in order; a concurrent create of another keyspace may take the id
            // first, and then the next one is tried.
            for _ in 0..MAX_KEYSPACE_ID_ATTEMPTS {
                let _ = self.node.refresh_keyspaces().await;
                let next_id = self
                    .node
                    .keyspaces
                    .read()
                    .expect("keyspace lock")
                    .values()
                    .map(|k| k.id)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let def = KeyspaceDef {
                    id: next_id,
                    ..def.clone()
                };
                let outcome = cp
                    .execute(
                        crate::cp::META_KEYSPACE,
                        crate::cp::META_PARTITION,
                        CpRequest::CreateKeyspace(def.clone()),
                        ctx.deadline,
                    )
                    .await;
                match outcome {
                    Ok(CpResponse::Keyspace(KeyspaceOutcome::Created)) => {
                        self.node
                            .keyspaces
                            .write()
                            .expect("keyspace lock")
                            .insert(def.name.clone(), def.clone());
                        return Ok(pb::CreateKeyspaceResponse {
                            keyspace: Some(keyspace_pb(&def)),
                        });
                    }
                    Ok(CpResponse::Keyspace(KeyspaceOutcome::NameExists(existing))) => {
                        if (KeyspaceDef {
                            id: existing.id,
                            ..def.clone()
                        }) == existing
                        {
                            return Ok(pb::CreateKeyspaceResponse {
                                keyspace: Some(keyspace_pb(&existing)),
                            });
                        }
                        return Err(NodeError::AlreadyExists(format!(
                            "keyspace {:?} already exists as mode {:?} with {} replicas",
                            existing.name, existing.mode, existing.replicas
                        )));
                    }
                    Ok(CpResponse::Keyspace(KeyspaceOutcome::IdTaken(_))) => continue,
                    Ok(other) => {
                        return Err(NodeError::Internal(format!(
                            "metadata group answered {other:?}"
                        )))
                    }
                    Err(CpError::NotLeader {
                        leader: Some(leader),
                        ..
                    }) if ctx.hops < MAX_FORWARD_HOPS => {
                        return self
                            .hop(
                                leader,
                                crate::cp::META_PARTITION,
                                ctx,
                                body,
                                |mut c, r| async move { c.create_keyspace(r).await },
                            )
                            .await;
                    }
                    Err(e) => return Err(self.cp_error(e, "(metadata)")),
                }
            }
            Err(NodeError::Unavailable(
                "could not allocate a keyspace id: concurrent creations kept taking it; retry"
                    .into(),
            ))
        }
        .await;
        result.map(Response::new).map_err(|e| self.status(e))
    }

    async fn list_keyspaces(
        &self,
        _req: Request<pb::ListKeyspacesRequest>,
    ) -> Result<Response<pb::ListKeyspacesResponse>, Status> {
        let _ = self.node.refresh_keyspaces().await;
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

/// Most ids one keyspace creation tries before giving up.
const MAX_KEYSPACE_ID_ATTEMPTS: usize = 8;
/// Longest keyspace name.
pub const MAX_KEYSPACE_NAME_BYTES: usize = 64;

impl KvService {
    /// Validates a CreateKeyspace request into a definition (id still unassigned).
    fn keyspace_def(&self, req: &pb::CreateKeyspaceRequest) -> NodeResult<KeyspaceDef> {
        let Some(k) = &req.keyspace else {
            return Err(NodeError::InvalidArgument(
                "CreateKeyspace needs a keyspace".into(),
            ));
        };
        let name_ok = !k.name.is_empty()
            && k.name.len() <= MAX_KEYSPACE_NAME_BYTES
            && k.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(NodeError::InvalidArgument(format!(
                "keyspace name {:?} is invalid: 1 to {MAX_KEYSPACE_NAME_BYTES} characters of a-z, A-Z, 0-9, _ and -",
                k.name
            )));
        }
        let mode = match pb::Mode::try_from(k.mode) {
            Ok(pb::Mode::Cp) => Mode::Cp,
            Ok(pb::Mode::Ap) => Mode::Ap,
            _ => {
                return Err(NodeError::InvalidArgument(
                    "keyspace mode must be cp or ap".into(),
                ))
            }
        };
        let n_nodes = self.node.config.peers.len() as u32;
        let replicas = if k.replicas == 0 {
            3.min(n_nodes)
        } else {
            k.replicas
        };
        if mode == Mode::Cp && replicas != CP_REPLICAS.min(n_nodes) {
            return Err(NodeError::InvalidArgument(format!(
                "CP keyspaces share the Raft groups of the built-in `cp` keyspace, so --replicas must be {} in this release (got {replicas})",
                CP_REPLICAS.min(n_nodes)
            )));
        }
        if replicas == 0 || replicas > n_nodes {
            return Err(NodeError::InvalidArgument(format!(
                "--replicas {replicas} must be between 1 and the number of nodes ({n_nodes})"
            )));
        }
        if k.read_replicas > replicas || k.write_replicas > replicas {
            return Err(NodeError::InvalidArgument(format!(
                "default R={} and W={} must not exceed --replicas {replicas}",
                k.read_replicas, k.write_replicas
            )));
        }
        Ok(KeyspaceDef {
            name: k.name.clone(),
            id: 0,
            mode,
            replicas,
            read_replicas: k.read_replicas,
            write_replicas: k.write_replicas,
        })
    }
}
