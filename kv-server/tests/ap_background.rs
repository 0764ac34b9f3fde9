//! Tests of the AP engine's background work (`spawn_background`): hint replay and anti-entropy
//! refill a returning or wiped replica on their own; each job runs on its own, so a hung
//! anti-entropy round does not hold up hint replay (on tokio's paused clock); aborting the one
//! handle stops every job.

use kv_server::ap::{ApConfig, Consistency, RequestOptions};
use kv_testkit::disk::SimDisk;
use kv_testkit::memnet::ap_cluster::rec;
use kv_testkit::memnet::{ApCluster, Fault, Filter, Kinds, Legs, MessageKind, Nodes};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// Yields until `done()` holds; fails (never hangs) after a generous bound of iterations.
async fn until(mut done: impl FnMut() -> bool) {
    const MAX_YIELDS: usize = 100_000;
    for _ in 0..MAX_YIELDS {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached after {MAX_YIELDS} yields");
}

#[tokio::test]
async fn background_work_replays_hints_and_repairs_a_wiped_replica() {
    let mut c = ApCluster::new(3, defaults);
    let keys: Vec<Vec<u8>> = (0..30u8).map(|i| vec![b'a' + i % 3, i]).collect();
    c.kill(3);
    for k in &keys {
        c.node(1)
            .put(&c.ks, &c.pref(k), k, b"v".to_vec(), QUORUM)
            .await
            .unwrap();
    }
    // With 3 nodes there is no fallback beyond N: the coordinator keeps the hints for node 3
    // (stored once the writes' unfinished sends are, after the acknowledgements).
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.node(1).hint_counts(), BTreeMap::from([(3, keys.len())]));
    assert!(c.node(2).hint_counts().is_empty());
    // Node 1's hint replay does not run here: only anti-entropy can refill the wiped node.
    c.disks.insert(3, SimDisk::new("node-3, wiped"));
    let n3 = c.start(3);
    // Intervals tick immediately on start, so the first anti-entropy round runs right away.
    let ks = c.ks.clone();
    let task = n3.spawn_background(Arc::new(move || vec![ks.clone()]));
    until(|| keys.iter().all(|k| c.local(3, k).is_some())).await;
    task.abort();
    for k in &keys {
        assert_eq!(c.local(3, k), c.local(1, k));
    }

    // Hints: node 4 of a 5-node cluster holds one for node 3 and delivers it once 3 is back.
    let c = ApCluster::new(5, defaults);
    let k = key("bg");
    c.kill(3);
    c.node(1)
        .put(&c.ks, &c.pref(&k), &k, b"v".to_vec(), ALL)
        .await
        .unwrap();
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.node(4).hint_counts(), BTreeMap::from([(3, 1)]));
    c.revive(3);
    let task = c.node(4).spawn_background(Arc::new(Vec::new));
    until(|| c.node(4).hint_counts().is_empty()).await;
    task.abort();
    assert_eq!(c.local(3, &k).unwrap().value.as_deref(), Some(&b"v"[..]));
}

/// Longer than any wait in these tests: a Merkle call stays hung (not timed out) throughout.
const MERKLE_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// How long a test waits for a condition, in paused (simulated) time: many replay periods.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a waiting test checks its condition, in paused time.
const POLL: Duration = Duration::from_millis(10);

/// Three nodes that replicate every partition of keyspace `ap`, whose writes and reads reach
/// each other at once and whose Merkle calls never arrive, as when a peer hangs in the middle
/// of an anti-entropy exchange.
fn cluster() -> ApCluster {
    let c = ApCluster::new(3, |cfg| cfg.merkle_timeout_ms = MERKLE_TIMEOUT_MS);
    for kind in [MessageKind::MerkleLeaves, MessageKind::MerkleRange] {
        c.net.add_filter(Filter {
            kinds: Kinds::Only(kind),
            legs: Legs::Requests,
            ..Filter::between(Nodes::All, Nodes::All, Fault::Hang)
        });
    }
    c
}

/// Merkle calls started (none ever finishes).
fn merkle_calls(c: &ApCluster) -> u64 {
    c.net.sent(MessageKind::MerkleLeaves) + c.net.sent(MessageKind::MerkleRange)
}

/// Waits in paused time until `done()` holds; fails after `DEADLINE`.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let reached = tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{what}: not reached within {DEADLINE:?}");
}

#[tokio::test(start_paused = true)]
async fn hint_replay_proceeds_while_an_anti_entropy_round_is_blocked() {
    let c = cluster();
    let (n1, ks) = (c.node(1), c.ks.clone());
    let keyspaces = ks.clone();
    let task = n1.spawn_background(Arc::new(move || vec![keyspaces.clone()]));
    // The first anti-entropy round starts at once and hangs in its first Merkle call.
    wait_for("anti-entropy blocked in a Merkle call", || {
        merkle_calls(&c) == 1
    })
    .await;

    // Only now does node 1 take a hint for node 2: a replay that had to wait for the
    // anti-entropy round would not deliver it before the Merkle timeout, an hour away.
    let record = rec("k", 1_000_000, Some("v"));
    n1.apply_replica(ks.id, record.clone(), Some(2))
        .await
        .unwrap();
    assert_eq!(n1.hint_counts(), BTreeMap::from([(2, 1)]));
    wait_for("the hint delivered", || n1.hint_counts().is_empty()).await;
    let n2 = c.node(2);
    assert_eq!(n2.read_replica(ks.id, b"k").unwrap(), Some(record));
    assert_eq!(
        merkle_calls(&c),
        1,
        "the anti-entropy round is still in its first call"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn aborting_the_background_handle_stops_every_job() {
    let c = cluster();
    let (n1, ks) = (c.node(1), c.ks.clone());
    let keyspaces = ks.clone();
    let task = n1.spawn_background(Arc::new(move || vec![keyspaces.clone()]));
    wait_for("anti-entropy blocked in a Merkle call", || {
        merkle_calls(&c) == 1
    })
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // Many replay periods pass (paused time jumps ahead): no replay task is left to deliver.
    n1.apply_replica(ks.id, rec("k", 1_000_000, Some("v")), Some(2))
        .await
        .unwrap();
    let replay_period = Duration::from_millis(ApConfig::new(1).hint_replay_interval_ms);
    tokio::time::sleep(10 * replay_period).await;
    assert_eq!(n1.hint_counts(), BTreeMap::from([(2, 1)]));
    assert_eq!(merkle_calls(&c), 1);
}
