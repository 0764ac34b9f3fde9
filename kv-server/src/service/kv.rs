//! The public `Kv` service: validation, the CP path (the partition's Raft group, forwarding to
//! the leader) and the AP path (this node coordinates); keyspace administration and status
//! answers are delegated to `keyspace.rs` and `status.rs`. Every CP data request (get, put,
//! delete, compare-and-swap) is routed by one function, `KvService::route`: serve here, forward
//! to a member or to the leader, wait out a leader that cannot be reached.

pub use super::convert::cp_key;
use super::convert::{ap_options, cp_error, version_pb};
use super::forward::{
    hop, pause_for_election, shorter_than_an_election, Client, Ctx, LEADER_RETRY_PAUSE,
    MAX_FORWARD_HOPS,
};
use super::{keyspace, snapshot, status};
use crate::cp::types::RequestId;
use crate::cp::{
    CasOutcome, CpEngine, CpError, Expected as CpExpected, Request as CpRequest,
    Response as CpResponse,
};
use crate::error::{NodeError, NodeResult};
use crate::metrics::metrics;
use crate::node::{Node, CP_GROUP_KEYSPACE};
use crate::security::{authorize, Action};
use crate::types::{Mode, NodeId, Version};
use kv_core::headers::LEADER_HEADER;
use kv_proto::v1 as pb;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

mod writes;

/// `request` applied at most once per `id` when the client sent one (a client id of 0 means
/// none). A forwarded request carries the same id, so the leader deduplicates it too.
fn at_most_once(id: &Option<pb::RequestId>, request: CpRequest) -> CpRequest {
    match id {
        Some(id) if id.client_id != 0 => CpRequest::Once {
            id: RequestId {
                client_id: id.client_id,
                seq: id.seq,
            },
            request: Box::new(request),
        },
        _ => request,
    }
}

/// Where a request was answered.
enum Routed<T, Resp> {
    /// Here: the local engine's answer.
    Here(T),
    /// By the node it was forwarded to: that node's answer, passed on as is, and that node
    /// when it is the group's leader (it served a request only a leader serves).
    Forwarded(Resp, Option<NodeId>),
}

/// An answer with the partition's leader in the `kv-leader` header, when known, so a client
/// sends the partition's next requests straight to it (no server-side hop).
fn with_leader<T>(node: &Node, body: T, leader: Option<NodeId>) -> Response<T> {
    let mut resp = Response::new(body);
    let addr = leader.and_then(|l| node.member(l)).map(|m| m.addr.as_str());
    if let Some(v) = addr.and_then(|a| a.parse().ok()) {
        resp.metadata_mut().insert(LEADER_HEADER, v);
    }
    resp
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

    /// Counts the answer to one `op` on `keyspace` started at `started` in the metrics.
    fn observe<T>(
        &self,
        op: &'static str,
        keyspace: &str,
        started: Instant,
        r: &Result<T, Status>,
    ) {
        let mode = self
            .node
            .keyspaces
            .read()
            .expect("keyspace lock")
            .get(keyspace)
            .map(|k| match k.mode {
                Mode::Cp => "cp",
                Mode::Ap => "ap",
            });
        let code = r.as_ref().err().map_or(Code::Ok, |s| s.code());
        let took = started.elapsed();
        metrics().request(op, mode.map(|m| (keyspace, m)), code, took);
        tracing::debug!(
            code = crate::metrics::code_name(code),
            took_ms = took.as_millis() as u64,
            "answered"
        );
    }

    /// The span of one request: its log lines name the operation, the key's partition and
    /// the client's request id (never the key itself: no user values in logs).
    fn span(&self, op: &'static str, key: &[u8], id: &Option<pb::RequestId>) -> tracing::Span {
        let partition = self.node.ring.partition_for_key(key);
        let request_id = match id {
            Some(id) if id.client_id != 0 => format!("{:x}:{}", id.client_id, id.seq),
            _ => String::new(),
        };
        tracing::info_span!("request", op, partition, request_id)
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
            .find(|m| self.node.links.membership().is_alive(*m))
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

    /// Routes one CP request on `partition`: forwarded to a member when this node holds no
    /// replica of it; else run here by `local` and, when this node is not the leader, forwarded
    /// to the leader it names (`forward` makes the call). A leader that cannot be reached (it
    /// may have just died) is waited out: `local` runs again until a new leader is elected or
    /// the deadline passes.
    #[allow(clippy::too_many_arguments)]
    async fn route<'a, T, Req, Resp, L, LocalFut, F, ForwardFut>(
        &'a self,
        keyspace: &str,
        partition: u32,
        ctx: Ctx,
        body: Req,
        resend_safe: bool,
        local: L,
        forward: F,
    ) -> NodeResult<Routed<T, Resp>>
    where
        Req: Clone,
        L: Fn(&'a CpEngine) -> LocalFut,
        LocalFut: Future<Output = Result<T, CpError>>,
        F: Fn(Client, Request<Req>) -> ForwardFut + Copy,
        ForwardFut: Future<Output = Result<Response<Resp>, Status>>,
    {
        if let Some(to) = self.cp_target(partition)? {
            // A member served it, maybe through its leader: which one is not known here.
            let answer = hop(&self.node, to, partition, ctx, body, forward).await;
            return answer.map(|a| Routed::Forwarded(a, None));
        }
        // Whether an earlier try may have reached a leader (a forward whose connection broke
        // after sending): then no later failure can say the request was not applied.
        let mut maybe_sent = false;
        loop {
            match local(self.node.cp()?).await {
                Ok(r) => return Ok(Routed::Here(r)),
                Err(CpError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if ctx.hops < MAX_FORWARD_HOPS => {
                    match hop(&self.node, leader, partition, ctx, body.clone(), forward).await {
                        Err(NodeError::NotSent(msg)) => {
                            let last = match maybe_sent {
                                true => NodeError::Unavailable(msg),
                                false => NodeError::NotApplied(format!(
                                    "{msg}; the request was not applied"
                                )),
                            };
                            pause_for_election(ctx, last).await?
                        }
                        // The connection to the leader broke after sending (it crashed): a
                        // read, or a write the state machine applies at most once, is sent
                        // again once a leader is known; any other write's outcome is unknown.
                        Err(NodeError::Interrupted(msg)) if resend_safe => {
                            maybe_sent = true;
                            pause_for_election(ctx, NodeError::Unavailable(msg)).await?
                        }
                        Err(NodeError::Interrupted(msg)) => {
                            return Err(NodeError::Unavailable(msg))
                        }
                        // The node named leader was not (it lost leadership, or forwarded to
                        // one that had): nothing was applied, so while time remains ask this
                        // node's group again for the current leader rather than pass ABORTED on.
                        Err(NodeError::Remote(status))
                            if status.code() == Code::Aborted
                                && ctx.remaining() > 2 * LEADER_RETRY_PAUSE =>
                        {
                            tokio::time::sleep(LEADER_RETRY_PAUSE).await
                        }
                        other => return other.map(|a| Routed::Forwarded(a, Some(leader))),
                    }
                }
                Err(CpError::NoLeader { partition, reason }) if maybe_sent => {
                    let e = CpError::Unavailable { partition, reason };
                    return Err(cp_error(&self.node, e, keyspace));
                }
                // The engine judged by the time left in its last call; the request itself had
                // at least an election timeout, long enough for a healthy group to elect and
                // commit (after forwards to a leader that could not be reached): the
                // partition is unavailable from here, not merely slow.
                Err(CpError::DeadlineExceeded {
                    partition,
                    proposed,
                    ..
                }) if !shorter_than_an_election(&self.node, &ctx) => {
                    let ms = ctx.budget.as_millis();
                    let e = match proposed || maybe_sent {
                        true => CpError::Unavailable {
                            partition,
                            reason: format!(
                                "no quorum answered within the request's {ms} ms; a write may still apply"
                            ),
                        },
                        false => CpError::NoLeader {
                            partition,
                            reason: format!(
                                "no leader was reachable from this node within the request's {ms} ms; nothing was proposed"
                            ),
                        },
                    };
                    return Err(cp_error(&self.node, e, keyspace));
                }
                Err(e) => return Err(cp_error(&self.node, e, keyspace)),
            }
        }
    }

    /// A put (`Some(value)`) or delete (`None`): coordinated here for an AP keyspace, through
    /// the partition's Raft group for a CP one.
    #[allow(clippy::too_many_arguments)]
    async fn write<Req, Resp, F, Fut>(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        options: &Option<pb::RequestOptions>,
        request_id: &Option<pb::RequestId>,
        ctx: Ctx,
        body: Req,
        send: F,
    ) -> NodeResult<Routed<Version, Resp>>
    where
        Req: Clone,
        F: Fn(Client, Request<Req>) -> Fut + Copy,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
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
            return Ok(Routed::Here(Version::Hlc(hlc)));
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
        let resend_safe = matches!(request_id, Some(id) if id.client_id != 0);
        let req = at_most_once(request_id, req);
        let partition = self.node.ring.partition_for_key(key);
        Ok(
            match self
                .route(
                    &ks.name,
                    partition,
                    ctx,
                    body,
                    resend_safe,
                    |cp| cp.execute(CP_GROUP_KEYSPACE, partition, req.clone(), ctx.deadline),
                    send,
                )
                .await?
            {
                Routed::Here(r) => Routed::Here(Version::Revision(self.written(r)?)),
                Routed::Forwarded(answer, leader) => Routed::Forwarded(answer, leader),
            },
        )
    }

    /// The leader to name on a write's answer: this node when its group applied the write
    /// here, the leader it was forwarded to, none for an AP write.
    fn write_leader<Resp>(&self, routed: &Routed<Version, Resp>) -> Option<NodeId> {
        match routed {
            Routed::Here(Version::Revision(_)) => Some(self.node.me.id),
            Routed::Here(_) => None,
            Routed::Forwarded(_, leader) => *leader,
        }
    }

    /// The leader of a CP partition as this node knows it (stale reads are served by any
    /// replica, so the leader is not this node by default).
    fn known_leader(&self, partition: u32) -> Option<NodeId> {
        let group = crate::cp::engine::group_id(CP_GROUP_KEYSPACE, partition);
        self.node.cp().ok().and_then(|cp| cp.leader_of(group))
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
        authorize(&req, Action::Read(&req.get_ref().keyspace))?;
        let span = self.span("get", &req.get_ref().key, &None);
        let started = Instant::now();
        let ctx = Ctx::of(&self.node, &req);
        let body = req.into_inner();
        let keyspace = body.keyspace.clone();
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
                let answer = match self.node.ap.get(&ks, &pref, &body.key, opts).await? {
                    Some((value, hlc)) => found(value, Version::Hlc(hlc), false),
                    None => missing(false),
                };
                return Ok((answer, None));
            }
            let stale = body.options.as_ref().is_some_and(|o| o.stale);
            let partition = self.node.ring.partition_for_key(&body.key);
            let key = cp_key(ks.id, &body.key);
            let send = |mut c: Client, r| async move { c.get(r).await };
            let routed = self
                .route(
                    &ks.name,
                    partition,
                    ctx,
                    body,
                    true,
                    |cp| cp.read(CP_GROUP_KEYSPACE, partition, &key, stale, ctx.deadline),
                    send,
                )
                .await?;
            let here_leader = || match stale {
                true => self.known_leader(partition),
                false => Some(self.node.me.id),
            };
            Ok(match routed {
                Routed::Here(Some((value, rev))) => {
                    (found(value, Version::Revision(rev), stale), here_leader())
                }
                Routed::Here(None) => (missing(stale), here_leader()),
                Routed::Forwarded(answer, leader) => (answer, leader),
            })
        }
        .instrument(span.clone())
        .await;
        let result = result
            .map(|(answer, leader)| with_leader(&self.node, answer, leader))
            .map_err(|e| self.status(e));
        span.in_scope(|| self.observe("get", &keyspace, started, &result));
        result
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let span = self.span("put", &req.get_ref().key, &req.get_ref().request_id);
        let started = Instant::now();
        let keyspace = req.get_ref().keyspace.clone();
        let result = self.put_inner(req).instrument(span.clone()).await;
        span.in_scope(|| self.observe("put", &keyspace, started, &result));
        result
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let span = self.span("delete", &req.get_ref().key, &req.get_ref().request_id);
        let started = Instant::now();
        let keyspace = req.get_ref().keyspace.clone();
        let result = self.delete_inner(req).instrument(span.clone()).await;
        span.in_scope(|| self.observe("delete", &keyspace, started, &result));
        result
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let span = self.span("cas", &req.get_ref().key, &req.get_ref().request_id);
        let started = Instant::now();
        let keyspace = req.get_ref().keyspace.clone();
        let result = self.cas_inner(req).instrument(span.clone()).await;
        span.in_scope(|| self.observe("cas", &keyspace, started, &result));
        result
    }

    async fn create_keyspace(
        &self,
        req: Request<pb::CreateKeyspaceRequest>,
    ) -> Result<Response<pb::CreateKeyspaceResponse>, Status> {
        let ctx = Ctx::of(&self.node, &req);
        keyspace::create_keyspace(&self.node, ctx, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.status(e))
    }

    async fn list_keyspaces(
        &self,
        _req: Request<pb::ListKeyspacesRequest>,
    ) -> Result<Response<pb::ListKeyspacesResponse>, Status> {
        Ok(Response::new(keyspace::list_keyspaces(&self.node).await))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(status::cluster_status(&self.node)))
    }

    async fn ring(
        &self,
        _req: Request<pb::RingRequest>,
    ) -> Result<Response<pb::RingResponse>, Status> {
        Ok(Response::new(status::ring(&self.node)))
    }

    type SnapshotPartitionStream =
        futures::stream::BoxStream<'static, Result<pb::SnapshotChunk, Status>>;

    async fn snapshot_partition(
        &self,
        req: Request<pb::SnapshotPartitionRequest>,
    ) -> Result<Response<Self::SnapshotPartitionStream>, Status> {
        let ctx = Ctx::of(&self.node, &req);
        let chunks = snapshot::snapshot_partition(&self.node, ctx, req.into_inner())
            .await
            .map_err(|e| self.status(e))?;
        let stream = futures::stream::iter(chunks.into_iter().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_records(
        &self,
        req: Request<pb::ImportRecordsRequest>,
    ) -> Result<Response<pb::ImportRecordsResponse>, Status> {
        let _permit = self.node.admit_write().map_err(|e| self.status(e))?;
        snapshot::import_records(&self.node, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.status(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_keys_of_different_keyspaces_never_collide() {
        assert_ne!(cp_key(1, b"k"), cp_key(2, b"k"));
        assert!(cp_key(1, b"k").starts_with(&1u32.to_be_bytes()));
    }
}
