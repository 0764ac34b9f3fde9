//! Security on real processes: the peer API is not on the client port, tokens and roles
//! (no token, a read-only token, chaos needs admin), a node whose certificate another CA signed
//! is refused at handshake, and a `kv local up --secure` cluster end to end.

mod common;

use common::{kv, ok, Cleanup};
use kv_proto::internal as ipb;
use kv_proto::v1 as pb;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

/// Generous bound on anything these tests wait for, on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
const ADMIN: &str = "0123456789abcdef0123456789abcdef";
const READER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A `kv server` process, killed on drop, logging to a file.
struct Node {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Node {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::kv_bin())
            .args(["server", "--name", name, "--cluster-name", "sec"])
            .args(args)
            .env_remove("KV_ENDPOINTS")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Node { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        e = e.tls_config(tls).unwrap();
    }
    e.connect_lazy()
}

fn with_token<T>(body: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(body);
    req.set_timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn put(keyspace: &str, key: &str) -> pb::PutRequest {
    pb::PutRequest {
        keyspace: keyspace.into(),
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn get(keyspace: &str, key: &str) -> pb::GetRequest {
    pb::GetRequest {
        keyspace: keyspace.into(),
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Retries `f` until it returns `Some`, failing after `WAIT` with `what`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_the_peer_api_apart_from_the_client_port() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = tmp.path().join("auth");
    std::fs::write(
        &auth,
        format!("{ADMIN} ops admin\n{READER} viewer read:*\n"),
    )
    .unwrap();
    let (client, peer) = (free_addr(), free_addr());
    let peers = format!("n1={client}/{peer}");
    let _node = Node::start(
        tmp.path(),
        "n1",
        &[
            "--peers",
            &peers,
            "--auth-file",
            auth.to_str().unwrap(),
            "--chaos",
        ],
    );
    let mut kv_client = pb::kv_client::KvClient::new(channel(&client, None));
    // Ready once the admin token writes.
    eventually("the node accepts the admin token's write", || {
        let mut c = kv_client.clone();
        async move { c.put(with_token(put("cp", "k"), Some(ADMIN))).await.ok() }
    })
    .await;

    let none = kv_client
        .put(with_token(put("cp", "k"), None))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert!(none.message().contains("Bearer TOKEN"), "{none:?}");
    let unknown = kv_client
        .get(with_token(
            get("cp", "k"),
            Some("not-a-listed-token-at-all"),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");

    let read = kv_client
        .get(with_token(get("cp", "k"), Some(READER)))
        .await
        .expect("a read-only token reads")
        .into_inner();
    assert!(read.found);
    let write = kv_client
        .put(with_token(put("cp", "k"), Some(READER)))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied, "{write:?}");
    assert!(write.message().contains("write:cp"), "{write:?}");
    let create = kv_client
        .create_keyspace(with_token(
            pb::CreateKeyspaceRequest {
                keyspace: Some(pb::Keyspace {
                    name: "new".into(),
                    ..Default::default()
                }),
            },
            Some(READER),
        ))
        .await
        .unwrap_err();
    assert_eq!(create.code(), Code::PermissionDenied, "{create:?}");

    // Chaos needs admin.
    let mut chaos = ipb::internal_client::InternalClient::new(channel(&client, None));
    let heal = || ipb::ChaosRequest::default();
    let denied = chaos
        .chaos(with_token(heal(), Some(READER)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    chaos
        .chaos(with_token(heal(), Some(ADMIN)))
        .await
        .expect("an admin may inject faults");

    // The peer API is not on the client port, whatever the token; it is on the peer port.
    let mut on_client = ipb::internal_client::InternalClient::new(channel(&client, None));
    let handshake = ipb::HandshakeRequest {
        cluster_name: "sec".into(),
        node_id: 1,
        peers: vec![peers.clone()],
    };
    let refused = on_client
        .handshake(with_token(handshake.clone(), Some(ADMIN)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let mut on_peer = ipb::internal_client::InternalClient::new(channel(&peer, None));
    on_peer
        .handshake(with_token(handshake, None))
        .await
        .expect("the peer port answers the handshake");
}

/// A CA, and certificates it signs for `sans`.
fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn write_cert(
    dir: &Path,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    name: &str,
) -> (String, String) {
    let params =
        rcgen::CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_another_ca_signed_is_refused_at_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster_ca = ca("cluster CA");
    let rogue_ca = ca("rogue CA");
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, cluster_ca.pem()).unwrap();
    let ca_path = ca_path.display().to_string();
    let (n1_cert, n1_key) = write_cert(tmp.path(), &cluster_ca, "n1");
    let (n2_cert, n2_key) = write_cert(tmp.path(), &rogue_ca, "n2");
    let addrs: Vec<String> = (0..4).map(|_| free_addr()).collect();
    let peers = format!("n1={}/{},n2={}/{}", addrs[0], addrs[1], addrs[2], addrs[3]);
    let n1 = Node::start(
        tmp.path(),
        "n1",
        &[
            "--peers",
            &peers,
            "--tls-cert",
            &n1_cert,
            "--tls-key",
            &n1_key,
            "--tls-ca",
            &ca_path,
        ],
    );
    let _n2 = Node::start(
        tmp.path(),
        "n2",
        &[
            "--peers",
            &peers,
            "--tls-cert",
            &n2_cert,
            "--tls-key",
            &n2_key,
            "--tls-ca",
            &ca_path,
        ],
    );
    // n1 dials n2 and finds n2's certificate unsigned by the cluster CA; n2 dials n1 and is
    // refused at n1's peer port. Both are in n1's log, naming n2 and the reason.
    let log = eventually("n1 logs both refusals", || {
        let text = n1.log_text();
        let dialed = text
            .lines()
            .any(|l| l.contains("heartbeat to node n2") && l.contains("UnknownIssuer"));
        let accepted = text
            .lines()
            .any(|l| l.contains("refused a TLS connection") && l.contains("peer port"));
        async move { (dialed && accepted).then_some(text) }
    })
    .await;
    assert!(log.contains("certificate"), "{log}");

    // A certificate binds its node's name: n1's own certificate cannot speak for n2.
    let as_n1 = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cluster_ca.pem()))
        .identity(Identity::from_pem(
            std::fs::read_to_string(&n1_cert).unwrap(),
            std::fs::read_to_string(&n1_key).unwrap(),
        ))
        .domain_name("n1");
    let mut impostor = ipb::internal_client::InternalClient::new(channel(&addrs[1], Some(as_n1)));
    let claim = ipb::HandshakeRequest {
        cluster_name: "sec".into(),
        node_id: 2,
        peers: peers.split(',').map(str::to_string).collect(),
    };
    let err = impostor
        .handshake(with_token(claim, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("names n1"), "{err:?}");

    // A client that presents no certificate is refused by the peer port at handshake, and a
    // plaintext client by both ports.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cluster_ca.pem()))
        .domain_name("n1");
    let mut no_cert = ipb::internal_client::InternalClient::new(channel(&addrs[1], Some(tls)));
    let err = no_cert
        .merkle_tree(with_token(ipb::MerkleTreeRequest::default(), None))
        .await
        .unwrap_err();
    // The handshake fails (how the client sees it varies: an alert, or a closed connection);
    // no handler ever answers.
    assert!(
        err.metadata().get("kv-node").is_none() && err.code() != Code::PermissionDenied,
        "refused at handshake: {err:?}"
    );
    for addr in [&addrs[0], &addrs[1]] {
        let mut plain = pb::kv_client::KvClient::new(channel(addr, None));
        let err = plain
            .get(with_token(get("cp", "k"), None))
            .await
            .unwrap_err();
        // No gRPC answer at all: the connection dies in the TLS layer, before any handler.
        assert!(err.metadata().get("kv-node").is_none(), "{addr}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_local_cluster_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(
        dir,
        &["local", "up", "--secure", "--chaos", "--base-port", "0"],
    ));
    // Every kv command finds the CA and the admin token in the folder.
    ok(&kv(dir, &["put", "greeting", "hello"]));
    assert_eq!(ok(&kv(dir, &["get", "greeting"])).trim(), "hello");
    ok(&kv(dir, &["chaos", "heal"]));
    let out = kv(dir, &["chaos", "heal", "--token", "x-not-a-valid-token-x"]);
    assert!(!out.status.success(), "fault injection needs a valid token");

    let cluster = common::cluster(dir);
    let node = &cluster["nodes"][0];
    let (client, peer) = (
        node["addr"].as_str().unwrap().to_string(),
        node["peer_addr"].as_str().unwrap().to_string(),
    );
    let secure = dir.join(".kv-local/secure");
    let ca = std::fs::read_to_string(secure.join("ca.pem")).unwrap();
    let tls = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));

    // The client port over TLS, without a token: refused.
    let mut c = pb::kv_client::KvClient::new(channel(&client, Some(tls())));
    let err = c
        .get(with_token(get("cp", "greeting"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The peer port with the client certificate (signed by the cluster CA, naming no node)
    // and no token: refused as well; the peer API itself is for nodes only.
    let identity = Identity::from_pem(
        std::fs::read_to_string(secure.join("client.pem")).unwrap(),
        std::fs::read_to_string(secure.join("client-key.pem")).unwrap(),
    );
    let peer_tls = tls().identity(identity).domain_name("n1");
    let mut p = pb::kv_client::KvClient::new(channel(&peer, Some(peer_tls.clone())));
    let err = p
        .get(with_token(get("cp", "greeting"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let token = std::fs::read_to_string(secure.join("admin-token")).unwrap();
    let mut internal = ipb::internal_client::InternalClient::new(channel(&peer, Some(peer_tls)));
    let err = internal
        .merkle_tree(with_token(
            ipb::MerkleTreeRequest::default(),
            Some(token.trim()),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("only cluster nodes"), "{err:?}");
    // Without the token the kv command is refused too (the CA alone is not enough).
    let out = common::kv_command(
        dir,
        &["get", "greeting", "--token", "x-not-a-valid-token-x"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown token"), "{err}");

    // The HTTP/JSON API asks for the same token and applies the same grants as gRPC; the
    // health and metrics routes stay open.
    let http = node["http_addr"]
        .as_str()
        .expect("kv local records the HTTP port");
    let put = r#"{"keyspace":"cp","key":"aHR0cA==","value":"eWVz"}"#;
    let (status, body) = http_post(http, "/v1/kv/put", put, None);
    assert_eq!(status, 401, "no token: {body}");
    assert!(body.contains("UNAUTHENTICATED"), "{body}");
    let (status, body) = http_post(http, "/v1/kv/put", put, Some("x-not-a-valid-token-x"));
    assert_eq!(status, 401, "unknown token: {body}");
    let (status, body) = http_post(http, "/v1/kv/put", put, Some(token.trim()));
    assert_eq!(status, 200, "admin token: {body}");
    let get = r#"{"keyspace":"cp","key":"aHR0cA=="}"#;
    let (status, body) = http_post(http, "/v1/kv/get", get, Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("eWVz"), "{body}");
    let (status, _) = http_post(http, "/healthz", "", None);
    assert_ne!(status, 401, "health stays open");
}

/// One HTTP/1.1 request on its own connection: the status and the body.
fn http_post(addr: &str, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let method = if body.is_empty() { "GET" } else { "POST" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad answer: {text}"));
    (status, text)
}
