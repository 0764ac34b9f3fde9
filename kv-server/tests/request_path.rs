//! The request path of real nodes on loopback TCP, seen from a gRPC client that knows nothing
//! but kv.proto: hostile and malformed input gets kv.proto's codes (never INTERNAL, OUT_OF_RANGE
//! or CANCELLED) with short messages naming the limit, a request id makes a retried write apply
//! once, a node refuses writes past its in-flight limit, concurrent large CP writes neither
//! stall their partition nor bounce between nodes as ABORTED, an anti-entropy range answer
//! comes in pages that each fit a node-to-node message, however large the values, and AP
//! replica writes sent to a peer at once share calls while each gets its own answer.

use kv_core::headers::NODE_HEADER;
use kv_core::limits::{MAX_KEYSPACE_NAME_BYTES, MAX_STATUS_MESSAGE_BYTES, MESSAGE_HEADROOM_BYTES};
use kv_core::net::{Dialer, TcpDialer};
use kv_proto::v1 as pb;
use kv_proto::v1::kv_client::KvClient;
use kv_server::clock::SystemClock;
use kv_server::config::NodeConfig;
use kv_server::cp::CpConfig;
use kv_server::node::Node;
use kv_server::storage::memory::MemoryEngine;
use kv_server::types::Member;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Generous bound on anything that must eventually happen on a loaded 2-core machine.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Deadline of ordinary test requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A node serving on loopback until dropped.
struct Running {
    node: Arc<Node>,
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Listeners on free loopback ports, and the members they make (n1, n2, ...).
async fn listeners(n: usize) -> (Vec<TcpListener>, Vec<Member>) {
    let mut listeners = vec![];
    let mut members = vec![];
    for i in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.push(Member {
            id: i as u64,
            name: format!("n{i}"),
            addr: l.local_addr().unwrap().to_string(),
            peer_addr: l.local_addr().unwrap().to_string(),
        });
        listeners.push(l);
    }
    (listeners, members)
}

/// Starts node `name` of `peers` on `listener`; `on_disk` puts its data in sled in a
/// temporary directory (real fsyncs), else in memory.
async fn start(
    listener: TcpListener,
    peers: Vec<Member>,
    name: &str,
    on_disk: bool,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Running {
    let mut config = NodeConfig::new(name, "test", peers);
    tweak(&mut config);
    let dir = on_disk.then(|| tempfile::tempdir().unwrap());
    config.data_dir = dir.as_ref().map(|d| d.path().to_path_buf());
    let engine = match on_disk {
        true => kv_server::node::open_engine(&config).unwrap(),
        false => Arc::new(MemoryEngine::new()),
    };
    let node = Node::new(
        config,
        engine,
        Arc::new(TcpDialer),
        Arc::new(SystemClock::default()),
    )
    .unwrap();
    node.start_cp(CpConfig::default()).await.unwrap();
    let addr = node.me.addr.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let heartbeats = tokio::spawn(kv_server::server::heartbeat_loop(node.clone()));
    let served = node.clone();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = kv_server::server::serve_tcp(served, listener, shutdown).await;
        heartbeats.abort();
    });
    Running {
        node,
        addr,
        stop: Some(stop),
        _dir: dir,
    }
}

/// A one-node cluster in memory.
async fn single(tweak: impl FnOnce(&mut NodeConfig)) -> Running {
    let (mut ls, peers) = listeners(1).await;
    start(ls.remove(0), peers, "n1", false, tweak).await
}

fn client(addr: &str) -> KvClient<Channel> {
    KvClient::new(TcpDialer.channel(addr).unwrap())
}

fn request<T>(body: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.set_timeout(timeout);
    r
}

fn put(keyspace: &str, key: &[u8], value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest {
        keyspace: keyspace.into(),
        key: key.to_vec(),
        value,
        ..Default::default()
    }
}

/// Retries `f` until it succeeds or `EVENTUALLY` passes.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > EVENTUALLY => panic!("{what}: still failing: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until a CP write through `addr` succeeds (the partition has a leader).
async fn cp_ready(addr: &str) {
    let mut c = client(addr);
    eventually("a first CP write", || {
        let mut c = c.clone();
        async move {
            c.put(request(put("cp", b"ready", b"1".to_vec()), REQUEST_TIMEOUT))
                .await
        }
    })
    .await;
    c.get(request(
        pb::GetRequest {
            keyspace: "cp".into(),
            key: b"ready".to_vec(),
            options: None,
        },
        REQUEST_TIMEOUT,
    ))
    .await
    .unwrap();
}

/// Checks what every refusal must be: the expected code, the node named in its header, and a
/// short message.
fn assert_refusal(status: &Status, code: Code, what: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.metadata().get(NODE_HEADER).is_some(),
        "{what}: no {NODE_HEADER} header: {status:?}"
    );
    assert!(
        status.message().len() <= MAX_STATUS_MESSAGE_BYTES + 8,
        "{what}: a message of {} bytes",
        status.message().len()
    );
}

// ---- raw gRPC: bytes that are not what kv.proto describes ----

/// Sends and receives message bodies as raw bytes.
#[derive(Debug, Clone, Default)]
struct Raw;

#[derive(Debug)]
struct RawCoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// One unary call of `method` whose request message is `body`, byte for byte.
async fn raw_call(addr: &str, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(TcpDialer.channel(addr).unwrap());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(request(body, REQUEST_TIMEOUT), path, Raw)
        .await
        .map(|r| r.into_inner())
}

/// One HTTP/2 request to `method` whose body (gRPC framing included) is `body`.
async fn raw_http(addr: &str, method: &str, body: &str) -> Status {
    use tonic::codegen::Service;
    let mut channel = TcpDialer.channel(addr).unwrap();
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body.to_string()))
        .unwrap();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, channel.call(request))
        .await
        .expect("the node answers")
        .expect("an HTTP answer");
    // An error answer has no message, so its status is in the headers (trailers-only).
    Status::from_header_map(response.headers()).expect("a gRPC status in the headers")
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_the_node_keeps_serving() {
    let n = single(|_| {}).await;
    cp_ready(&n.addr).await;

    let valid = put("cp", b"key", b"value".to_vec()).encode_to_vec();
    // Field 1 (keyspace, a string) holding bytes that are not UTF-8.
    let bad_utf8 = vec![0x0a, 0x02, 0xff, 0xfe, 0x12, 0x01, b'k'];
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("garbage bytes", "/kv.v1.Kv/Put", vec![0xff; 32]),
        (
            "a truncated message",
            "/kv.v1.Kv/Put",
            valid[..valid.len() - 3].to_vec(),
        ),
        (
            "invalid UTF-8 in a string",
            "/kv.v1.Kv/Put",
            bad_utf8.clone(),
        ),
        ("invalid UTF-8 in a get", "/kv.v1.Kv/Get", bad_utf8),
        (
            "garbage to the internal service",
            "/kv.internal.v1.Internal/Raft",
            vec![0xff; 32],
        ),
    ];
    for (what, method, body) in cases {
        let err = raw_call(&n.addr, method, body).await.unwrap_err();
        assert_refusal(&err, Code::InvalidArgument, what);
        assert!(err.message().contains("malformed"), "{what}: {err:?}");
    }

    // Broken gRPC framing, below protobuf: each byte here is ASCII, so a string carries it.
    let frames = [
        ("a frame longer than the body", "\0\0\0\0\x64abc"),
        (
            "a compressed frame without an encoding",
            "\x01\0\0\0\x03abc",
        ),
        ("an unknown frame flag", "\x07\0\0\0\0"),
        ("no message at all", ""),
    ];
    for (what, body) in frames {
        let status = raw_http(&n.addr, "/kv.v1.Kv/Put", body).await;
        assert_refusal(&status, Code::InvalidArgument, what);
    }

    // The node still serves, and none of the above wrote anything.
    let mut c = client(&n.addr);
    c.put(request(
        put("cp", b"after", b"ok".to_vec()),
        REQUEST_TIMEOUT,
    ))
    .await
    .expect("the node keeps serving");
    let got = c
        .get(request(
            pb::GetRequest {
                keyspace: "cp".into(),
                key: b"key".to_vec(),
                options: None,
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found, "a malformed put changed nothing");
}

#[tokio::test]
async fn oversized_values_are_invalid_argument_naming_the_limit() {
    const MAX_VALUE: usize = 64 * 1024;
    let n = single(|c| c.max_value_bytes = MAX_VALUE).await;
    let mut c = client(&n.addr);
    // Just over the value limit: the message decodes and validation refuses it.
    // Far over: tonic's message limit refuses it before it is decoded.
    for size in [
        MAX_VALUE + 1,
        MAX_VALUE + MESSAGE_HEADROOM_BYTES + 1,
        5 << 20,
    ] {
        let err = c
            .put(request(put("cp", b"k", vec![1; size]), REQUEST_TIMEOUT))
            .await
            .unwrap_err();
        let what = format!("a value of {size} bytes");
        assert_refusal(&err, Code::InvalidArgument, &what);
        assert!(
            err.message().contains(&MAX_VALUE.to_string())
                && err.message().contains("--max-value-bytes"),
            "{what}: {err:?}"
        );
    }
    let err = c
        .compare_and_swap(request(
            pb::CompareAndSwapRequest {
                keyspace: "cp".into(),
                key: b"k".to_vec(),
                new_value: vec![1; 5 << 20],
                expected: Some(pb::compare_and_swap_request::Expected::ExpectAbsent(true)),
                ..Default::default()
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .unwrap_err();
    assert_refusal(&err, Code::InvalidArgument, "a 5 MiB compare-and-swap");
}

#[tokio::test]
async fn long_keyspace_names_are_refused_with_short_messages() {
    let n = single(|_| {}).await;
    let mut c = client(&n.addr);
    let long = "k".repeat(20_000);
    let get = |keyspace: &str| {
        request(
            pb::GetRequest {
                keyspace: keyspace.into(),
                key: b"k".to_vec(),
                options: None,
            },
            REQUEST_TIMEOUT,
        )
    };
    let err = c.get(get(&long)).await.unwrap_err();
    assert_refusal(&err, Code::InvalidArgument, "a 20 KB keyspace name");
    assert!(
        err.message()
            .contains(&format!("limit of {MAX_KEYSPACE_NAME_BYTES} bytes")),
        "{err:?}"
    );
    let err = c
        .put(request(put(&long, b"k", b"v".to_vec()), REQUEST_TIMEOUT))
        .await
        .unwrap_err();
    assert_refusal(
        &err,
        Code::InvalidArgument,
        "a put to a 20 KB keyspace name",
    );
    let err = c
        .create_keyspace(request(
            pb::CreateKeyspaceRequest {
                keyspace: Some(pb::Keyspace {
                    name: long.clone(),
                    mode: pb::Mode::Ap as i32,
                    ..Default::default()
                }),
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .unwrap_err();
    assert_refusal(
        &err,
        Code::InvalidArgument,
        "creating a 20 KB keyspace name",
    );

    // At the limit the name is looked up, and the answer echoes it in full.
    let name = "x".repeat(MAX_KEYSPACE_NAME_BYTES);
    let err = c.get(get(&name)).await.unwrap_err();
    assert_refusal(&err, Code::NotFound, "an unknown keyspace");
    assert!(err.message().contains(&name), "{err:?}");
    // Multi-byte characters under the byte limit, each escaped in the message: still short.
    let err = c.get(get(&"é".repeat(32))).await.unwrap_err();
    assert_refusal(&err, Code::NotFound, "an unknown non-ASCII keyspace");
}

/// One gRPC call over a bare HTTP/2 connection with `grpc-timeout: timeout`: unlike tonic's
/// client, it keeps waiting past the deadline, so the status is the server's own.
async fn bare_call(addr: &str, method: &str, timeout: &str, message: Vec<u8>) -> Status {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    // The server may answer (and reset the stream) before the whole body is sent.
    let _ = stream.send_data(frame.into(), true);
    let response = tokio::time::timeout(REQUEST_TIMEOUT, response)
        .await
        .expect("the node answers")
        .unwrap();
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    Status::from_header_map(&trailers).expect("a status in the trailers")
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded_never_cancelled() {
    let n = single(|_| {}).await;
    cp_ready(&n.addr).await;
    let mut expired = 0;
    for i in 0..60usize {
        // Large values take more than the deadline just to arrive.
        let value = vec![1; if i % 3 == 0 { 512 * 1024 } else { 16 }];
        let body = put("cp", format!("k{i}").as_bytes(), value).encode_to_vec();
        let status = bare_call(&n.addr, "/kv.v1.Kv/Put", "1m", body).await;
        if status.code() != Code::Ok {
            assert_refusal(
                &status,
                Code::DeadlineExceeded,
                "a put with a 1 ms deadline",
            );
            expired += 1;
        }
    }
    assert!(
        expired > 0,
        "some 1 ms puts must have missed their deadline"
    );
}

#[tokio::test]
async fn a_write_retried_with_its_request_id_applies_once() {
    let n = single(|_| {}).await;
    cp_ready(&n.addr).await;
    let mut c = client(&n.addr);
    let id = |seq| Some(pb::RequestId { client_id: 77, seq });
    let tagged = |key: &[u8], value: &[u8], seq| pb::PutRequest {
        request_id: id(seq),
        ..put("cp", key, value.to_vec())
    };
    let revision = |v: Option<pb::Version>| v.expect("a version").revision;

    let first = c
        .put(request(tagged(b"k", b"one", 1), REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    let other = c
        .put(request(put("cp", b"k", b"two".to_vec()), REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    // The retry of the first put: the first answer again, and "two" is not overwritten.
    let retry = c
        .put(request(tagged(b"k", b"one", 1), REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revision(retry.version), revision(first.version));
    assert!(revision(other.version) > revision(first.version));
    let got = c
        .get(request(
            pb::GetRequest {
                keyspace: "cp".into(),
                key: b"k".to_vec(),
                options: None,
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"two", "the retried put did not apply again");

    // A swap from "absent" succeeds once; its retry gets the same success, not a mismatch.
    let cas = pb::CompareAndSwapRequest {
        keyspace: "cp".into(),
        key: b"fresh".to_vec(),
        expected: Some(pb::compare_and_swap_request::Expected::ExpectAbsent(true)),
        new_value: b"v".to_vec(),
        options: None,
        request_id: id(2),
    };
    let first = c
        .compare_and_swap(request(cas.clone(), REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    let retry = c
        .compare_and_swap(request(cas.clone(), REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert!(first.succeeded);
    assert_eq!(retry, first, "the retry's answer is the first one");
    // Without an id (client id 0), the same swap is evaluated again and mismatches.
    let untagged = pb::CompareAndSwapRequest {
        request_id: Some(pb::RequestId {
            client_id: 0,
            seq: 2,
        }),
        ..cas
    };
    let again = c
        .compare_and_swap(request(untagged, REQUEST_TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.succeeded);
}

#[tokio::test]
async fn writes_past_the_in_flight_limit_are_resource_exhausted() {
    // Three members, only n1 running: its CP writes wait for a quorum that never comes, so
    // they stay in flight until their deadline.
    let (mut ls, peers) = listeners(3).await;
    let n = start(ls.remove(0), peers, "n1", false, |c| {
        c.max_writes_in_flight = 2
    })
    .await;
    drop(ls); // n2 and n3 refuse connections.
    let c = client(&n.addr);
    let held: Vec<_> = (0..2)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let body = put("cp", format!("held{i}").as_bytes(), b"v".to_vec());
                c.put(request(body, Duration::from_secs(4))).await
            })
        })
        .collect();
    let start = Instant::now();
    while n.node.writes_in_flight() < 2 {
        assert!(start.elapsed() < EVENTUALLY, "the writes never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut extra = c.clone();
    let err = extra
        .delete(request(
            pb::DeleteRequest {
                keyspace: "ap".into(),
                key: b"k".to_vec(),
                ..Default::default()
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .unwrap_err();
    assert_refusal(&err, Code::ResourceExhausted, "a third write");
    assert!(err.message().contains("max_writes_in_flight"), "{err:?}");
    // Reads are not writes: they are still served.
    extra
        .ring(request(pb::RingRequest {}, REQUEST_TIMEOUT))
        .await
        .unwrap();
    for h in held {
        let err = h.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert_eq!(
        n.node.writes_in_flight(),
        0,
        "answered writes give their slot back"
    );
    let err = extra
        .put(request(
            put("cp", b"k", b"v".to_vec()),
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_cp_writes_commit_and_the_partition_keeps_serving() {
    const WRITERS: usize = 8;
    const VALUE_BYTES: usize = 1024 * 1024;
    let (ls, peers) = listeners(3).await;
    let mut nodes = vec![];
    for (l, m) in ls.into_iter().zip(peers.clone()) {
        nodes.push(start(l, peers.clone(), &m.name, true, |_| {}).await);
    }
    cp_ready(&nodes[0].addr).await;

    // Eight clients write 1 MiB to one key at once, each through another node in turn, so
    // followers forward to the leader.
    let began = Instant::now();
    let writes: Vec<_> = (0..WRITERS)
        .map(|i| {
            let mut c = client(&nodes[i % nodes.len()].addr);
            tokio::spawn(async move {
                let body = put("cp", b"big", vec![i as u8; VALUE_BYTES]);
                c.put(request(body, Duration::from_secs(30))).await
            })
        })
        .collect();
    let mut outcomes = vec![];
    for w in writes {
        outcomes.push(w.await.unwrap());
    }
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "every large write commits ({} of {WRITERS} failed in {:?}): {failed:?}",
        failed.len(),
        began.elapsed()
    );

    // The partition keeps serving small writes at once.
    let mut c = client(&nodes[1].addr);
    let small = Instant::now();
    c.put(request(
        put("cp", b"big", b"small".to_vec()),
        Duration::from_secs(5),
    ))
    .await
    .expect("a small write after the large ones");
    assert!(small.elapsed() < Duration::from_secs(5));
    for n in &nodes {
        let got = client(&n.addr)
            .get(request(
                pb::GetRequest {
                    keyspace: "cp".into(),
                    key: b"big".to_vec(),
                    options: None,
                },
                REQUEST_TIMEOUT,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, b"small", "read through {}", n.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merkle_range_answers_stay_within_the_peer_message_limit_whatever_the_values() {
    // Twelve values at the 1 MiB limit in one partition: one answer holding them all would be
    // about three times the node-to-node message limit, which the receiving peer refuses to
    // decode (so anti-entropy could never repair that range).
    const VALUES: usize = 12;
    let node = single(|_| {}).await;
    let max_value = node.node.config.max_value_bytes;
    let limit = kv_core::limits::max_peer_message_bytes(max_value);
    let partitions = node.node.ring.partition_count();
    let partition = 3;
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("large-{i}").into_bytes())
        .filter(|k| kv_core::placement::partition_for_key(k, partitions) == partition)
        .take(VALUES)
        .collect();
    let c = client(&node.addr);
    for (i, key) in keys.iter().enumerate() {
        eventually("an AP put", || {
            let mut c = c.clone();
            // One node of a three-replica keyspace: its own replica is the one ack.
            let mut body = put("ap", key, vec![i as u8; max_value]);
            body.options = Some(pb::RequestOptions {
                consistency: pb::Consistency::One as i32,
                ..Default::default()
            });
            async move { c.put(request(body, REQUEST_TIMEOUT)).await }
        })
        .await;
    }

    // A peer's view: page through every leaf, decoding answers of any size to measure them.
    let channel = TcpDialer.channel(&node.addr).unwrap();
    let mut peer = kv_proto::internal::internal_client::InternalClient::new(channel)
        .max_decoding_message_size(usize::MAX);
    let keyspace = node.node.keyspace("ap").await.unwrap().id.to_string();
    let leaves: Vec<u32> = (0..kv_server::ap::merkle::MERKLE_LEAVES as u32).collect();
    let (mut after, mut got, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = peer
            .merkle_range(kv_proto::internal::MerkleRangeRequest {
                keyspace: keyspace.clone(),
                partition,
                leaves: leaves.clone(),
                after: after.clone(),
            })
            .await
            .expect("a Merkle range page")
            .into_inner();
        pages += 1;
        let size = page.encoded_len();
        assert!(
            size <= limit,
            "page {pages} is {size} bytes, over the node-to-node limit of {limit}"
        );
        got.extend(page.records.iter().map(|r| r.key.clone()));
        if page.resume_after.is_empty() {
            break;
        }
        assert!(page.resume_after > after, "pages move forward");
        after = page.resume_after;
        assert!(pages <= VALUES, "more pages than records");
    }
    let mut want = keys.clone();
    want.sort();
    assert_eq!(got, want, "every record once, in key order");
    assert!(
        pages > 1,
        "{VALUES} values of {max_value} bytes fit no single page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_replica_writes_sent_at_once_share_calls_and_each_gets_its_own_answer() {
    use kv_server::ap::{ApRecord, ApTransport, TransportError};
    use kv_server::metrics::metrics;
    use kv_server::peers::PeerLinks;
    use kv_server::transport::GrpcTransport;
    use kv_server::types::Hlc;

    const WRITES: usize = 200;
    let (mut ls, peers) = listeners(2).await;
    // n1 runs on sled (real group commit); this test plays n2, whose transport sends to n1.
    let n1 = start(ls.remove(0), peers.clone(), "n1", true, |_| {}).await;
    let n2 = GrpcTransport::new(Arc::new(PeerLinks::new(2, &peers, Arc::new(TcpDialer))));
    let ks = n1.node.keyspace("ap").await.unwrap().id;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = |key: &str, physical_ms: u64| ApRecord {
        key: key.as_bytes().to_vec(),
        hlc: Hlc {
            physical_ms,
            logical: 0,
            node_id: 2,
        },
        value: Some(format!("value of {key}").into_bytes()),
    };
    let calls_before = metrics().ap_write_calls.get();
    let mut sends: Vec<_> = (0..WRITES)
        .map(|i| n2.write(1, ks, record(&format!("batched-{i}"), now_ms), None))
        .collect();
    // Two the replica must refuse, alone: a hint for a node that is not a member, and a
    // timestamp an hour ahead of its clock.
    sends.push(n2.write(1, ks, record("bad-hint", now_ms), Some(99)));
    sends.push(n2.write(1, ks, record("future", now_ms + 3_600_000), None));
    let answers = futures::future::join_all(sends).await;
    let calls = metrics().ap_write_calls.get() - calls_before;

    for (i, answer) in answers[..WRITES].iter().enumerate() {
        assert!(answer.is_ok(), "write {i}: {answer:?}");
    }
    assert!(
        matches!(&answers[WRITES], Err(TransportError::Remote { node: 1, message }) if message.contains("99")),
        "{:?}",
        answers[WRITES]
    );
    assert!(
        matches!(&answers[WRITES + 1], Err(TransportError::Remote { node: 1, message }) if message.contains("clock offset")),
        "{:?}",
        answers[WRITES + 1]
    );
    for i in 0..WRITES {
        let key = format!("batched-{i}");
        let stored = n1.node.ap.read_replica(ks, key.as_bytes()).unwrap();
        assert_eq!(
            stored.and_then(|r| r.value),
            Some(format!("value of {key}").into_bytes()),
            "acknowledged {key} is not on n1"
        );
    }
    for refused in ["bad-hint", "future"] {
        assert_eq!(
            n1.node.ap.read_replica(ks, refused.as_bytes()).unwrap(),
            None
        );
    }
    // At most two calls start before the rest queue behind them: a handful of calls, not one
    // per write (other tests in this binary send no AP replica writes between nodes).
    assert!(
        calls <= (WRITES as u64 + 2) / 2,
        "{calls} calls carried {} writes",
        WRITES + 2
    );
}
