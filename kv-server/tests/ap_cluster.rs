//! Cluster tests of the AP engine: several `ApEngine`s on kv-testkit's in-memory network
//! (`ApCluster`), each on a simulated disk, with kills, partitions, refusals and hangs from the
//! network's filters, restarts over the same disk, and background work driven by hand.

use kv_server::ap::merkle::{leaf_of, MERKLE_LEAVES};
use kv_server::ap::store::DEFAULT_TOMBSTONE_GRACE_MS;
use kv_server::ap::{ApConfig, ApError, ApRecord, Consistency, RequestOptions};
use kv_server::types::{Hlc, NodeId, MAX_KEY_BYTES};
use kv_testkit::disk::SimDisk;
use kv_testkit::memnet::ApCluster;
use std::collections::BTreeMap;

/// An acknowledged write: its timestamp and value (`None` for a delete).
type AckedWrite = (Hlc, Option<Vec<u8>>);

fn defaults(_: &mut ApConfig) {}

const ALL: RequestOptions = RequestOptions {
    consistency: Some(Consistency::All),
};
const QUORUM: RequestOptions = RequestOptions {
    consistency: Some(Consistency::Quorum),
};

/// A key whose preference list (5 nodes) is [1, 2, 3, 4, 5]: first byte ≡ 0 (mod 5).
fn key(name: &str) -> Vec<u8> {
    let mut k = b"d".to_vec(); // 'd' = 100
    k.extend_from_slice(name.as_bytes());
    k
}

#[tokio::test]
async fn a_write_with_a_replica_down_is_acknowledged_through_a_durable_hint() {
    let c = ApCluster::new(5, defaults);
    let k = key("hinted");
    assert_eq!(c.pref(&k), vec![1, 2, 3, 4, 5]);
    c.kill(3);
    // W = N = 3: nodes 1 and 2 ack directly, node 4 acks by storing a hint for node 3.
    let hlc = c
        .node(1)
        .put(&c.ks, &c.pref(&k), &k, b"v1".to_vec(), ALL)
        .await
        .expect("sloppy quorum reaches W through the hint holder");
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(3, 1)]));
    assert_eq!(
        c.local(4, &k),
        None,
        "a hint holder does not store the record as a replica"
    );

    // The hint survives a restart of its holder over the same disk.
    let n4 = c.start(4);
    assert_eq!(n4.status().hints, BTreeMap::from([(3, 1)]));

    // Owner still down: the hint waits.
    let stats = n4.replay_hints_once().await.unwrap();
    assert_eq!((stats.waiting, stats.delivered), (1, 0));

    // Owner back but failing writes: the hint is kept (deleted only after an ack).
    c.revive(3);
    c.refuse_writes(3, true);
    let stats = n4.replay_hints_once().await.unwrap();
    assert_eq!((stats.failed, stats.delivered), (1, 0));
    assert_eq!(n4.hint_counts(), BTreeMap::from([(3, 1)]));
    assert_eq!(c.local(3, &k), None);

    // Owner acks: delivered, then deleted.
    c.refuse_writes(3, false);
    let stats = n4.replay_hints_once().await.unwrap();
    assert_eq!((stats.failed, stats.delivered), (0, 1));
    assert!(n4.hint_counts().is_empty());
    let on_3 = c.local(3, &k).expect("hint delivered to its owner");
    assert_eq!((on_3.value.as_deref(), on_3.hlc), (Some(&b"v1"[..]), hlc));
    assert_eq!(n4.replay_hints_once().await.unwrap().delivered, 0);
}

#[tokio::test]
async fn a_failed_replica_write_falls_back_to_a_hint_on_the_next_node() {
    let c = ApCluster::new(5, defaults);
    let k = key("refused");
    // Liveness says node 2 is alive, but its write fails: the coordinator learns it at run time.
    c.refuse_writes(2, true);
    c.node(1)
        .put(&c.ks, &c.pref(&k), &k, b"v".to_vec(), ALL)
        .await
        .unwrap();
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(2, 1)]));
    assert_eq!(c.local(2, &k), None);
    assert!(c.local(1, &k).is_some() && c.local(3, &k).is_some());
}

#[tokio::test]
async fn too_few_reachable_nodes_is_unavailable_with_counts() {
    let c = ApCluster::new(5, defaults);
    let k = key("lonely");
    for n in [2, 3, 4, 5] {
        c.kill(n);
    }
    let err = c
        .node(1)
        .put(&c.ks, &c.pref(&k), &k, b"v".to_vec(), QUORUM)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                op: "write",
                needed: 2,
                answered: 1,
                partition: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("1 of the 2 required replicas answered"),
        "{msg}"
    );
    // The write is indeterminate, not rolled back: the coordinator's own replica kept it.
    assert!(c.local(1, &k).is_some());

    let err = c
        .node(1)
        .get(&c.ks, &c.pref(&k), &k, QUORUM)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                op: "read",
                needed: 2,
                answered: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // One is enough for both.
    let one = RequestOptions::with(Consistency::One);
    c.node(1)
        .put(&c.ks, &c.pref(&k), &k, b"w".to_vec(), one)
        .await
        .unwrap();
    let got = c.node(1).get(&c.ks, &c.pref(&k), &k, one).await.unwrap();
    assert_eq!(got.map(|(v, _)| v), Some(b"w".to_vec()));
}

#[tokio::test]
async fn the_hint_bound_moves_hints_to_the_next_fallback_then_refuses() {
    let c = ApCluster::new(5, |cfg| cfg.max_hints_per_node = 2);
    c.kill(3);
    let pref = c.pref(&key("x"));
    for i in 0..4 {
        let k = key(&format!("k{i}"));
        c.node(1)
            .put(&c.ks, &pref, &k, b"v".to_vec(), ALL)
            .await
            .unwrap();
    }
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(3, 2)]));
    assert_eq!(c.node(5).hint_counts(), BTreeMap::from([(3, 2)]));
    let k = key("k4");
    let err = c
        .node(1)
        .put(&c.ks, &pref, &k, b"v".to_vec(), ALL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                needed: 3,
                answered: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let direct = c
        .node(4)
        .apply_replica(c.ks.id, c.local(1, &k).unwrap(), Some(3))
        .await;
    let msg = direct.unwrap_err().to_string();
    assert!(
        msg.contains("hint store full for node 3") && msg.contains("2 hints"),
        "{msg}"
    );
}

#[tokio::test]
async fn read_repair_fixes_stale_and_missing_replicas() {
    let c = ApCluster::new(5, defaults);
    let k = key("repair");
    let pref = c.pref(&k);
    c.node(1)
        .put(&c.ks, &pref, &k, b"old".to_vec(), ALL)
        .await
        .unwrap();
    // Node 3 is believed down for one write: it keeps "old" (its hint is never replayed here).
    c.suspect(3, true);
    let new = c
        .node(2)
        .put(&c.ks, &pref, &k, b"new".to_vec(), QUORUM)
        .await
        .unwrap();
    c.node(2).wait_writes_idle().await;
    c.suspect(3, false);
    assert_eq!(c.local(3, &k).unwrap().value.as_deref(), Some(&b"old"[..]));

    let got = c.node(1).get(&c.ks, &pref, &k, ALL).await.unwrap();
    assert_eq!(got, Some((b"new".to_vec(), new)));
    let on_3 = c.local(3, &k).unwrap();
    assert_eq!((on_3.value.as_deref(), on_3.hlc), (Some(&b"new"[..]), new));
    assert_eq!(c.node(1).status().read_repairs, 1);

    // A record only one replica holds is written to the two that miss it.
    let lone = key("lone");
    let rec = c.local(1, &k).map(|mut r| {
        r.key = lone.clone();
        r
    });
    c.node(2)
        .apply_replica(c.ks.id, rec.unwrap(), None)
        .await
        .unwrap();
    let got = c.node(1).get(&c.ks, &pref, &lone, ALL).await.unwrap();
    assert_eq!(got.map(|(v, _)| v), Some(b"new".to_vec()));
    assert!(c.local(1, &lone).is_some() && c.local(3, &lone).is_some());
    assert_eq!(c.node(1).status().read_repairs, 3);
}

#[tokio::test]
async fn anti_entropy_exchanges_large_values_both_ways_page_by_page() {
    // 3 nodes, N = 3; keys starting with 'c' (99 ≡ 0 mod 3) are in partition 0.
    let c = ApCluster::new(3, defaults);
    let value = vec![7u8; 300 * 1024];
    let keys: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("c-large-{i:02}").into_bytes())
        .collect();
    // Interleaved: node 1 holds the even keys, node 3 the odd ones, so each of node 1's pages
    // covers keys that node 3 must push back.
    for (i, k) in keys.iter().enumerate() {
        let owner: NodeId = if i % 2 == 0 { 1 } else { 3 };
        let r = ApRecord {
            key: k.clone(),
            hlc: c.node(owner).hlc().now().unwrap(),
            value: Some(value.clone()),
        };
        c.node(owner).apply_replica(c.ks.id, r, None).await.unwrap();
    }
    let s = c.node(3).anti_entropy_once(c.ks.id, 0, 1).await.unwrap();
    assert_eq!((s.records_fetched, s.records_applied), (10, 10), "{s:?}");
    assert_eq!(s.records_pushed, 10, "{s:?}");
    let budget = ApConfig::new(1).range_page_bytes();
    let min_pages = 10 * value.len() / budget + 1;
    assert!(
        s.range_pages >= min_pages,
        "3 MB of values in pages of {budget} bytes: {s:?}"
    );
    assert!(s.complete, "{s:?}");
    for k in &keys {
        assert!(c.local(1, k).is_some() && c.local(3, k).is_some());
    }
    assert_eq!(
        c.node(1).merkle_leaves(c.ks.id, 0).unwrap(),
        c.node(3).merkle_leaves(c.ks.id, 0).unwrap()
    );
}

#[tokio::test]
async fn anti_entropy_converges_a_wiped_replica_and_syncs_only_differing_leaves() {
    // 3 nodes, N = 3: every node replicates every partition.
    let mut c = ApCluster::new(3, defaults);
    let total = 600;
    let mut per_partition = BTreeMap::<u32, usize>::new();
    for i in 0..total {
        let k = format!("key-{i:04}").into_bytes();
        let k = [vec![b'a' + (i % 3) as u8], k].concat();
        *per_partition.entry(u32::from(k[0]) % 3).or_default() += 1;
        c.node(1)
            .put(&c.ks, &c.pref(&k), &k, format!("v{i}").into_bytes(), ALL)
            .await
            .unwrap();
    }
    // Node 3 loses its disk and restarts empty (no hints exist for it).
    c.disks.insert(3, SimDisk::new("node-3, wiped"));
    let n3 = c.start(3);
    let fetched_before = c.net.merkle_range_records();
    let mut fetched = 0;
    for p in 0..3 {
        let s = n3.anti_entropy_once(c.ks.id, p, 1).await.unwrap();
        assert_eq!(s.records_fetched, per_partition[&p]);
        assert_eq!(s.records_applied, per_partition[&p]);
        assert_eq!(s.records_pushed, 0, "the wiped node has nothing to offer");
        fetched += s.records_fetched;
        assert_eq!(
            n3.merkle_leaves(c.ks.id, p).unwrap(),
            c.node(1).merkle_leaves(c.ks.id, p).unwrap()
        );
        assert_eq!(
            n3.merkle_leaves(c.ks.id, p).unwrap(),
            c.node(2).merkle_leaves(c.ks.id, p).unwrap()
        );
    }
    assert_eq!(fetched, total);
    assert_eq!(c.net.merkle_range_records() - fetched_before, total as u64);

    // A second exchange finds nothing to do.
    let s = n3.anti_entropy_once(c.ks.id, 0, 2).await.unwrap();
    assert_eq!(
        (s.differing_leaves, s.records_fetched, s.records_pushed),
        (0, 0, 0)
    );

    // Three newer writes land on node 1 only: only their leaves are exchanged.
    let changed: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("akey-{:04}", i * 3).into_bytes())
        .collect();
    for k in &changed {
        let mut r = c.local(1, k).unwrap();
        r.hlc = c.node(1).hlc().now().unwrap();
        r.value = Some(b"changed".to_vec());
        c.node(1).apply_replica(c.ks.id, r, None).await.unwrap();
    }
    let p_a = u32::from(b'a') % 3;
    let s = n3.anti_entropy_once(c.ks.id, p_a, 1).await.unwrap();
    let leaves_touched = {
        let mut l: Vec<u32> = changed.iter().map(|k| leaf_of(k)).collect();
        l.sort_unstable();
        l.dedup();
        l.len()
    };
    assert_eq!(s.differing_leaves, leaves_touched);
    assert_eq!(s.records_applied, 3);
    // Only the records of the differing leaves travel: about total / 3 / MERKLE_LEAVES each.
    assert!(
        s.records_fetched >= 3 && s.records_fetched < 3 * 10,
        "{s:?}"
    );
    println!(
        "anti-entropy: wiped replica fetched {fetched} of {total} records; after 3 changed keys \
         {} of {} leaves differed and {} of {} records of the partition were fetched",
        s.differing_leaves, MERKLE_LEAVES, s.records_fetched, per_partition[&p_a]
    );
    for k in &changed {
        assert_eq!(
            c.local(3, k).unwrap().value.as_deref(),
            Some(&b"changed"[..])
        );
    }
    // The exchange is two-way: node 3 pushes what node 1 lacks.
    let k = b"cnew".to_vec();
    let rec = ApRecord {
        key: k.clone(),
        hlc: n3.hlc().now().unwrap(),
        value: Some(b"x".to_vec()),
    };
    n3.apply_replica(c.ks.id, rec.clone(), None).await.unwrap();
    let s = n3
        .anti_entropy_once(c.ks.id, u32::from(b'c') % 3, 1)
        .await
        .unwrap();
    assert_eq!((s.records_pushed, s.records_applied), (1, 0));
    assert_eq!(c.local(1, &k), Some(rec));
}

#[tokio::test]
async fn partition_then_heal_converges_on_the_newest_write_and_deletes_stay_deleted() {
    let c = ApCluster::new(5, defaults);
    let pref = c.pref(&key(""));
    assert_eq!(pref, vec![1, 2, 3, 4, 5]);
    let (d1, d2, gone, late_del) = (key("both-1"), key("both-2"), key("gone"), key("late-del"));
    let mut acked: BTreeMap<Vec<u8>, Vec<AckedWrite>> = BTreeMap::new();
    let mut ack = |k: &Vec<u8>, h: Hlc, v: Option<&[u8]>| {
        acked
            .entry(k.clone())
            .or_default()
            .push((h, v.map(<[u8]>::to_vec)))
    };
    for k in [&d1, &d2, &gone] {
        let h = c
            .node(1)
            .put(&c.ks, &pref, k, b"base".to_vec(), ALL)
            .await
            .unwrap();
        ack(k, h, Some(b"base"));
    }

    // Side A = {1, 2, 4} holds replicas 1 and 2; side B = {3, 5} holds replica 3.
    let (a, b): (&[NodeId], &[NodeId]) = (&[1, 2, 4], &[3, 5]);
    c.partition(a, b);
    for clock in c.clocks.values() {
        clock.advance(10);
    }
    // Both sides accept writes to the same keys (quorum through hints on each side).
    let h = c
        .node(1)
        .put(&c.ks, &pref, &d1, b"A".to_vec(), QUORUM)
        .await
        .unwrap();
    ack(&d1, h, Some(b"A"));
    let h = c
        .node(3)
        .put(&c.ks, &pref, &d1, b"B".to_vec(), QUORUM)
        .await
        .unwrap();
    ack(&d1, h, Some(b"B"));
    // Node 3's clock runs ahead: its write to d2 wins even though node 1 writes after it.
    c.clocks[&3].advance(50);
    let h = c
        .node(3)
        .put(&c.ks, &pref, &d2, b"B".to_vec(), QUORUM)
        .await
        .unwrap();
    ack(&d2, h, Some(b"B"));
    let h = c
        .node(1)
        .put(&c.ks, &pref, &d2, b"A".to_vec(), QUORUM)
        .await
        .unwrap();
    ack(&d2, h, Some(b"A"));
    // B deletes `gone`; B writes `late-del`, then A deletes it later.
    let h = c.node(3).delete(&c.ks, &pref, &gone, QUORUM).await.unwrap();
    ack(&gone, h, None);
    let h = c
        .node(3)
        .put(&c.ks, &pref, &late_del, b"B".to_vec(), QUORUM)
        .await
        .unwrap();
    ack(&late_del, h, Some(b"B"));
    c.clocks[&1].advance(100);
    let h = c
        .node(1)
        .delete(&c.ks, &pref, &late_del, QUORUM)
        .await
        .unwrap();
    ack(&late_del, h, None);
    for n in 1..=5 {
        c.node(n).wait_writes_idle().await;
    }
    // Side A wrote d1, d2 and deleted late-del; side B wrote d1, d2, late-del and deleted gone.
    assert_eq!(
        c.node(4).hint_counts(),
        BTreeMap::from([(3, 3)]),
        "side A's hints for node 3"
    );
    assert_eq!(
        c.node(5).hint_counts(),
        BTreeMap::from([(1, 4)]),
        "side B's hints for node 1"
    );

    // Heal: hints first, then anti-entropy between every pair of replicas.
    c.heal();
    for n in 1..=5 {
        c.node(n).replay_hints_once().await.unwrap();
        assert!(
            c.node(n).hint_counts().is_empty(),
            "node {n} still holds hints"
        );
    }
    for (x, y) in [(1, 2), (1, 3), (2, 3)] {
        c.node(x).anti_entropy_once(c.ks.id, 0, y).await.unwrap();
    }
    let leaves = c.node(1).merkle_leaves(c.ks.id, 0).unwrap();
    for n in [2, 3] {
        assert_eq!(
            c.node(n).merkle_leaves(c.ks.id, 0).unwrap(),
            leaves,
            "node {n}"
        );
    }
    for (k, writes) in &acked {
        let (hlc, value) = writes.iter().max_by_key(|(h, _)| *h).unwrap().clone();
        for n in [1, 2, 3] {
            let r = c.local(n, k).unwrap();
            assert_eq!(
                (r.hlc, &r.value),
                (hlc, &value),
                "node {n} key {:?}",
                String::from_utf8_lossy(k)
            );
        }
        let got = c.node(5).get(&c.ks, &pref, k, ALL).await.unwrap();
        assert_eq!(got.map(|(v, _)| v), value);
    }
    assert_eq!(
        c.local(1, &d1).unwrap().value.as_deref(),
        Some(&b"B"[..]),
        "B's write was later"
    );
    assert_eq!(
        c.local(1, &d2).unwrap().value.as_deref(),
        Some(&b"B"[..]),
        "B's clock was ahead"
    );
    assert_eq!(c.local(1, &gone).unwrap().value, None);
    assert_eq!(c.local(1, &late_del).unwrap().value, None);

    // Tombstones stay through the grace period, then go once every replica completed an
    // exchange with every other one since they arrived; the deleted keys stay deleted.
    let ks = [c.ks.clone()];
    let all_exchange = || async {
        for x in [1, 2, 3] {
            for y in [1, 2, 3] {
                if x != y {
                    let s = c.node(x).anti_entropy_once(c.ks.id, 0, y).await.unwrap();
                    assert!(s.complete, "{x} with {y}: {s:?}");
                }
            }
        }
    };
    for clock in c.clocks.values() {
        clock.advance(DEFAULT_TOMBSTONE_GRACE_MS - 1_000);
    }
    all_exchange().await;
    for n in [1, 2, 3] {
        assert_eq!(c.node(n).purge_tombstones_once(&ks).unwrap(), 0, "node {n}");
    }
    for clock in c.clocks.values() {
        clock.advance(2_000);
    }
    assert_eq!(c.node(1).purge_tombstones_once(&ks).unwrap(), 2);
    assert_eq!(c.local(1, &gone), None);
    // Nodes 2 and 3 still send their tombstones to node 1, which lacks the keys: past the grace
    // period, it does not take them back (else purges would chase each other forever).
    all_exchange().await;
    assert_eq!((c.local(1, &gone), c.local(1, &late_del)), (None, None));
    for n in [2, 3] {
        assert_eq!(c.node(n).purge_tombstones_once(&ks).unwrap(), 2, "node {n}");
        assert_eq!((c.local(n, &gone), c.local(n, &late_del)), (None, None));
    }
    for k in [&gone, &late_del] {
        assert_eq!(c.node(2).get(&c.ks, &pref, k, ALL).await.unwrap(), None);
    }
    assert!(c.local(1, &d1).is_some(), "values are never purged");
}

/// A coordinator whose clock runs a minute ahead, beyond the 500 ms maximum offset: the other
/// replicas refuse its write, which fails saying so (it applied on the coordinator only, which
/// keeps hints for the others); no other clock moves, and no read returns or spreads the
/// refused record. Once real time reaches the write's timestamp the hints deliver it.
#[tokio::test]
async fn a_coordinator_from_the_future_is_refused_until_time_catches_up() {
    let c = ApCluster::new(3, defaults);
    let k = b"ahead".to_vec();
    let pref = c.pref(&k);
    assert_eq!(pref, vec![2, 3, 1]);
    c.clocks[&1].advance(60_000);
    let err = c
        .node(1)
        .put(&c.ks, &pref, &k, b"1".to_vec(), ALL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                op: "write",
                needed: 3,
                answered: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("60000 ms ahead") && msg.contains("maximum clock offset of 500 ms"),
        "{msg}"
    );
    for n in [2, 3] {
        let s = c.node(n).status();
        assert_eq!((s.clock_refusals, s.skew_events), (1, 1), "node {n}");
        assert_eq!(c.local(n, &k), None, "node {n} stored a refused write");
    }
    assert!(
        c.local(1, &k).is_some(),
        "indeterminate: applied on the coordinator"
    );
    assert_eq!(c.node(1).hint_counts(), BTreeMap::from([(2, 1), (3, 1)]));

    // No clock moved: node 2's next write carries node 2's own time.
    let other = b"other".to_vec();
    let h2 = c
        .node(2)
        .put(&c.ks, &c.pref(&other), &other, b"2".to_vec(), ALL)
        .await
        .unwrap();
    assert_eq!(h2.physical_ms, 1_000_000);
    // A read that needs node 1's answer cannot use it, and repairs nothing with it.
    let err = c.node(2).get(&c.ks, &pref, &k, ALL).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                op: "read",
                answered: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ahead"), "{err}");
    assert_eq!(c.local(2, &k), None);
    // Node 2's anti-entropy does not take it either.
    let s = c.node(2).anti_entropy_once(c.ks.id, 1, 1).await.unwrap();
    assert_eq!((s.records_refused, s.records_applied), (1, 0), "{s:?}");
    assert_eq!(c.local(2, &k), None);
    // Hint replay is refused too while the write is beyond the bound.
    let s = c.node(1).replay_hints_once().await.unwrap();
    assert_eq!((s.delivered, s.failed), (0, 2));

    // Node 1's clock is right again and real time has reached the write: the hints deliver it.
    for n in [2, 3] {
        c.clocks[&n].advance(60_000);
    }
    let s = c.node(1).replay_hints_once().await.unwrap();
    assert_eq!((s.delivered, s.failed), (2, 0));
    for n in [1, 2, 3] {
        assert_eq!(c.local(n, &k).unwrap().value.as_deref(), Some(&b"1"[..]));
    }
    let got = c.node(2).get(&c.ks, &pref, &k, ALL).await.unwrap();
    assert_eq!(got.map(|(v, _)| v), Some(b"1".to_vec()));
}

#[tokio::test]
async fn invalid_requests_are_refused_before_any_write() {
    let c = ApCluster::new(3, |cfg| cfg.max_value_bytes = 4);
    let pref = c.pref(b"k");
    let n1 = c.node(1);
    let big = n1
        .put(&c.ks, &pref, b"k", vec![0; 5], ALL)
        .await
        .unwrap_err();
    assert!(big.to_string().contains("limit is 4 bytes"), "{big}");
    let empty = n1.put(&c.ks, &pref, b"", vec![], ALL).await.unwrap_err();
    assert!(matches!(empty, ApError::InvalidArgument(_)));
    let long = vec![b'k'; MAX_KEY_BYTES + 1];
    assert!(matches!(
        n1.get(&c.ks, &pref, &long, ALL).await,
        Err(ApError::InvalidArgument(_))
    ));
    assert_eq!(c.local(1, b"k"), None);
}

/// Per-call timeout used by the timeout test: short, because the hung call never completes and
/// the test waits for exactly this long (the result does not depend on machine load).
const TEST_TIMEOUT_MS: u64 = 50;

#[tokio::test]
async fn a_replica_that_never_answers_times_out_and_is_replaced_by_a_hint() {
    let c = ApCluster::new(5, |cfg| {
        cfg.write_timeout_ms = TEST_TIMEOUT_MS;
        cfg.read_timeout_ms = TEST_TIMEOUT_MS;
    });
    let k = key("hung");
    let pref = c.pref(&k);
    c.hang(2);
    // Node 2's ack never comes: after the timeout node 4 takes a hint for it, and W = 3 is met.
    c.node(1)
        .put(&c.ks, &pref, &k, b"v".to_vec(), ALL)
        .await
        .unwrap();
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(2, 1)]));
    // A read that needs node 2 cannot finish: the timeout turns the hang into Unavailable.
    let err = c.node(1).get(&c.ks, &pref, &k, ALL).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApError::Unavailable {
                op: "read",
                needed: 3,
                answered: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let got = c.node(1).get(&c.ks, &pref, &k, QUORUM).await.unwrap();
    assert_eq!(got.map(|(v, _)| v), Some(b"v".to_vec()));
}

/// A caller that gives up before W acks does not stop the write: its remaining sends and the
/// hint that replaces a hung replica still complete (on the engine's straggler task), and
/// `wait_writes_idle` waits for them.
#[tokio::test]
async fn a_write_whose_caller_gives_up_still_reaches_every_replica_or_its_hint() {
    let c = ApCluster::new(5, |cfg| {
        cfg.write_timeout_ms = TEST_TIMEOUT_MS;
    });
    let k = key("abandoned");
    let pref = c.pref(&k);
    assert_eq!(pref, vec![1, 2, 3, 4, 5]);
    c.hang(3);
    // W = 3 needs node 3's ack or, after the write timeout, node 4's hint: the caller's own
    // deadline, far shorter, passes first and drops the put.
    let n1 = c.node(1);
    let put = n1.put(&c.ks, &pref, &k, b"v".to_vec(), ALL);
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(1), put).await;
    assert!(gave_up.is_err(), "W cannot be met before the write timeout");
    c.node(1).wait_writes_idle().await;
    for replica in [1, 2, 3] {
        assert_eq!(
            c.local(replica, &k).and_then(|r| r.value).as_deref(),
            Some(&b"v"[..]),
            "replica {replica}"
        );
    }
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(3, 1)]));
}
