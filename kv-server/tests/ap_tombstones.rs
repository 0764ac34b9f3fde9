//! AP promise 4, "a delete never comes back", against a replica that was away longer than the
//! tombstone grace period (issue 9, item 9): while it is away its peers keep the tombstone
//! (they have not completed an exchange with it since the delete), so when it returns with the
//! old value, neither anti-entropy nor read repair brings the value back; once every replica
//! exchanged with every other, the tombstones go and stay gone. Runs on kv-testkit's
//! `ApCluster` (in-memory network, simulated disks).

use kv_server::ap::{ApConfig, ApRing, Consistency, RequestOptions};
use kv_server::types::KeyspaceDef;
use kv_testkit::memnet::ApCluster;

/// Short enough to pass in a test; longer than the hint window, as `ApEngine::open` requires.
const GRACE_MS: u64 = 10_000;
const HINT_WINDOW_MS: u64 = 1_000;

fn short_grace(cfg: &mut ApConfig) {
    cfg.tombstone_grace_ms = GRACE_MS;
    cfg.hint_max_age_ms = HINT_WINDOW_MS;
}

const ALL: RequestOptions = RequestOptions {
    consistency: Some(Consistency::All),
};
const QUORUM: RequestOptions = RequestOptions {
    consistency: Some(Consistency::Quorum),
};

/// Three nodes (every node replicates every key); `gone` written everywhere, then deleted at
/// quorum while node 3 is down; then a grace period and more pass, during which nodes 1 and 2
/// exchange and purge as often as they like and node 1's hint for node 3 expires; node 3 comes
/// back still holding the old value. Returns the cluster, the key and its partition.
async fn away_past_the_grace_period() -> (ApCluster, Vec<u8>, u32) {
    let c = ApCluster::new(3, short_grace);
    let k = b"gone".to_vec();
    let pref = c.pref(&k);
    let partition = c.ring.partition_for_key(&k);
    c.node(1)
        .put(&c.ks, &pref, &k, b"old".to_vec(), ALL)
        .await
        .unwrap();
    c.kill(3);
    c.node(1).delete(&c.ks, &pref, &k, QUORUM).await.unwrap();
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.local(3, &k).unwrap().value.as_deref(), Some(&b"old"[..]));
    for clock in c.clocks.values() {
        clock.advance(GRACE_MS + HINT_WINDOW_MS + 1);
    }
    let ks = [c.ks.clone()];
    for (x, y) in [(1, 2), (2, 1)] {
        let s = c.node(x).anti_entropy_once(c.ks.id, partition, y).await;
        assert!(s.unwrap().complete);
    }
    for n in [1, 2] {
        c.node(n).purge_tombstones_once(&ks).unwrap();
    }
    assert_eq!(c.node(1).replay_hints_once().await.unwrap().expired, 1);
    c.revive(3);
    (c, k, partition)
}

fn keyspaces(c: &ApCluster) -> [KeyspaceDef; 1] {
    [c.ks.clone()]
}

#[tokio::test]
async fn a_replica_away_past_the_grace_period_does_not_bring_a_delete_back_by_anti_entropy() {
    let (c, k, partition) = away_past_the_grace_period().await;
    // The returning replica starts an exchange with a peer that still has the delete.
    let s = c
        .node(3)
        .anti_entropy_once(c.ks.id, partition, 1)
        .await
        .unwrap();
    assert!(s.complete, "{s:?}");
    for n in [1, 2, 3] {
        let held = c.local(n, &k).expect("every replica holds the delete");
        assert_eq!(held.value, None, "node {n} holds the value again");
    }
    for n in [1, 2, 3] {
        let got = c.node(n).get(&c.ks, &c.pref(&k), &k, ALL).await.unwrap();
        assert_eq!(got, None, "the delete came back through node {n}");
    }
    purge_everywhere_and_check_it_stays_deleted(&c, &k, partition).await;
}

#[tokio::test]
async fn a_replica_away_past_the_grace_period_does_not_bring_a_delete_back_by_read_repair() {
    let (c, k, _) = away_past_the_grace_period().await;
    // Before any exchange, a read asks the returning replica and one that kept the delete.
    for coordinator in [3, 1] {
        let got = c
            .node(coordinator)
            .get(&c.ks, &c.pref(&k), &k, ALL)
            .await
            .unwrap();
        assert_eq!(got, None, "read through node {coordinator}");
    }
    for n in [1, 2, 3] {
        assert_eq!(c.local(n, &k).unwrap().value, None, "node {n}");
    }
}

/// Every replica exchanges with every other; then each purges, and nothing brings the key
/// back, neither more exchanges nor reads.
async fn purge_everywhere_and_check_it_stays_deleted(c: &ApCluster, k: &[u8], partition: u32) {
    let ks = keyspaces(c);
    for x in [1, 2, 3] {
        for y in [1, 2, 3] {
            if x != y {
                let s = c.node(x).anti_entropy_once(c.ks.id, partition, y).await;
                assert!(s.unwrap().complete);
            }
        }
    }
    for n in [1, 2, 3] {
        assert_eq!(c.node(n).purge_tombstones_once(&ks).unwrap(), 1, "node {n}");
    }
    for x in [1, 2, 3] {
        for y in [1, 2, 3] {
            if x != y {
                c.node(x)
                    .anti_entropy_once(c.ks.id, partition, y)
                    .await
                    .unwrap();
            }
        }
    }
    for n in [1, 2, 3] {
        assert_eq!(c.local(n, k), None, "node {n}");
        let got = c.node(n).get(&c.ks, &c.pref(k), k, ALL).await.unwrap();
        assert_eq!(got, None, "node {n}");
    }
}
