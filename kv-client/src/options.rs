//! What a caller configures and gets back: client settings, per-request options, expected
//! values of a compare-and-swap, and the results of each operation.

use crate::net::{Dialer, TcpDialer};
use kv_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

/// Default deadline of one request, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the client picks the node a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// To the key's owner (first of its partition's preference list, or the cached CP leader).
    #[default]
    TokenAware,
    /// To each allowed node in turn.
    RoundRobin,
    /// To the allowed node with the fewest requests in flight from this client.
    LeastOutstanding,
}

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Addresses ("host:port") of nodes to discover the cluster from.
    pub seeds: Vec<String>,
    /// Routing policy.
    pub routing: Routing,
    /// Deadline of one request, retries included.
    pub timeout: Duration,
    /// Talk only to the seeds (like `etcdctl --endpoints`), never to other discovered nodes.
    pub seeds_only: bool,
    /// Makes connections (TCP, TLS, or simulated).
    pub dialer: Arc<dyn Dialer>,
    /// Bearer token sent with every request (nodes run with `--auth-file` require one).
    pub token: Option<String>,
    /// The id every write carries, with a sequence number, so a retry is applied at most once.
    /// `None` (or 0) draws a random one; a simulation sets it from its seed so runs repeat.
    /// Two live clients must never share one.
    pub client_id: Option<u64>,
}

impl ClientConfig {
    /// Settings with the given seeds and defaults for everything else.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        Self {
            seeds: seeds.into_iter().map(Into::into).collect(),
            routing: Routing::default(),
            timeout: DEFAULT_TIMEOUT,
            seeds_only: false,
            dialer: Arc::new(TcpDialer),
            token: None,
            client_id: None,
        }
    }

    /// Adds the token, if any, to `req` as `authorization: Bearer TOKEN`. A token that is not
    /// valid header text is left out: the node then answers UNAUTHENTICATED, naming the header.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            if let Ok(v) = format!("Bearer {token}").parse() {
                req.metadata_mut().insert(AUTHORIZATION_HEADER, v);
            }
        }
    }
}

/// Metadata carrying the bearer token.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Per-request options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// AP: replicas to wait for.
    pub consistency: pb::Consistency,
    /// AP: explicit R (0 = from consistency).
    pub read_replicas: u32,
    /// AP: explicit W (0 = from consistency).
    pub write_replicas: u32,
    /// CP: allow a possibly stale read from any replica.
    pub stale: bool,
    /// Overrides the client's deadline for this request.
    pub timeout: Option<Duration>,
}

impl Options {
    pub(crate) fn to_pb(&self) -> pb::RequestOptions {
        pb::RequestOptions {
            consistency: self.consistency as i32,
            read_replicas: self.read_replicas,
            write_replicas: self.write_replicas,
            stale: self.stale,
        }
    }
}

/// What a compare-and-swap expects the key to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The key's current revision.
    Version(u64),
    /// The key's current value.
    Value(Vec<u8>),
    /// The key must not exist.
    Absent,
}

/// Result of a get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The value, if the key exists.
    pub value: Option<Vec<u8>>,
    /// Its version, if the key exists.
    pub version: Option<pb::Version>,
    /// The node that served the read.
    pub served_by: String,
    /// True when the read may be stale (asked for with `stale`).
    pub maybe_stale: bool,
    /// The node the client sent the answered attempt to (name, else address): when it is not
    /// `served_by`, a server forwarded the request (one server-side hop).
    pub sent_to: String,
}

/// Result of a put or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// The version the write committed at.
    pub version: Option<pb::Version>,
    /// The node that coordinated the write.
    pub served_by: String,
    /// The node the client sent the answered attempt to (see `GetResult::sent_to`).
    pub sent_to: String,
}

/// Result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the swap happened.
    pub succeeded: bool,
    /// New version on success; current version on mismatch.
    pub version: Option<pb::Version>,
    /// Current value on mismatch (None if absent).
    pub current_value: Option<Vec<u8>>,
    /// The node that served it.
    pub served_by: String,
    /// The node the client sent the answered attempt to (see `GetResult::sent_to`).
    pub sent_to: String,
}
