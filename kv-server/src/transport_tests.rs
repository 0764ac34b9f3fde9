//! Tests of the gRPC transports: the fault filter before dialing, batched and single
//! messages alike, liveness, the wire form of records.

use super::*;
use crate::types::Member;
use std::collections::{BTreeMap, BTreeSet};

/// A dialer that can reach nobody: what a transport does before dialing is all there is.
struct NoRoute;

impl kv_core::net::Dialer for NoRoute {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        Err(format!("no route to {addr} in this test"))
    }
}

fn transport() -> GrpcTransport {
    let peers: Vec<Member> = (1..=3)
        .map(|i| Member {
            id: i,
            name: format!("n{i}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
            peer_addr: format!("127.0.0.1:{}", 7000 + i),
        })
        .collect();
    GrpcTransport::new(Arc::new(PeerLinks::new(1, &peers, Arc::new(NoRoute))))
}

fn record() -> ApRecord {
    ApRecord {
        key: b"k".to_vec(),
        hlc: Hlc {
            physical_ms: 1,
            logical: 0,
            node_id: 1,
        },
        value: Some(b"v".to_vec()),
    }
}

#[tokio::test]
async fn a_dropped_link_is_unreachable_for_both_engines_without_dialing() {
    let t = transport();
    t.links.faults().set(BTreeSet::from([2]), BTreeMap::new());
    let dropped = "traffic to n2 (127.0.0.1:7002) is dropped by fault injection".to_string();
    let ap = ApTransport::write(&t, 2, 2, record(), None).await;
    assert!(
        matches!(&ap, Err(ApTransportError::Unreachable { node: 2, reason }) if *reason == dropped),
        "{ap:?}"
    );
    let raft = t.send(2, 7, RaftKind::Vote, vec![1]).await;
    assert_eq!(
        raft,
        Err(RaftTransportError::Unreachable {
            to: 2,
            reason: dropped
        })
    );
    // The other link is not dropped: the message reaches the dialer (which has no route).
    let ap = ApTransport::read(&t, 3, 2, b"k".to_vec()).await;
    assert!(
        matches!(&ap, Err(ApTransportError::Unreachable { node: 3, reason })
            if reason == "node n3: no route to 127.0.0.1:7003 in this test"),
        "{ap:?}"
    );
}

#[tokio::test]
async fn batched_appends_meet_the_fault_filter_like_single_messages() {
    let t = transport();
    t.links.faults().set(BTreeSet::from([2]), BTreeMap::new());
    let dropped = "traffic to n2 (127.0.0.1:7002) is dropped by fault injection".to_string();
    let sent =
        futures::future::join_all((1..=5).map(|group| t.send(2, group, RaftKind::Append, vec![1])))
            .await;
    for answer in sent {
        assert_eq!(
            answer,
            Err(RaftTransportError::Unreachable {
                to: 2,
                reason: dropped.clone()
            })
        );
    }
    let to_3 = t.send(3, 1, RaftKind::Append, vec![1]).await;
    assert_eq!(
        to_3,
        Err(RaftTransportError::Unreachable {
            to: 3,
            reason: "node n3: no route to 127.0.0.1:7003 in this test".into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn liveness_is_the_links_view() {
    let t = transport();
    t.links.membership().heard_from(2);
    assert!(t.is_alive(2));
    tokio::time::advance(crate::membership::DOWN_AFTER * 2).await;
    assert!(!t.is_alive(2), "silent past DOWN_AFTER");
    assert!(t.is_alive(3), "a peer never heard from is tried");
}

#[test]
fn records_round_trip_through_the_wire_form() {
    let r = record();
    assert_eq!(record_from_pb(record_to_pb(&r)), r);
    let tombstone = ApRecord { value: None, ..r };
    let pb = record_to_pb(&tombstone);
    assert!(pb.tombstone);
    assert_eq!(record_from_pb(pb), tombstone);
}
