//! Corrupt records on real nodes (3 nodes on loopback TCP, data in memory engines the test
//! keeps): a byte flipped in one replica's record (`repair::flip`, what `kv chaos corrupt` does)
//! never fails a read while another replica holds a good copy — in AP at every consistency
//! level, in CP for linearizable and stale reads — and the record is repaired on that replica
//! afterwards (read repair, anti-entropy, the CP record fetch, the scrub). `DATA_LOSS` remains the
//! answer when no replica has a good copy.

use kv_core::net::{Dialer, TcpDialer};
use kv_proto::v1 as pb;
use kv_proto::v1::kv_client::KvClient;
use kv_server::clock::SystemClock;
use kv_server::config::NodeConfig;
use kv_server::cp::{group_id, CpConfig};
use kv_server::node::Node;
use kv_server::repair::flip::{flip, Selection};
use kv_server::storage::memory::MemoryEngine;
use kv_server::storage::Engine;
use kv_server::types::Member;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Generous bound on anything that must eventually happen on a loaded 2-core machine.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Deadline of ordinary test requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The scrub as the tests run it: unpaced, pages on the blocking pool as on a real disk.
const FAST_SCRUB: kv_server::repair::scrub::ScrubOptions = kv_server::repair::scrub::ScrubOptions {
    records_per_second: 1_000_000,
    offload: true,
};
/// Partitions of the test cluster (few: every node holds every partition with N = 3 anyway).
const PARTITIONS: u32 = 4;

struct Running {
    node: Arc<Node>,
    engine: Arc<dyn Engine>,
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn cluster() -> Vec<Running> {
    let mut listeners = vec![];
    let mut members = vec![];
    for i in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        members.push(Member {
            id: i,
            name: format!("n{i}"),
            addr: addr.clone(),
            peer_addr: addr,
        });
        listeners.push(l);
    }
    let mut out = vec![];
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut config = NodeConfig::new(&format!("n{}", i + 1), "test", members.clone());
        config.partitions = PARTITIONS;
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let node = Node::new(
            config,
            engine.clone(),
            Arc::new(TcpDialer),
            Arc::new(SystemClock::default()),
        )
        .unwrap();
        out.push((node, engine, listener));
    }
    let mut running = vec![];
    for (node, engine, listener) in out {
        // Started together: each group's initialization needs its members.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = node.clone();
        let heartbeats = tokio::spawn(kv_server::server::heartbeat_loop(node.clone()));
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let _ = kv_server::server::serve_tcp(served, listener, shutdown).await;
            heartbeats.abort();
        });
        running.push(Running {
            addr: node.me.addr.clone(),
            node,
            engine,
            stop: Some(stop),
        });
    }
    let starts = running.iter().map(|r| r.node.start_cp(CpConfig::default()));
    for s in futures::future::join_all(starts).await {
        s.unwrap();
    }
    running
}

fn client(addr: &str) -> KvClient<Channel> {
    KvClient::new(TcpDialer.channel(addr).unwrap())
}

fn request<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.set_timeout(REQUEST_TIMEOUT);
    r
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > EVENTUALLY => panic!("{what}: still failing: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn put(addr: &str, keyspace: &str, key: &str, value: &str, consistency: pb::Consistency) {
    let c = client(addr);
    eventually(&format!("put {keyspace}/{key}"), || {
        let mut c = c.clone();
        async move {
            c.put(request(pb::PutRequest {
                keyspace: keyspace.into(),
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                options: Some(pb::RequestOptions {
                    consistency: consistency as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
        }
    })
    .await;
}

async fn get(
    addr: &str,
    keyspace: &str,
    key: &str,
    consistency: pb::Consistency,
    stale: bool,
) -> Result<pb::GetResponse, Status> {
    client(addr)
        .get(request(pb::GetRequest {
            keyspace: keyspace.into(),
            key: key.as_bytes().to_vec(),
            options: Some(pb::RequestOptions {
                consistency: consistency as i32,
                stale,
                ..Default::default()
            }),
        }))
        .await
        .map(|r| r.into_inner())
}

fn corrupt(node: &Running, keyspace: &str, key: &str) {
    let flipped = flip(
        &node.engine,
        &Selection::Keys(vec![(keyspace.into(), key.as_bytes().to_vec())]),
    )
    .unwrap();
    assert!(
        !flipped.is_empty(),
        "{keyspace}/{key} on {}",
        node.node.me.name
    );
}

fn ap_corrupt(node: &Running, key: &str) -> bool {
    node.node
        .ap
        .store(2)
        .unwrap()
        .is_corrupt(key.as_bytes())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_reads_answer_from_good_replicas_and_repair_the_corrupt_one() {
    use pb::Consistency as C;
    let nodes = cluster().await;
    let n2 = &nodes[1];
    for (i, level) in [C::One, C::Quorum, C::All].into_iter().enumerate() {
        let key = format!("ap-{i}");
        put(&nodes[0].addr, "ap", &key, "good", C::All).await;
        corrupt(n2, "ap", &key);
        assert!(ap_corrupt(n2, &key));
        // n2 coordinates: its own copy is asked first and is corrupt.
        let got = get(&n2.addr, "ap", &key, level, false).await.unwrap();
        assert!(got.found && got.value == b"good", "{level:?}: {got:?}");
        assert!(!ap_corrupt(n2, &key), "{level:?}: read repair replaced it");
        let again = get(&n2.addr, "ap", &key, C::One, false).await.unwrap();
        assert_eq!(again.value, b"good");
    }

    // Anti-entropy: the corrupt record's Merkle leaf differs, and the peer's copy replaces it.
    put(&nodes[0].addr, "ap", "ae", "good", C::All).await;
    corrupt(&nodes[2], "ap", "ae");
    let partition = nodes[2].node.ring.partition_for_key(b"ae");
    let stats = nodes[2]
        .node
        .ap
        .anti_entropy_once(2, partition, 1)
        .await
        .unwrap();
    assert!(
        stats.differing_leaves >= 1 && stats.records_applied >= 1,
        "{stats:?}"
    );
    assert!(!ap_corrupt(&nodes[2], "ae"));

    // A corrupt record the peer has no copy of is removed by the exchange: the peer's
    // "nothing" is the only copy left (here the record was only ever on n3).
    let n3 = &nodes[2];
    let solo = kv_server::ap::ApRecord {
        key: b"solo".to_vec(),
        hlc: n3.node.ap.hlc().now().unwrap(),
        value: Some(b"only here".to_vec()),
    };
    n3.node.ap.apply_replica(2, solo, None).await.unwrap();
    corrupt(n3, "ap", "solo");
    let partition = n3.node.ring.partition_for_key(b"solo");
    n3.node.ap.anti_entropy_once(2, partition, 1).await.unwrap();
    assert!(!ap_corrupt(n3, "solo"));
    assert_eq!(n3.node.ap.read_replica(2, b"solo").unwrap(), None);

    // The scrub finds it without any read.
    put(&nodes[0].addr, "ap", "scrubbed", "good", C::All).await;
    corrupt(n2, "ap", "scrubbed");
    let keyspaces = kv_server::types::KeyspaceDef::builtin();
    let stats =
        kv_server::repair::scrub::scrub_pass(&n2.node.ap, None, &keyspaces, FAST_SCRUB).await;
    assert!(stats.corrupt >= 1 && stats.repaired >= 1, "{stats:?}");
    assert!(!ap_corrupt(n2, "scrubbed"));

    // No good copy anywhere: DATA_LOSS, at every level, never a wrong value.
    put(&nodes[0].addr, "ap", "lost", "good", C::All).await;
    for n in &nodes {
        corrupt(n, "ap", "lost");
    }
    for level in [C::One, C::Quorum, C::All] {
        let err = get(&n2.addr, "ap", "lost", level, false).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{level:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_reads_fetch_a_corrupt_record_from_the_group_and_rewrite_it() {
    use pb::Consistency as C;
    let nodes = cluster().await;
    let keys = ["cp-lin", "cp-stale", "cp-scrub", "cp-lost"];
    for k in keys {
        put(&nodes[0].addr, "cp", k, "good", C::Default).await;
    }
    // Every replica has applied them (a stale read from each sees the value).
    for n in &nodes {
        for k in keys {
            eventually("applied everywhere", || async {
                match get(&n.addr, "cp", k, C::Default, true).await? {
                    r if r.found => Ok(()),
                    _ => Err(Status::not_found("not yet")),
                }
            })
            .await;
        }
    }
    let leader_of = |key: &str| {
        let group = group_id(1, nodes[0].node.ring.partition_for_key(key.as_bytes()));
        let id = nodes[0].node.cp().unwrap().leader_of(group).unwrap();
        (group, &nodes[id as usize - 1])
    };
    let cp_corrupt = |n: &Running, group: u64, key: &str| {
        // Checked on the raw bytes: any read through the node would repair it.
        let tree = n
            .engine
            .open_tree(&kv_server::cp::keys::tree_name(group, "sm"))
            .unwrap();
        let bytes = tree
            .get(&kv_server::cp::keys::data_key(
                &[&1u32.to_be_bytes()[..], key.as_bytes()].concat(),
            ))
            .unwrap()
            .unwrap();
        kv_server::storage::record::decode(&bytes, key.as_bytes(), "sm", "memory").is_err()
    };

    // Linearizable read: the leader's copy is corrupt.
    let (group, leader) = leader_of("cp-lin");
    corrupt(leader, "cp", "cp-lin");
    assert!(cp_corrupt(leader, group, "cp-lin"));
    let got = get(&nodes[0].addr, "cp", "cp-lin", C::Default, false)
        .await
        .unwrap();
    assert!(got.found && got.value == b"good", "{got:?}");
    assert!(
        !cp_corrupt(leader, group, "cp-lin"),
        "rewritten on the leader"
    );

    // Stale read on a follower whose copy is corrupt.
    let (group, leader) = leader_of("cp-stale");
    let follower = nodes
        .iter()
        .find(|n| n.node.me.id != leader.node.me.id)
        .unwrap();
    corrupt(follower, "cp", "cp-stale");
    let got = get(&follower.addr, "cp", "cp-stale", C::Default, true)
        .await
        .unwrap();
    assert!(got.found && got.value == b"good", "{got:?}");
    assert!(!cp_corrupt(follower, group, "cp-stale"));

    // The scrub.
    let (group, _) = leader_of("cp-scrub");
    let n3 = &nodes[2];
    corrupt(n3, "cp", "cp-scrub");
    let stats =
        kv_server::repair::scrub::scrub_pass(&n3.node.ap, n3.node.cp().ok(), &[], FAST_SCRUB).await;
    assert!(stats.corrupt >= 1 && stats.repaired >= 1, "{stats:?}");
    assert!(!cp_corrupt(n3, group, "cp-scrub"));

    // No good copy on any member: DATA_LOSS, linearizable and stale.
    for n in &nodes {
        corrupt(n, "cp", "cp-lost");
    }
    let err = get(&nodes[0].addr, "cp", "cp-lost", C::Default, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let err = get(&nodes[1].addr, "cp", "cp-lost", C::Default, true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
}
