//! What the in-memory network's filters do to each leg of a message, checked through both seams
//! with a recording fake replica (the CP side needs no engine to show routing and errors).

use super::*;
use kv_server::ap::{ApEngine, ApRecord, RangePage, TransportError as ApError};
use kv_server::cp::network::{RaftKind, TransportError as RaftError};
use kv_server::types::Hlc;

/// A replica that records what it was asked to store.
#[derive(Default)]
struct Recorder {
    writes: Mutex<Vec<Vec<u8>>>,
}

impl Recorder {
    fn keys(&self) -> Vec<Vec<u8>> {
        self.writes.lock().unwrap().clone()
    }
}

impl ApService for Recorder {
    fn write(&self, _ks: u32, record: ApRecord, _hint: Option<NodeId>) -> Result<(), String> {
        self.writes.lock().unwrap().push(record.key);
        Ok(())
    }
    fn read(&self, _ks: u32, key: &[u8]) -> Result<Option<ApRecord>, String> {
        Ok(Some(record(key)))
    }
    fn merkle_leaves(&self, _ks: u32, _partition: u32) -> Result<Vec<u64>, String> {
        Ok(vec![7; 4])
    }
    fn merkle_range(
        &self,
        _ks: u32,
        _p: u32,
        leaves: &[u32],
        _after: Option<&[u8]>,
    ) -> Result<RangePage, String> {
        Ok(RangePage {
            records: leaves.iter().map(|l| record(&l.to_be_bytes())).collect(),
            resume_after: None,
        })
    }
}

fn record(key: &[u8]) -> ApRecord {
    ApRecord {
        key: key.to_vec(),
        hlc: Hlc {
            physical_ms: 1,
            logical: 0,
            node_id: 1,
        },
        value: Some(b"v".to_vec()),
    }
}

/// Three nodes with recording replicas; returns the network and the replicas by id.
fn three() -> (Arc<MemNet>, BTreeMap<NodeId, Arc<Recorder>>) {
    let net = MemNet::new();
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        let r = Arc::new(Recorder::default());
        net.add_ap(id, r.clone());
        replicas.insert(id, r);
    }
    (net, replicas)
}

/// Long enough that a hung call is surely hung (time is paused in these tests).
const HUNG: Duration = Duration::from_secs(3600);

async fn write(net: &Arc<MemNet>, from: NodeId, to: NodeId, key: &str) -> Result<(), ApError> {
    let call = net
        .ap_transport(from)
        .write(to, 1, record(key.as_bytes()), None);
    tokio::time::timeout(HUNG, call)
        .await
        .unwrap_or_else(|_| panic!("write {key} from {from} to {to} hung"))
}

async fn hangs(net: &Arc<MemNet>, from: NodeId, to: NodeId, key: &str) -> bool {
    let call = net
        .ap_transport(from)
        .write(to, 1, record(key.as_bytes()), None);
    tokio::time::timeout(HUNG, call).await.is_err()
}

#[tokio::test(start_paused = true)]
async fn messages_are_delivered_and_counted_until_a_partition_and_again_after_heal() {
    let (net, replicas) = three();
    write(&net, 1, 2, "a").await.unwrap();
    assert_eq!(replicas[&2].keys(), vec![b"a".to_vec()]);
    assert_eq!(net.delivered(MessageKind::ApWrite), 1);

    net.partition(&[1], &[2, 3]);
    for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
        let err = write(&net, from, to, "cut").await.unwrap_err();
        assert!(
            matches!(err, ApError::Unreachable { node, .. } if node == to),
            "{err}"
        );
    }
    write(&net, 2, 3, "same side").await.unwrap();
    assert!(!net.reachable(1, 2) && !net.reachable(3, 1) && net.reachable(2, 3));
    assert!(!replicas
        .values()
        .any(|r| r.keys().contains(&b"cut".to_vec())));

    net.heal();
    write(&net, 1, 2, "healed").await.unwrap();
    assert!(net.reachable(1, 2));
    assert_eq!(net.delivered(MessageKind::ApWrite), 3);
}

#[tokio::test(start_paused = true)]
async fn a_one_way_drop_loses_requests_one_way_and_answers_the_other() {
    let (net, replicas) = three();
    net.drop_one_way(1, 2);
    // 1 → 2: the request is lost, nothing applied, the sender learns at once.
    assert!(matches!(
        write(&net, 1, 2, "req").await,
        Err(ApError::Unreachable { .. })
    ));
    assert!(replicas[&2].keys().is_empty());
    // 2 → 1: delivered and applied, but the answer (1 → 2) is lost: the caller waits for its
    // own timeout, as with a real lost ack.
    assert!(hangs(&net, 2, 1, "ack lost").await);
    assert_eq!(replicas[&1].keys(), vec![b"ack lost".to_vec()]);
    // Other links are untouched; the node still reaches itself.
    write(&net, 1, 3, "other").await.unwrap();
    write(&net, 1, 1, "self").await.unwrap();
    assert!(!net.reachable(1, 2) && net.reachable(2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_delay_applies_to_both_legs_and_adds_up() {
    let (net, _) = three();
    let by = Duration::from_millis(300);
    let id = net.delay(1, 2, by);
    net.delay(1, 2, by);
    let started = tokio::time::Instant::now();
    write(&net, 1, 2, "slow").await.unwrap();
    // Requests 1 → 2 are delayed twice over; the answer travels 2 → 1, which is not delayed.
    assert_eq!(started.elapsed(), 2 * by);
    let started = tokio::time::Instant::now();
    write(&net, 2, 1, "answer slow").await.unwrap();
    assert_eq!(started.elapsed(), 2 * by, "the answer leg 1 → 2 is delayed");
    net.remove_filter(id);
    let started = tokio::time::Instant::now();
    write(&net, 1, 2, "one delay left").await.unwrap();
    assert_eq!(started.elapsed(), by);
    assert!(net.reachable(1, 2), "a delayed link is a reachable link");
}

#[tokio::test(start_paused = true)]
async fn a_hung_node_carries_out_requests_but_never_answers() {
    let (net, replicas) = three();
    net.hang(2);
    assert!(hangs(&net, 1, 2, "lost ack").await);
    assert_eq!(replicas[&2].keys(), vec![b"lost ack".to_vec()]);
    // Sent and carried out, but not delivered as far as the caller knows.
    assert_eq!(net.sent(MessageKind::ApWrite), 1);
    assert_eq!(net.delivered(MessageKind::ApWrite), 0);
    assert!(net.reachable(1, 2), "liveness still sees a hung node");
    // Its own requests still get answers.
    write(&net, 2, 3, "outgoing").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refusing_node_answers_an_error_without_acting_on_the_request() {
    let (net, replicas) = three();
    net.refuse(2, Kinds::Only(MessageKind::ApWrite));
    let err = write(&net, 1, 2, "refused").await.unwrap_err();
    assert!(matches!(err, ApError::Remote { node: 2, .. }), "{err}");
    assert!(replicas[&2].keys().is_empty());
    // Other kinds pass, and node 2's own writes are answered.
    let t = net.ap_transport(1);
    assert_eq!(
        t.read(2, 1, b"k".to_vec()).await.unwrap(),
        Some(record(b"k"))
    );
    write(&net, 2, 1, "outgoing").await.unwrap();
    let page = t.merkle_range(2, 1, 0, vec![1, 2, 3], None).await.unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(net.merkle_range_records(), 3);
    assert_eq!(t.merkle_leaves(2, 1, 0).await.unwrap(), vec![7; 4]);
}

#[tokio::test(start_paused = true)]
async fn down_removed_and_suspected_nodes_as_callers_and_liveness_see_them() {
    let (net, replicas) = three();
    let alive = |from: NodeId, to: NodeId| net.liveness(from).is_alive(to);
    net.set_down(2, true);
    assert!(matches!(
        write(&net, 1, 2, "down").await,
        Err(ApError::Unreachable { node: 2, .. })
    ));
    assert!(
        !alive(1, 2) && alive(2, 2),
        "a node is always alive to itself"
    );
    net.set_down(2, false);
    write(&net, 1, 2, "up").await.unwrap();
    assert_eq!(replicas[&2].keys(), vec![b"up".to_vec()]);

    net.suspect(3, true);
    assert!(!alive(1, 3));
    write(&net, 1, 3, "answers anyway").await.unwrap();
    net.suspect(3, false);
    assert!(alive(1, 3));

    net.remove(3);
    assert!(!alive(1, 3));
    assert!(write(&net, 1, 3, "gone").await.is_err());
    assert!(!alive(1, 99), "a node never added is not alive");
}

#[tokio::test(start_paused = true)]
async fn raft_messages_map_failures_to_what_openraft_expects() {
    let (net, _) = three();
    let t = net.raft_transport(1);
    // No CP engine on node 2: unreachable ("down"), so openraft backs off.
    let err = t.send(2, 7, RaftKind::Vote, vec![1]).await.unwrap_err();
    assert!(
        matches!(&err, RaftError::Unreachable { to: 2, reason } if reason == "down"),
        "{err}"
    );
    net.isolate(1);
    let err = t.send(2, 7, RaftKind::Vote, vec![1]).await.unwrap_err();
    assert!(
        matches!(&err, RaftError::Unreachable { to: 2, reason } if reason == "partitioned"),
        "{err}"
    );
    // A Raft-only filter leaves AP traffic alone.
    net.heal();
    net.add_filter(Filter {
        kinds: Kinds::Raft,
        ..Filter::between(Nodes::All, Nodes::All, Fault::Drop)
    });
    write(&net, 1, 2, "ap passes").await.unwrap();
    assert!(matches!(
        t.send(2, 7, RaftKind::Append, vec![]).await,
        Err(RaftError::Unreachable { .. })
    ));
}

/// Every key in one partition whose preference list is the nodes in id order.
struct OnePartition(Vec<NodeId>);

impl kv_server::ap::ApRing for OnePartition {
    fn partition_for_key(&self, _key: &[u8]) -> u32 {
        0
    }
    fn partition_count(&self) -> u32 {
        1
    }
    fn preference_list(&self, _partition: u32) -> Vec<NodeId> {
        self.0.clone()
    }
}

/// Real AP engines on the network, each on a simulated disk with a manual clock: a write
/// reaches W through a durable hint while a replica is down, the hint survives its holder's
/// power loss, and is delivered once the owner is back.
#[tokio::test]
async fn ap_engines_write_through_a_hint_that_survives_a_crash_of_its_holder() {
    use crate::clock::ManualClock;
    use crate::disk::SimDisk;
    use kv_server::ap::{ApConfig, Consistency, RequestOptions};
    use kv_server::types::KeyspaceDef;

    let net = MemNet::new();
    let ids: Vec<NodeId> = vec![1, 2, 3, 4];
    let ring = Arc::new(OnePartition(ids.clone()));
    let disks: BTreeMap<NodeId, SimDisk> = ids
        .iter()
        .map(|id| (*id, SimDisk::new(&format!("node-{id}"))))
        .collect();
    let clock = ManualClock::new(1_000_000);
    let start = |id: NodeId| {
        let engine = ApEngine::open(
            ApConfig::new(id),
            Arc::new(disks[&id].open()),
            clock.clone(),
            net.ap_transport(id),
            net.liveness(id),
            ring.clone(),
        )
        .expect("engine opens");
        net.add_ap(id, Arc::new(engine.clone()));
        engine
    };
    let engines: BTreeMap<NodeId, ApEngine> = ids.iter().map(|id| (*id, start(*id))).collect();
    let ks = KeyspaceDef::builtin().remove(1);
    let all = RequestOptions::with(Consistency::All);

    net.set_down(3, true);
    engines[&1]
        .put(&ks, &ids, b"k", b"v".to_vec(), all)
        .await
        .expect("W = N reached through a hint on node 4");
    assert_eq!(engines[&4].hint_counts(), BTreeMap::from([(3, 1)]));
    // The coordinator stores its own replica directly; node 2's copy and node 4's hint travel.
    assert_eq!(net.delivered(MessageKind::ApWrite), 2);

    // Node 4 loses power: the hint was flushed before it counted, so it is still there.
    disks[&4].crash();
    let node4 = start(4);
    assert_eq!(node4.hint_counts(), BTreeMap::from([(3, 1)]));

    net.set_down(3, false);
    let stats = node4.replay_hints_once().await.unwrap();
    assert_eq!(stats.delivered, 1);
    let on_3 = engines[&3].read_replica(ks.id, b"k").unwrap();
    assert_eq!(on_3.and_then(|r| r.value), Some(b"v".to_vec()));
}

/// The AP cluster's faults undo one at a time: healing a partition keeps a refusal, and a
/// refusal lifted keeps the partition's peers apart until the heal.
#[tokio::test(start_paused = true)]
async fn an_ap_cluster_heals_partitions_without_lifting_other_faults() {
    use crate::memnet::ApCluster;
    use kv_server::ap::{Consistency, RequestOptions};

    let c = ApCluster::new(3, |_| {});
    let one = RequestOptions::with(Consistency::One);
    c.refuse_writes(2, true);
    c.partition(&[1], &[3]);
    assert!(!c.net.reachable(1, 3) && c.net.reachable(1, 2));
    c.heal();
    assert!(c.net.reachable(1, 3));
    let k = b"k".to_vec();
    c.node(1)
        .put(&c.ks, &[1, 2, 3], &k, b"v".to_vec(), one)
        .await
        .unwrap();
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.local(2, &k), None, "node 2 still refuses writes");
    assert!(c.local(3, &k).is_some(), "the partition is healed");
    c.refuse_writes(2, false);
    c.node(1)
        .put(&c.ks, &[1, 2, 3], &k, b"w".to_vec(), one)
        .await
        .unwrap();
    c.node(1).wait_writes_idle().await;
    assert_eq!(c.local(2, &k).and_then(|r| r.value), Some(b"w".to_vec()));
    // A killed node keeps its engine; the network and liveness no longer reach it.
    c.kill(3);
    assert!(!c.net.liveness(1).is_alive(3));
    c.revive(3);
    assert!(c.net.liveness(1).is_alive(3));
}
