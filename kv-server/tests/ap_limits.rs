//! Tests of the AP engine's limits and durability (issue 9, items 7 and 11), on kv-testkit's
//! in-memory network and simulated disks: acknowledged replica writes and hints survive a power
//! loss of a disk that loses unflushed writes, writes beyond the in-flight bound are refused,
//! hints for non-members are refused, and timestamps beyond the maximum clock offset are
//! refused with the gRPC status the API promises.

use kv_server::ap::{ApConfig, ApError, ApRecord, Consistency, HlcError, RequestOptions};
use kv_server::error::NodeError;
use kv_server::types::{Hlc, NodeId};
use kv_testkit::memnet::ap_cluster::rec;
use kv_testkit::memnet::ApCluster;
use std::collections::BTreeMap;
use tonic::Code;

fn defaults(_: &mut ApConfig) {}

/// The gRPC status code a client would see for `e`.
fn code(e: ApError) -> Code {
    NodeError::from(e).into_status("n1").code()
}

#[tokio::test]
async fn an_acknowledged_replica_write_survives_a_crash_even_when_it_superseded_nothing() {
    let c = ApCluster::new(3, defaults);
    let n1 = c.node(1);
    let store = n1.store(c.ks.id).unwrap();
    // Another path stored this record and has not flushed yet: an anti-entropy batch before its
    // flush, or a concurrent write of the same record whose flush is still running.
    let same = rec("k", 1_000_000, Some("v"));
    store.apply(&same, 0).unwrap();
    // The coordinator's write of it supersedes nothing here, and is acknowledged.
    assert!(!n1.apply_replica(c.ks.id, same.clone(), None).await.unwrap());
    // A hint is acknowledged too.
    let hinted = rec("h", 1_000_000, Some("hinted"));
    n1.apply_replica(c.ks.id, hinted.clone(), Some(2))
        .await
        .unwrap();
    // A record stored but never acknowledged, written after the last flush.
    let unacked = rec("u", 1_000_000, Some("never acked"));
    store.apply(&unacked, 0).unwrap();

    c.disks[&1].crash();
    let n1 = c.start(1);
    assert_eq!(
        n1.read_replica(c.ks.id, b"k").unwrap(),
        Some(same),
        "acknowledged, then lost in the crash"
    );
    assert_eq!(n1.hint_counts(), BTreeMap::from([(2, 1)]));
    // The disk does lose what was never flushed: the checks above can fail.
    assert_eq!(n1.read_replica(c.ks.id, b"u").unwrap(), None);
}

/// A key whose preference list (5 nodes) is [1, 2, 3, 4, 5].
fn key(i: usize) -> Vec<u8> {
    format!("d{i}").into_bytes()
}

#[tokio::test(start_paused = true)]
async fn writes_beyond_the_in_flight_bound_are_refused_before_anything_is_written() {
    let c = ApCluster::new(5, |cfg| cfg.max_writes_in_flight = 2);
    let pref = c.pref(&key(0));
    assert_eq!(pref, vec![1, 2, 3, 4, 5]);
    let one = RequestOptions::with(Consistency::One);
    // Node 2 never answers: each write returns at W = 1 and stays in flight until its send to
    // node 2 times out.
    c.hang(2);
    for i in 0..2 {
        c.node(1)
            .put(&c.ks, &pref, &key(i), b"v".to_vec(), one)
            .await
            .unwrap();
    }
    let err = c
        .node(1)
        .put(&c.ks, &pref, &key(2), b"v".to_vec(), one)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApError::Overloaded { node: 1, limit: 2 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("2 AP writes already in flight") && msg.contains("nothing was written"),
        "{msg}"
    );
    for n in 1..=5 {
        assert_eq!(c.local(n, &key(2)), None, "node {n}");
    }
    assert_eq!(code(err), Code::ResourceExhausted);
    // Once the writes in flight are done (their sends to node 2 timed out, node 4 took hints),
    // writes are accepted again.
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(2, 2)]));
    c.node(1)
        .put(&c.ks, &pref, &key(2), b"v".to_vec(), one)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hint_for_a_node_that_is_not_a_member_is_refused() {
    let c = ApCluster::new(3, defaults);
    let err = c
        .node(1)
        .apply_replica(c.ks.id, rec("k", 1_000_000, Some("v")), Some(99))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApError::UnknownHintOwner {
                owner: 99,
                members: 3
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("node 99") && msg.contains("not a member"),
        "{msg}"
    );
    assert_eq!(code(err), Code::InvalidArgument);
    assert!(c.node(1).hint_counts().is_empty());
    assert_eq!(c.local(1, b"k"), None);
    // A member's hint is kept.
    c.node(1)
        .apply_replica(c.ks.id, rec("k", 1_000_000, Some("v")), Some(2))
        .await
        .unwrap();
    assert_eq!(c.node(1).hint_counts(), BTreeMap::from([(2, 1)]));
}

fn from_node_9(key: &str, physical_ms: u64) -> ApRecord {
    ApRecord {
        key: key.as_bytes().to_vec(),
        hlc: Hlc {
            physical_ms,
            logical: 0,
            node_id: 9 as NodeId,
        },
        value: Some(b"v".to_vec()),
    }
}

#[tokio::test]
async fn a_replica_refuses_a_timestamp_beyond_the_maximum_offset_and_keeps_its_clock() {
    let c = ApCluster::new(3, defaults);
    let ten_years_ms: u64 = 10 * 365 * 24 * 60 * 60 * 1000;
    let n1 = c.node(1);
    for (key, physical_ms, hint_for) in [
        ("future", 1_000_000 + ten_years_ms, None),
        ("hinted", 1_000_000 + ten_years_ms, Some(2)),
        ("end-of-time", u64::MAX, None),
    ] {
        let err = n1
            .apply_replica(c.ks.id, from_node_9(key, physical_ms), hint_for)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ApError::Clock(HlcError::Ahead {
                    node: 1,
                    from_node: 9,
                    max_offset_ms: 500,
                    ..
                })
            ),
            "{key}: {err:?}"
        );
        assert!(
            err.to_string().contains("ms ahead of node 1's clock"),
            "{err}"
        );
        assert_eq!(code(err), Code::FailedPrecondition);
        assert_eq!(c.local(1, key.as_bytes()), None, "{key} stored");
    }
    assert!(n1.hint_counts().is_empty());
    assert_eq!(n1.status().clock_refusals, 3);
    // Later writes carry this node's own time, not the refused one.
    let k = b"later".to_vec();
    let h = n1
        .put(&c.ks, &c.pref(&k), &k, b"v".to_vec(), Default::default())
        .await
        .unwrap();
    assert_eq!(h.physical_ms, 1_000_000);
    // Within the bound a timestamp is taken, and the clock moves past it.
    n1.apply_replica(c.ks.id, from_node_9("near", 1_000_400), None)
        .await
        .unwrap();
    let h = n1
        .put(&c.ks, &c.pref(&k), &k, b"w".to_vec(), Default::default())
        .await
        .unwrap();
    assert!(h.physical_ms >= 1_000_400, "{h:?}");
}
