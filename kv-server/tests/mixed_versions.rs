//! A peer running a build from before the batch calls (`RaftBatch`, `ApWriteBatch` answer
//! UNIMPLEMENTED) still gets this node's Raft messages and AP replica writes, as single calls:
//! the first batch to it fails (openraft resends, the AP coordinator falls back to a hint), the
//! ones after go through. The peer is kv-testkit's echo service over loopback TCP.

use kv_core::net::TcpDialer;
use kv_server::ap::{ApRecord, ApTransport, TransportError as ApError};
use kv_server::cp::{RaftKind, RaftTransport, TransportError as RaftError};
use kv_server::peers::PeerLinks;
use kv_server::transport::GrpcTransport;
use kv_server::types::{Hlc, Member};
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

async fn transport_to_an_old_peer() -> GrpcTransport {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = listener.local_addr().unwrap().to_string();
    tokio::spawn(kv_testkit::net_suite::serve_echo(
        TcpIncoming::from(listener),
        std::future::pending(),
    ));
    let member = |id: u64, addr: &str| Member {
        id,
        name: format!("n{id}"),
        addr: addr.into(),
        peer_addr: addr.into(),
    };
    let peers = vec![member(1, "127.0.0.1:1"), member(2, &old)];
    GrpcTransport::new(Arc::new(PeerLinks::new(1, &peers, Arc::new(TcpDialer))))
}

#[tokio::test]
async fn raft_messages_to_a_peer_without_raft_batch_go_as_single_calls() {
    let t = transport_to_an_old_peer().await;
    let first = t.send(2, 7, RaftKind::Append, b"hello".to_vec()).await;
    assert!(
        matches!(&first, Err(RaftError::Network { to: 2, reason }) if reason.contains("RaftBatch")),
        "{first:?}"
    );
    for i in 0..3u8 {
        let answer = t.send(2, 7, RaftKind::Append, vec![i; 3]).await;
        assert_eq!(answer, Ok(vec![i; 3]), "the echo of a single Raft call");
    }
}

#[tokio::test]
async fn ap_writes_to_a_peer_without_ap_write_batch_go_as_single_calls() {
    let t = transport_to_an_old_peer().await;
    let record = ApRecord {
        key: b"k".to_vec(),
        hlc: Hlc {
            physical_ms: 1,
            logical: 0,
            node_id: 1,
        },
        value: Some(b"v".to_vec()),
    };
    let first = t.write(2, 2, record.clone(), None).await;
    assert!(
        matches!(&first, Err(ApError::Remote { node: 2, message }) if message.contains("ApWriteBatch")),
        "{first:?}"
    );
    let next = futures::future::join_all((0..3).map(|_| t.write(2, 2, record.clone(), None))).await;
    for answer in next {
        assert!(answer.is_ok(), "{answer:?}");
    }
}
