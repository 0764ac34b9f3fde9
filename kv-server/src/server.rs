//! Starting a node: the server side of the network seam (`serve` takes any stream of
//! connections: real TCP or turmoil's; `serve_tcp` is the real-TCP case), gRPC reflection, the
//! message size limits of both services, the statuses tonic makes by itself (normalised by
//! `Statuses`), and the heartbeat task that checks peers' liveness and cluster identity.
//!
//! **Architecture invariant:** every non-OK status a client gets carries the `kv-node` header
//! and a code from kv.proto's table: tonic's own answers to bad input (a message over the size
//! limit, broken framing, no message) are `INVALID_ARGUMENT`, and a request whose `grpc-timeout`
//! passes is `DEADLINE_EXCEEDED`, never tonic's `CANCELLED` "Timeout expired".

use crate::error::truncate;
use crate::node::Node;
use crate::security::gate::Gate;
use crate::security::tls::tls_incoming;
use crate::security::{Api, GatePolicy, Security};
use crate::service::{parse_grpc_timeout, InternalService, KvService};
use kv_core::headers::NODE_HEADER;
use kv_core::limits::{max_peer_message_bytes, max_request_bytes, max_response_bytes};
use kv_proto::internal as ipb;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::transport::Server;
use tonic::{Code, Status};

/// Serves the public and internal APIs (plus reflection) on one listener, open to anyone,
/// until `shutdown` fires: for a node whose peer address is its client address (simulations).
pub async fn serve<I, IO, IE>(
    node: Arc<Node>,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let policy = gate_policy(&node, Api::Both, &Security::default());
    serve_api(node, policy, incoming, shutdown).await
}

/// The gate of `node`'s listener for `api` under `security`.
pub fn gate_policy(node: &Node, api: Api, security: &Security) -> GatePolicy {
    GatePolicy {
        api,
        auth: security.auth.clone(),
        peer_tls: security.tls.is_some(),
        members: node.config.peers.iter().map(|m| m.name.clone()).collect(),
    }
}

/// Serves the API `policy.api` names on `incoming` until `shutdown` fires: the client port has
/// the public API, reflection (listing the public API only) and the admin Chaos call; the peer
/// port has the internal API and the public one (requests forwarded between nodes arrive
/// there). Every request passes `policy`'s gate first.
pub async fn serve_api<I, IO, IE>(
    node: Arc<Node>,
    policy: GatePolicy,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let api = policy.api;
    let reflection = (api != Api::Peer).then(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
            .with_service_name(PUBLIC_SERVICE)
            .build_v1()
            .expect("the embedded descriptor set is valid")
    });
    let max_value = node.config.max_value_bytes;
    let name = node.me.name.clone();
    // A request up to one value plus headroom decodes, so a value just over the limit is
    // refused by validation; a larger one by tonic, as OUT_OF_RANGE, rewritten by `Statuses`.
    let kv = kv_proto::v1::kv_server::KvServer::new(KvService::new(node.clone()))
        .max_decoding_message_size(max_request_bytes(max_value))
        .max_encoding_message_size(max_response_bytes(max_value));
    let peer_limit = max_peer_message_bytes(max_value);
    // On the client port the gate answers every internal method but Chaos itself.
    let internal = ipb::internal_server::InternalServer::new(InternalService::new(node))
        .max_decoding_message_size(peer_limit)
        .max_encoding_message_size(peer_limit);
    let public = StatusPolicy::new(&name, max_value, max_request_bytes(max_value));
    let peer = StatusPolicy::new(&name, max_value, peer_limit);
    let policy = Arc::new(policy);
    Server::builder()
        .http2_keepalive_interval(Some(kv_core::net::KEEP_ALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(kv_core::net::KEEP_ALIVE_TIMEOUT))
        // Called by tonic's deadline service before it starts its own timer (see
        // `answer_within`).
        .layer(tower::layer::layer_fn(move |inner| Statuses {
            inner,
            public: Arc::new(public.clone()),
            peer: Arc::new(peer.clone()),
        }))
        .layer(tower::layer::layer_fn(move |inner| {
            Gate::new(inner, policy.clone(), &name)
        }))
        .add_service(kv)
        .add_service(internal)
        .add_optional_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The public gRPC service's full name (the one reflection lists).
pub const PUBLIC_SERVICE: &str = "kv.v1.Kv";

/// How a node words the statuses tonic makes by itself: its name and its message limits.
#[derive(Debug, Clone)]
pub struct StatusPolicy {
    node: String,
    max_value_bytes: usize,
    max_message_bytes: usize,
}

/// Longest part of tonic's own error text kept in a rewritten status.
const MAX_TONIC_DETAIL_BYTES: usize = 200;

impl StatusPolicy {
    /// The policy of node `node` whose values are at most `max_value_bytes` and whose service
    /// decodes messages of at most `max_message_bytes`.
    pub fn new(node: &str, max_value_bytes: usize, max_message_bytes: usize) -> Self {
        Self {
            node: node.to_string(),
            max_value_bytes,
            max_message_bytes,
        }
    }

    /// `response` as kv.proto promises it: a status that tonic made (it has no `kv-node`
    /// header: every status of kv's handlers has one) is given kv's code for it.
    pub fn rewrite<B: Default>(&self, response: http::Response<B>) -> http::Response<B> {
        if response.headers().contains_key(NODE_HEADER) {
            return response;
        }
        // An OK unary answer carries its status in the trailers, not the headers.
        let Some(status) = Status::from_header_map(response.headers()) else {
            return response;
        };
        let detail = truncate(status.message(), MAX_TONIC_DETAIL_BYTES);
        let status = match status.code() {
            Code::Ok => return response,
            // tonic's decode limit: "decoded message length too large: found N bytes, ...".
            Code::OutOfRange => Status::invalid_argument(self.too_large(status.message())),
            // tonic's answers to broken framing or a missing message: bad input, not a bug.
            Code::Internal => Status::invalid_argument(format!(
                "malformed gRPC request ({detail}); send one message encoded from kv.proto"
            )),
            // tonic's own deadline timer (normally beaten by the one in `Statuses::call`).
            Code::Cancelled if status.message().contains("Timeout expired") => {
                Status::deadline_exceeded(format!(
                    "the request's deadline passed ({detail}); a write's outcome is unknown"
                ))
            }
            code => Status::new(code, detail),
        };
        self.respond(status)
    }

    fn too_large(&self, tonic_message: &str) -> String {
        let found = tonic_message
            .split("found ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        let size = found.map(|n| format!(" of {n} bytes")).unwrap_or_default();
        format!(
            "the message{size} is over this node's limit of {} bytes: values are at most {} bytes (--max-value-bytes, raised on every node together)",
            self.max_message_bytes, self.max_value_bytes
        )
    }

    /// A trailers-only gRPC answer carrying `status`, named after this node.
    fn respond<B: Default>(&self, status: Status) -> http::Response<B> {
        let mut status = Status::new(
            status.code(),
            format!("[{}] {}", self.node, status.message()),
        );
        if let Ok(v) = self.node.parse() {
            status.metadata_mut().insert(NODE_HEADER, v);
        }
        status.into_http()
    }
}

/// How long after a request arrives a node answers it when its `grpc-timeout` is `timeout`:
/// a little before tonic's own timer (which would answer `CANCELLED`). `Statuses::call` runs
/// inside tonic's timeout service just before it starts its timer, so this deadline is earlier;
/// tokio's timers tick in milliseconds, so it is also an earlier-or-equal tick, and tonic polls
/// the service's answer before it looks at its own timer.
fn answer_within(timeout: Duration) -> Duration {
    timeout - (timeout / 10).min(Duration::from_millis(1))
}

/// Every gRPC service of the node, with statuses normalised by a `StatusPolicy` (the public
/// one, or the peer one for `kv.internal.v1`), answering `DEADLINE_EXCEEDED` itself when the
/// request's `grpc-timeout` passes.
#[derive(Debug, Clone)]
pub struct Statuses<S> {
    inner: S,
    public: Arc<StatusPolicy>,
    peer: Arc<StatusPolicy>,
}

impl<S, B, R> Service<http::Request<B>> for Statuses<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Fixed now, before tonic's timer starts, not when the answer is first polled.
        let deadline = timeout.map(|t| (t, tokio::time::Instant::now() + answer_within(t)));
        let internal = request.uri().path().starts_with("/kv.internal.");
        let policy = if internal { &self.peer } else { &self.public }.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                None => answer.await?,
                Some((t, at)) => match tokio::time::timeout_at(at, answer).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(policy.respond(Status::deadline_exceeded(format!(
                            "the request's deadline ({} ms) passed before this node answered; a write's outcome is unknown",
                            t.as_millis()
                        ))))
                    }
                },
            };
            Ok(policy.rewrite(response))
        })
    }
}

/// Serves the public and internal APIs on a bound TCP listener until `shutdown` fires, with
/// TCP_NODELAY on every accepted connection.
pub async fn serve_tcp(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve(node, tcp_incoming(listener), shutdown).await
}

/// Serves `node` on real TCP until `shutdown` fires: the client API on `client`, the peer API
/// on `peer` (both on `client` when `peer` is `None`), each with TLS when `security` has it.
pub async fn serve_node(
    node: Arc<Node>,
    security: Security,
    client: TcpListener,
    peer: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let client_api = if peer.is_some() {
        Api::Client
    } else {
        Api::Both
    };
    let client_tls = security.tls.as_ref().map(|t| match client_api {
        Api::Both => t.peer.clone(),
        _ => t.client.clone(),
    });
    let client_policy = gate_policy(&node, client_api, &security);
    let serving_client = serve_listener(
        node.clone(),
        client_policy,
        client,
        client_tls,
        signal(stopped.clone()),
    );
    let serving_peer = async {
        match peer {
            Some(listener) => {
                let policy = gate_policy(&node, Api::Peer, &security);
                let tls = security.tls.as_ref().map(|t| t.peer.clone());
                serve_listener(node.clone(), policy, listener, tls, signal(stopped.clone())).await
            }
            None => Ok(()),
        }
    };
    let stopping = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (client, peer, ()) = tokio::join!(serving_client, serving_peer, stopping);
    client.and(peer)
}

async fn serve_listener(
    node: Arc<Node>,
    policy: GatePolicy,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let port = if policy.api == Api::Client {
        "client"
    } else {
        "peer"
    };
    match tls {
        Some(config) => {
            let incoming = tls_incoming(tcp_incoming(listener), config, port);
            serve_api(node, policy, incoming, shutdown).await
        }
        None => serve_api(node, policy, tcp_incoming(listener), shutdown).await,
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off. tonic sets TCP_NODELAY only
/// on listeners it binds itself; without it a lone request waits for the peer's delayed ACK
/// (one client's CP put had p99 46 ms at p50 3.4 ms: docs/performance.md, item 1). A failure
/// to set it is logged by tonic and the connection kept.
fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Heartbeats every peer forever. Returns an error only when a peer refuses this node's
/// identity (different cluster name or peer list): the node must not join that cluster.
pub async fn heartbeat_loop(node: Arc<Node>) -> Result<(), String> {
    use crate::membership::{HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT};
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failures = Arc::new(HeartbeatFailures::default());
    loop {
        interval.tick().await;
        let peers: Vec<_> = node
            .config
            .peers
            .iter()
            .filter(|m| m.id != node.me.id && !node.links.faults().drops(m.id))
            .map(|m| m.id)
            .collect();
        let calls = peers.into_iter().map(|id| {
            let node = node.clone();
            let failures = failures.clone();
            async move {
                // Heartbeats are never delayed by fault injection (only dropped, above), so
                // they take the channel directly rather than through `PeerLinks::open`.
                let channel = node.links.channel(id).map_err(|e| e.to_string())?;
                let mut client = node.links.internal_client_on(channel);
                let mut req = tonic::Request::new(ipb::HandshakeRequest {
                    cluster_name: node.config.cluster_name.clone(),
                    node_id: node.me.id,
                    peers: node.config.peer_strings(),
                });
                req.set_timeout(HEARTBEAT_TIMEOUT);
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.handshake(req)).await {
                    Ok(Ok(_)) => {
                        node.links.membership().heard_from(id);
                        failures.clear(id);
                        Ok(())
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => Err(format!(
                        "node {} refused this node: {}",
                        node.describe(id),
                        s.message()
                    )),
                    Ok(Err(s)) => {
                        failures.note(&node, id, &cause(&s));
                        Ok(())
                    }
                    Err(_) => Ok(()),
                }
            }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
    }
}

/// Why each peer's last heartbeat failed, so a lasting failure (a refused certificate, a
/// refused connection) is logged once when it starts or changes, not every interval.
#[derive(Default)]
struct HeartbeatFailures {
    last: std::sync::Mutex<std::collections::BTreeMap<crate::types::NodeId, String>>,
}

impl HeartbeatFailures {
    fn note(&self, node: &Node, id: crate::types::NodeId, why: &str) {
        let mut last = self.last.lock().expect("heartbeat failures lock");
        if last.get(&id).map(String::as_str) != Some(why) {
            let peer = node.links.member(id).map_or(String::new(), |m| {
                format!("{} (peer address {})", m.name, m.peer_addr)
            });
            tracing::warn!(peer = %peer, "heartbeat to node {peer} failed: {why}");
            last.insert(id, why.to_string());
        }
    }

    fn clear(&self, id: crate::types::NodeId) {
        self.last
            .lock()
            .expect("heartbeat failures lock")
            .remove(&id);
    }
}

/// Longest failure text logged for a heartbeat.
const MAX_HEARTBEAT_CAUSE_BYTES: usize = 400;

/// A status's message with its error sources (where TLS failures are told).
fn cause(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    truncate(&text, MAX_HEARTBEAT_CAUSE_BYTES)
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
