//! A failed dial is "not sent"; a connection that breaks after the request left is not.

use super::*;
use crate::net::{Dialer, TcpDialer};
use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::GetRequest;
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn get_through(addr: &str) -> Status {
    let channel = TcpDialer.channel(addr).expect("address");
    let mut client = KvClient::new(channel);
    let mut req = tonic::Request::new(GetRequest::default());
    req.set_timeout(Duration::from_secs(10));
    client.get(req).await.expect_err("nothing serves kv here")
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_failure() {
    // Bind, learn the port, close: nothing listens there now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let status = get_through(&addr).await;
    assert!(is_connect_failure(&status), "{status:?}");
}

#[tokio::test]
async fn a_connection_closed_after_the_request_left_is_not_a_connect_failure() {
    // A peer that accepts, reads the request's first bytes, then resets: the text of the
    // resulting error mentions "connection", but the request was sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = sock.read(&mut buf).await;
        drop(sock);
    });
    let status = get_through(&addr).await;
    server.await.unwrap();
    assert!(!is_connect_failure(&status), "{status:?}");
    assert!(
        describe(&status).to_lowercase().contains("connect"),
        "the old text test would have called this not sent: {status:?}"
    );
}
