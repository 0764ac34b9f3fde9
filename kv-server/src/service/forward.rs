//! Forwarding a public-API request to the node that can serve it (a member of the partition's
//! group, or its leader), within the request's deadline and a bounded number of hops. A
//! forward that certainly did not leave this node is `NotSent` (safe to retry); one that left
//! and got no answer is `Unavailable` (a write's outcome is unknown).

use super::convert::request_timeout;
use crate::error::{truncate, NodeError, NodeResult};
use crate::node::{Node, FORWARDED_HEADER};
use crate::peers::LinkError;
use crate::types::NodeId;
use kv_proto::v1 as pb;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

/// A public-API client to a peer (requests are forwarded through it).
pub(super) type Client = kv_proto::v1::kv_client::KvClient<tonic::transport::Channel>;

/// Most times one request is forwarded between nodes (a non-member to a member, a follower to
/// the leader); past it the caller gets `ABORTED` with the leader's address.
pub const MAX_FORWARD_HOPS: u32 = 2;
/// Pause before retrying a request whose leader could not be reached.
pub(super) const LEADER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest transport error text repeated in a status message.
const MAX_CAUSE_BYTES: usize = 300;
/// Bounds of the part of a request's timeout the node keeps for the round trip (a fifth of
/// the timeout, within these), so it answers `UNAVAILABLE` before the client's own deadline
/// expires even when the network is slow.
const SERVER_DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(50);
const SERVER_DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(500);

/// Deadline and hop count of one incoming request.
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    /// When this node must have answered.
    pub(super) deadline: Instant,
    /// How many times the request was forwarded before it reached this node.
    pub(super) hops: u32,
    /// The time this node was given to answer (the deadline when the request arrived).
    pub(super) budget: Duration,
}

impl Ctx {
    /// The deadline and hop count of `req`, keeping a margin of the deadline for the answer's
    /// way back.
    pub(super) fn of<T>(node: &Node, req: &Request<T>) -> Ctx {
        let timeout = request_timeout(node, req);
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
            budget: timeout - margin,
        }
    }

    /// Time left before the deadline.
    pub(super) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// True when the request was given less than an election timeout: a deadline that passes then
/// proves nothing about the partition's availability (`DEADLINE_EXCEEDED`), while a longer one
/// was enough for a healthy group to elect a leader and answer (`UNAVAILABLE`).
pub(super) fn shorter_than_an_election(node: &Node, ctx: &Ctx) -> bool {
    let election_ms = match node.cp() {
        Ok(cp) => cp.config().election_timeout_max_ms,
        Err(_) => crate::cp::CpConfig::default().election_timeout_max_ms,
    };
    ctx.budget < Duration::from_millis(election_ms)
}

/// Waits a little for a new leader before another try, or gives up at the deadline with
/// `last` (the caller says whether the request may have been applied).
pub(super) async fn pause_for_election(ctx: Ctx, last: NodeError) -> NodeResult<()> {
    if ctx.remaining() <= LEADER_RETRY_PAUSE {
        return Err(last);
    }
    tokio::time::sleep(LEADER_RETRY_PAUSE).await;
    Ok(())
}

/// Forwards a request to `to` unless it has used up its hops: then the caller gets
/// `NotLeader` with `to`'s address, to go there itself.
pub(super) async fn hop<Req, Resp, F, Fut>(
    node: &Node,
    to: NodeId,
    partition: u32,
    ctx: Ctx,
    body: Req,
    call: F,
) -> NodeResult<Resp>
where
    F: FnOnce(Client, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    if ctx.hops >= MAX_FORWARD_HOPS {
        return Err(NodeError::NotLeader {
            partition,
            leader: node.member(to).map(|m| m.addr.clone()),
        });
    }
    forward(node, to, partition, ctx, body, call).await
}

/// Forwards a request to `to`, within the remaining deadline, one hop further.
async fn forward<Req, Resp, F, Fut>(
    node: &Node,
    to: NodeId,
    partition: u32,
    ctx: Ctx,
    body: Req,
    call: F,
) -> NodeResult<Resp>
where
    F: FnOnce(Client, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    if node.links.membership().state(to) == pb::NodeState::Down {
        return Err(NodeError::NotSent(format!(
            "node {}, which serves partition {partition}, is down (no heartbeat for {} ms); retry when it is back",
            node.describe(to),
            crate::membership::DOWN_AFTER.as_millis()
        )));
    }
    let client = match node.links.kv_client(to).await {
        Ok(client) => client,
        Err(LinkError::Dropped { .. }) => {
            return Err(NodeError::NotSent(format!(
                "node {}, which serves partition {partition}, is unreachable (traffic dropped by fault injection)",
                node.describe(to)
            )))
        }
        Err(e) => return Err(NodeError::Internal(e.to_string())),
    };
    let mut request = Request::new(body);
    let timeout = ctx.remaining();
    request.set_timeout(timeout);
    if let Ok(v) = (ctx.hops + 1).to_string().parse() {
        request.metadata_mut().insert(FORWARDED_HEADER, v);
    }
    match tokio::time::timeout(timeout, call(client, request)).await {
        Ok(Ok(resp)) => {
            node.links.membership().heard_from(to);
            Ok(resp.into_inner())
        }
        Ok(Err(status)) if status.metadata().get(kv_core::headers::NODE_HEADER).is_some() => {
            // The node answered with an error of its own: pass it on unchanged.
            Err(NodeError::Remote(status))
        }
        // No kv-node header: the status was made by tonic, on either side of the call.
        Ok(Err(status))
            if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
                && !kv_core::headers::is_connect_failure(&status) =>
        {
            // The deadline passed on the way: the peer is not unreachable, it ran out of time.
            Err(NodeError::DeadlineExceeded(format!(
                "node {}, which serves partition {partition}, did not answer within the request's deadline ({} ms left when forwarded); a write's outcome is unknown",
                node.describe(to),
                timeout.as_millis()
            )))
        }
        Ok(Err(status)) => {
            let detail = truncate(&kv_core::headers::describe(&status), MAX_CAUSE_BYTES);
            if kv_core::headers::is_connect_failure(&status) {
                Err(NodeError::NotSent(format!(
                    "node {}, which serves partition {partition}, is unreachable: {detail}; retry later",
                    node.describe(to)
                )))
            } else {
                Err(NodeError::Interrupted(format!(
                    "the call to node {}, which serves partition {partition}, failed: {detail}; a write's outcome is unknown",
                    node.describe(to)
                )))
            }
        }
        Err(_) if shorter_than_an_election(node, &ctx) => Err(NodeError::DeadlineExceeded(format!(
            "node {}, which serves partition {partition}, did not answer within the request's deadline ({} ms left when forwarded); a write's outcome is unknown",
            node.describe(to),
            timeout.as_millis()
        ))),
        Err(_) => Err(NodeError::Unavailable(format!(
            "node {}, which serves partition {partition}, did not answer before the deadline ({} ms); a write's outcome is unknown",
            node.describe(to),
            timeout.as_millis()
        ))),
    }
}
