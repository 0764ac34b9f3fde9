//! Tests of `server`: statuses tonic makes, deadlines, accepted sockets, serving until
//! shutdown, and what each listener serves.

use super::*;
use crate::clock::SystemClock;
use crate::config::NodeConfig;
use crate::storage::memory::MemoryEngine;
use crate::types::Member;
use kv_core::net::{Dialer, TcpDialer};
use kv_proto::v1::kv_client::KvClient;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Generous bound on anything these tests wait for on loopback.
const WAIT: Duration = Duration::from_secs(10);

fn answer(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

fn status_of(response: &http::Response<tonic::body::Body>) -> Status {
    Status::from_header_map(response.headers()).expect("a status")
}

#[test]
fn tonics_own_statuses_get_kv_codes_and_the_node_header() {
    let policy = StatusPolicy::new("n1", 1000, 66_536);
    let too_large = policy.rewrite(answer(Status::out_of_range(
        "Error, decoded message length too large: found 5242890 bytes, the limit is: 66536 bytes",
    )));
    let s = status_of(&too_large);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(
        s.message(),
        "[n1] the message of 5242890 bytes is over this node's limit of 66536 bytes: values are at most 1000 bytes (--max-value-bytes, raised on every node together)"
    );
    assert_eq!(s.metadata().get(NODE_HEADER).unwrap(), "n1");

    let missing = status_of(&policy.rewrite(answer(Status::internal("Missing request message."))));
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing.message().contains("Missing request message"),
        "{missing:?}"
    );
    let late = status_of(&policy.rewrite(answer(Status::cancelled("Timeout expired"))));
    assert_eq!(late.code(), Code::DeadlineExceeded);
    let unknown = status_of(&policy.rewrite(answer(Status::unimplemented(""))));
    assert_eq!(unknown.code(), Code::Unimplemented);
    assert!(unknown.metadata().get(NODE_HEADER).is_some());
}

#[test]
fn the_nodes_own_statuses_and_ok_answers_pass_unchanged() {
    let policy = StatusPolicy::new("n1", 1000, 66_536);
    let mine = crate::error::NodeError::Internal("a bug".into()).into_status("n2");
    let passed = status_of(&policy.rewrite(answer(mine)));
    assert_eq!(
        passed.code(),
        Code::Internal,
        "kv's own INTERNAL is a bug, kept"
    );
    assert_eq!(passed.message(), "[n2] a bug");
    let ok = http::Response::new(tonic::body::Body::empty());
    assert!(Status::from_header_map(policy.rewrite(ok).headers()).is_none());
}

#[test]
fn the_node_answers_before_tonics_timer() {
    assert_eq!(
        answer_within(Duration::from_millis(1)),
        Duration::from_micros(900)
    );
    assert_eq!(
        answer_within(Duration::from_secs(5)),
        Duration::from_millis(4999)
    );
    assert_eq!(answer_within(Duration::ZERO), Duration::ZERO);
}

#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tcp_incoming(listener);
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::time::timeout(WAIT, incoming.next())
        .await
        .expect("a connection is accepted")
        .expect("the stream is open")
        .expect("accept succeeds");
    assert!(
        accepted.nodelay().unwrap(),
        "TCP_NODELAY on accepted sockets"
    );
}

#[tokio::test]
async fn serve_tcp_answers_on_the_listener_until_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peers = vec![Member {
        id: 1,
        name: "n1".into(),
        addr: addr.clone(),
        peer_addr: addr.clone(),
    }];
    let node = Node::new(
        NodeConfig::new("n1", "c", peers),
        Arc::new(MemoryEngine::new()),
        Arc::new(TcpDialer),
        Arc::new(SystemClock::default()),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tcp(node, listener, async {
        let _ = stopped.await;
    }));
    let mut client = KvClient::new(TcpDialer.channel(&addr).unwrap());
    let mut req = tonic::Request::new(kv_proto::v1::RingRequest {});
    req.set_timeout(WAIT);
    let ring = client
        .ring(req)
        .await
        .expect("the node answers")
        .into_inner();
    assert_eq!(ring.cluster_name, "c");
    assert_eq!(ring.members.len(), 1);
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}

/// The services reflection lists on `addr`.
async fn listed_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(TcpDialer.channel(addr).unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = tokio::time::timeout(
        WAIT,
        client.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("reflection answers")
    .unwrap()
    .into_inner();
    let answer = tokio::time::timeout(WAIT, answers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn the_client_port_lists_and_serves_the_public_api_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peers = vec![Member {
        id: 1,
        name: "n1".into(),
        addr: addr.clone(),
        peer_addr: "127.0.0.1:1".into(),
    }];
    let node = Node::new(
        NodeConfig::new("n1", "c", peers),
        Arc::new(MemoryEngine::new()),
        Arc::new(TcpDialer),
        Arc::new(SystemClock::default()),
    )
    .unwrap();
    let policy = gate_policy(&node, Api::Client, &Security::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_api(node, policy, tcp_incoming(listener), async {
        let _ = stopped.await;
    }));
    let services = listed_services(&addr).await;
    assert!(
        services.contains(&PUBLIC_SERVICE.to_string()),
        "{services:?}"
    );
    assert!(
        !services.iter().any(|s| s.starts_with("kv.internal")),
        "{services:?}"
    );
    let mut internal = ipb::internal_client::InternalClient::new(TcpDialer.channel(&addr).unwrap());
    let mut req = tonic::Request::new(ipb::RaftRequest::default());
    req.set_timeout(WAIT);
    let refused = internal.raft(req).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(refused.message().contains("peer port"), "{refused:?}");
    assert!(refused.metadata().get(NODE_HEADER).is_some());
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}
