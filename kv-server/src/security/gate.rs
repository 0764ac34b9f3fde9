//! The gate every request passes before a handler sees it: who is calling (a cluster node,
//! known by its certificate on the peer port; a token's principal; or anyone, when the node runs
//! without `--auth-file`), and the rules that need no request body: the peer API is for nodes
//! only, fault injection and keyspace creation need admin. Rules that depend on a keyspace are
//! checked by the handlers through `authorize`, with the `Caller` the gate stored in the request.

use super::auth::{Action, AuthTable, Principal};
use kv_core::headers::NODE_HEADER;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Metadata carrying a client's token: `authorization: Bearer TOKEN`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Path prefix of the peer API's methods.
const INTERNAL_PREFIX: &str = "/kv.internal.v1.Internal/";
/// The fault-injection method: an admin call, so it is answered on both ports (the client
/// port refuses every other peer method); needs admin when auth is on.
const CHAOS_PATH: &str = "/kv.internal.v1.Internal/Chaos";
/// Path prefix of the public API's methods.
const PUBLIC_PREFIX: &str = "/kv.v1.Kv/";
/// Public methods that change the cluster or read a whole keyspace past the grants: admin only
/// (as etcd keeps its snapshot call to root). A backup reads every record of a keyspace, and an
/// import writes records with timestamps of the caller's choosing.
const ADMIN_PATHS: [&str; 3] = [
    "/kv.v1.Kv/CreateKeyspace",
    "/kv.v1.Kv/SnapshotPartition",
    "/kv.v1.Kv/ImportRecords",
];

/// Which API a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The public API (`kv.v1.Kv`), reflection and the admin-only Chaos call: `--listen`.
    Client,
    /// The peer API (`kv.internal.v1.Internal`) and forwarded public requests: `--peer-listen`.
    Peer,
    /// Both on one port: a node whose peer address is its client address.
    Both,
}

/// Who sent a request, as the gate established it (stored in the request's extensions).
#[derive(Debug, Clone)]
pub enum Caller {
    /// The node runs without `--auth-file`: every client may do everything.
    Anyone,
    /// A cluster node, named by its certificate (peer port with TLS).
    Node(String),
    /// A token's holder.
    Principal(Arc<Principal>),
}

/// What the gate needs to know about its node.
#[derive(Debug, Clone)]
pub struct GatePolicy {
    /// The API of the listener.
    pub api: Api,
    /// Tokens and roles; `None` when the node runs without `--auth-file`.
    pub auth: Option<Arc<AuthTable>>,
    /// Peers are known by certificate (the peer port runs mutual TLS).
    pub peer_tls: bool,
    /// The cluster's node names (a peer certificate must name one of them).
    pub members: Vec<String>,
}

impl GatePolicy {
    /// The caller of a request to `path` with these headers and peer certificates, or the
    /// status refusing it.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, Status> {
        let node = match (self.api, self.peer_tls) {
            (Api::Peer | Api::Both, true) => certs.and_then(|c| self.node_named_by(c)),
            _ => None,
        };
        if path.starts_with(INTERNAL_PREFIX) && path != CHAOS_PATH {
            if self.api == Api::Client {
                return Err(Status::unimplemented(
                    "the peer API is served on the peer port only (--peer-listen)",
                ));
            }
            return match node {
                Some(name) => Ok(Caller::Node(name)),
                None if !self.peer_tls => Ok(Caller::Anyone),
                None => Err(Status::permission_denied(format!(
                    "only cluster nodes may call the peer API; the certificate presented names none of {}",
                    self.members.join(", ")
                ))),
            };
        }
        if let Some(name) = node.filter(|_| path.starts_with(PUBLIC_PREFIX)) {
            // A request another node forwarded: its entry node checked the token.
            return Ok(Caller::Node(name));
        }
        let Some(auth) = &self.auth else {
            return Ok(Caller::Anyone);
        };
        let guarded = path.starts_with(PUBLIC_PREFIX) || path == CHAOS_PATH;
        if !guarded {
            // Reflection (it lists the public API only) and unknown paths (UNIMPLEMENTED).
            return Ok(Caller::Anyone);
        }
        let principal = match bearer_token(headers) {
            None => {
                return Err(Status::unauthenticated(
                    "this node requires a token: send metadata `authorization: Bearer TOKEN` (kv: --token or KV_TOKEN)",
                ))
            }
            Some(token) => auth.principal(token).ok_or_else(|| {
                Status::unauthenticated(
                    "unknown token: it is not in this node's --auth-file; ask an admin for one",
                )
            })?,
        };
        if (path == CHAOS_PATH || ADMIN_PATHS.contains(&path)) && !principal.may(Action::Admin) {
            return Err(denied(principal, Action::Admin));
        }
        Ok(Caller::Principal(Arc::new(principal.clone())))
    }

    /// The member named by the leaf certificate, if it names one. rustls verified the chain
    /// to the cluster CA during the handshake; this binds the certificate to one node.
    fn node_named_by(&self, certs: &[CertificateDer<'static>]) -> Option<String> {
        let leaf = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
        self.members
            .iter()
            .find(|name| {
                ServerName::try_from(name.as_str())
                    .is_ok_and(|n| leaf.verify_is_valid_for_subject_name(&n).is_ok())
            })
            .cloned()
    }
}

fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION_HEADER)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn denied(principal: &Principal, action: Action<'_>) -> Status {
    Status::permission_denied(format!(
        "token {:?} may not {action}; its grants are {}",
        principal.name,
        principal.grants_text()
    ))
}

/// Checks that the caller the gate stored in `req` may do `action`. A request that did not
/// pass a gate (a handler called in-process by a test) is allowed.
pub fn authorize<T>(req: &tonic::Request<T>, action: Action<'_>) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller::Principal(p)) if !p.may(action) => Err(denied(p, action)),
        _ => Ok(()),
    }
}

/// Checks that a peer request claiming to come from node `claimed` (its name, `None` for an
/// id no member has) was sent by that node: on a peer port with TLS the certificate names the
/// sender, and one node must not speak for another. Without peer TLS there is nothing to check.
pub fn check_sender<T>(req: &tonic::Request<T>, claimed: Option<&str>) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller::Node(name)) if claimed != Some(name.as_str()) => {
            Err(Status::permission_denied(format!(
                "the request claims to come from node {}, but the certificate presented names {name}",
                claimed.unwrap_or("(unknown id)")
            )))
        }
        _ => Ok(()),
    }
}

/// The gate as a tower service around the node's gRPC services.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    policy: Arc<GatePolicy>,
    node: Arc<str>,
}

impl<S> Gate<S> {
    /// `inner` behind the gate of `policy`, on node `node` (named in every refusal).
    pub fn new(inner: S, policy: Arc<GatePolicy>, node: &str) -> Self {
        Self {
            inner,
            policy,
            node: node.into(),
        }
    }

    /// A trailers-only answer refusing the request, named after this node like every status.
    fn refuse<R: Default>(&self, status: Status) -> http::Response<R> {
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

impl<S, B, R> Service<http::Request<B>> for Gate<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let admitted = self.policy.admit(
            request.uri().path(),
            request.headers(),
            certs.as_deref().map(Vec::as_slice),
        );
        match admitted {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                let response = self.refuse(status);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const ADMIN: &str = "0123456789abcdef0123456789abcdef";
    const READER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn policy(api: Api, auth: bool, peer_tls: bool) -> GatePolicy {
        let table = format!("{ADMIN} ops admin\n{READER} viewer read:*\n");
        GatePolicy {
            api,
            auth: auth.then(|| Arc::new(AuthTable::parse(&table).unwrap())),
            peer_tls,
            members: vec!["n1".into(), "n2".into()],
        }
    }

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(AUTHORIZATION_HEADER, format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_required_and_admin_paths_need_admin() {
        let p = policy(Api::Client, true, false);
        let put = "/kv.v1.Kv/Put";
        let none = p.admit(put, &headers(None), None).unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        assert!(none.message().contains("Bearer TOKEN"), "{none:?}");
        let unknown = p.admit(put, &headers(Some("nope")), None).unwrap_err();
        assert_eq!(unknown.code(), Code::Unauthenticated);
        assert!(matches!(
            p.admit(put, &headers(Some(READER)), None),
            Ok(Caller::Principal(_))
        ));
        let create = p
            .admit("/kv.v1.Kv/CreateKeyspace", &headers(Some(READER)), None)
            .unwrap_err();
        assert_eq!(create.code(), Code::PermissionDenied);
        assert!(create.message().contains("needs admin"), "{create:?}");
        p.admit("/kv.v1.Kv/CreateKeyspace", &headers(Some(ADMIN)), None)
            .unwrap();
        for backup in ["/kv.v1.Kv/SnapshotPartition", "/kv.v1.Kv/ImportRecords"] {
            let refused = p.admit(backup, &headers(Some(READER)), None).unwrap_err();
            assert_eq!(refused.code(), Code::PermissionDenied, "{backup}");
            p.admit(backup, &headers(Some(ADMIN)), None).unwrap();
        }
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        p.admit(reflection, &headers(None), None).unwrap();
    }

    #[test]
    fn chaos_needs_admin_and_the_peer_api_is_not_on_the_client_port() {
        let peer = policy(Api::Peer, true, false);
        let chaos = "/kv.internal.v1.Internal/Chaos";
        let denied = peer.admit(chaos, &headers(Some(READER)), None).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            peer.admit(chaos, &headers(None), None).unwrap_err().code(),
            Code::Unauthenticated
        );
        peer.admit(chaos, &headers(Some(ADMIN)), None).unwrap();
        let client = policy(Api::Client, false, false);
        let raft = "/kv.internal.v1.Internal/Raft";
        assert_eq!(
            client.admit(raft, &headers(None), None).unwrap_err().code(),
            Code::Unimplemented
        );
    }

    #[test]
    fn with_peer_tls_the_peer_api_needs_a_node_certificate() {
        let p = policy(Api::Peer, true, true);
        let raft = "/kv.internal.v1.Internal/Raft";
        let err = p.admit(raft, &headers(Some(ADMIN)), None).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("n1, n2"), "{err:?}");
        let err = p.admit("/kv.v1.Kv/Put", &headers(None), None).unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "a non-node needs a token"
        );
    }

    #[test]
    fn handlers_check_keyspace_grants() {
        let viewer = AuthTable::parse(&format!("{READER} viewer read:orders\n")).unwrap();
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(Caller::Principal(Arc::new(
            viewer.principal(READER).unwrap().clone(),
        )));
        authorize(&req, Action::Read("orders")).unwrap();
        let err = authorize(&req, Action::Write("orders")).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("write:orders"), "{err:?}");
        assert!(authorize(&req, Action::Read("users")).is_err());
        let mut node = tonic::Request::new(());
        node.extensions_mut().insert(Caller::Node("n2".into()));
        authorize(&node, Action::Write("orders")).unwrap();
    }

    #[test]
    fn a_node_cannot_speak_for_another() {
        let mut req = tonic::Request::new(());
        check_sender(&req, Some("n1")).expect("no gate, nothing to check");
        req.extensions_mut().insert(Caller::Node("n2".into()));
        check_sender(&req, Some("n2")).unwrap();
        let err = check_sender(&req, Some("n1")).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("names n2"), "{err:?}");
        assert!(check_sender(&req, None).is_err());
    }
}
