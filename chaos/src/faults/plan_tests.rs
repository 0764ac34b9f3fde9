//! What each node is told to drop, delay and skew for each kind of fault.

use super::*;

fn cluster(n: usize) -> ClusterFaults {
    ClusterFaults::new((1..=n).map(|i| format!("n{i}")).collect()).expect("a valid cluster")
}

fn drops(c: &ClusterFaults, node: &str) -> Vec<String> {
    c.node(node).drop_to.into_iter().collect()
}

#[test]
fn a_partition_cuts_both_ways_and_only_across_the_sides() {
    let mut c = cluster(5);
    c.partition(&["n1", "n2"], &["n3", "n4", "n5"]).unwrap();
    for a in ["n1", "n2"] {
        assert_eq!(drops(&c, a), ["n3", "n4", "n5"], "{a}");
    }
    for b in ["n3", "n4", "n5"] {
        assert_eq!(drops(&c, b), ["n1", "n2"], "{b}");
    }
}

#[test]
fn a_one_way_partition_drops_on_the_sending_side_only() {
    let mut c = cluster(3);
    c.partition_one_way("n1", "n2").unwrap();
    assert_eq!(drops(&c, "n1"), ["n2"]);
    assert!(c.node("n2").is_clear());
    assert!(c.node("n3").is_clear());
    assert_eq!(c.changed_since(&cluster(3)), ["n1"]);
}

#[test]
fn partitions_add_up_into_a_bridge() {
    // n2 is the bridge: n1 and n3 cannot reach each other, both reach n2.
    let mut c = cluster(3);
    c.partition(&["n1"], &["n3"]).unwrap();
    assert_eq!(drops(&c, "n1"), ["n3"]);
    assert!(c.node("n2").is_clear());
    // Isolating n1 as well keeps the first cut.
    c.partition(&["n1"], &["n2"]).unwrap();
    assert_eq!(drops(&c, "n1"), ["n2", "n3"]);
    assert_eq!(drops(&c, "n2"), ["n1"]);
    assert_eq!(drops(&c, "n3"), ["n1"]);
}

#[test]
fn requests_name_peers_by_their_position_in_the_peer_list() {
    let mut c = cluster(3);
    c.partition(&["n2"], &["n1", "n3"]).unwrap();
    c.slow("n2", "n3", 300).unwrap();
    c.skew("n2", -5_000).unwrap();
    let req = c.request("n2");
    assert_eq!(req.drop_to, [1, 3]);
    assert_eq!(req.delay_ms.into_iter().collect::<Vec<_>>(), [(3, 300)]);
    assert_eq!(req.clock_skew_ms, -5_000);
    assert_eq!(c.request("n1").drop_to, [2]);
    assert_eq!(c.id("n3"), Some(3));
    assert_eq!(c.id("n4"), None);
}

#[test]
fn every_request_carries_all_of_a_nodes_faults() {
    // A Chaos call replaces the node's whole fault set: skewing the clock must not heal a
    // partition, and cutting a link must not reset the clock.
    let mut c = cluster(3);
    c.skew("n1", 60_000).unwrap();
    c.partition_one_way("n1", "n2").unwrap();
    let req = c.request("n1");
    assert_eq!(req.clock_skew_ms, 60_000);
    assert_eq!(req.drop_to, [2]);
    c.skew("n1", 0).unwrap();
    assert_eq!(c.request("n1").drop_to, [2]);
}

#[test]
fn removing_the_last_fault_leaves_the_node_clear() {
    let mut c = cluster(3);
    c.slow("n1", "n2", 300).unwrap();
    c.skew("n3", 10).unwrap();
    assert_eq!(c.changed_since(&cluster(3)), ["n1", "n3"]);
    c.slow("n1", "n2", 0).unwrap();
    c.skew("n3", 0).unwrap();
    assert_eq!(c, cluster(3));
    c.partition(&["n1"], &["n2"]).unwrap();
    c.heal_all();
    assert_eq!(c, cluster(3));
    assert_eq!(c.request("n1"), ChaosRequest::default());
}

#[test]
fn a_fault_naming_an_unknown_or_the_same_node_is_refused_and_changes_nothing() {
    let mut c = cluster(3);
    let err = c.partition(&["n1"], &["n9"]).unwrap_err();
    assert_eq!(
        err,
        FaultError::UnknownNode {
            node: "n9".into(),
            known: "n1, n2, n3".into()
        }
    );
    let err = c.partition(&["n1", "n2"], &["n2", "n3"]).unwrap_err();
    assert_eq!(err, FaultError::SameNode { node: "n2".into() });
    let err = c.partition_one_way("n3", "n3").unwrap_err();
    assert_eq!(err, FaultError::SameNode { node: "n3".into() });
    assert!(c.slow("n1", "n1", 5).is_err());
    assert!(c.skew("n0", 5).is_err());
    assert_eq!(c, cluster(3));
}

#[test]
fn a_cluster_needs_unique_names() {
    assert!(ClusterFaults::new(vec![]).is_err());
    let err = ClusterFaults::new(vec!["n1".into(), "n1".into()]).unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
}
