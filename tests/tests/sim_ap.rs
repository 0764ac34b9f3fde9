//! AP keyspace simulations: real nodes on turmoil's network, the `ap` keyspace (N=3, R=W=quorum
//! by default). One test per guarantee of ARCHITECTURE.md's AP list: writes on both sides of a
//! partition and convergence to the newest acknowledged write after the heal, consistency levels
//! with a node down, hinted handoff, read repair, deletes that never come back,
//! anti-entropy repairing a wiped replica, and replica writes from far in the future (or for a
//! node that does not exist) refused through the internal API.
//!
//! Every test is seeded (`KV_SEED`, default `DEFAULT_SEED`) and prints the exact command
//! that replays it when it fails. Replicas are read directly through the internal `ApRead`
//! call, which repairs nothing, so convergence is observed rather than caused by the checker.

use kv_client::{Client, Consistency, Options, WriteResult};
use kv_core::net::Dialer;
use kv_proto::v1::NodeState;
use kv_server::ap::engine::{
    DEFAULT_ANTI_ENTROPY_INTERVAL_MS, DEFAULT_HINT_REPLAY_INTERVAL_MS, DEFAULT_MERKLE_TIMEOUT_MS,
};
use kv_server::config::NodeConfig;
use kv_server::membership::DOWN_AFTER;
use kv_testkit::sim::{
    add_nodes_on, client, eventually, hints_held, wait_node_state, ReplicaReader, SimDisks,
    SimOptions, TurmoilDialer,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The seed used when `KV_SEED` is not set.
const DEFAULT_SEED: u64 = 7;
/// The AP keyspace and its id (what the internal API names it by).
const AP: &str = "ap";
const AP_ID: u32 = 2;
/// Deadline of every client request and direct replica read.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for cluster facts that follow from heartbeats (a node seen up or down).
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(20);
/// The default period of anti-entropy rounds; tests that must finish before any periodic round
/// (so that only the mechanism under test can have repaired a replica) keep it.
const DEFAULT_ANTI_ENTROPY: Duration = Duration::from_millis(DEFAULT_ANTI_ENTROPY_INTERVAL_MS);
/// The anti-entropy period of the convergence tests, shortened through
/// `NodeConfig::anti_entropy_interval_ms` so they need less simulated time; the bound scales
/// with it. (With the default 60 s period the partition test measured 61-121 s.)
const SIM_ANTI_ENTROPY_MS: u64 = 10_000;
/// How long replicas may take to converge after a heal, with no new writes: the peers must see
/// each other alive again (one heartbeat once the link is back, at most `DOWN_AFTER` in all),
/// pending hints replay (one replay interval), and anti-entropy must run. Each node exchanges a
/// partition with *one* co-replica per round, rotating through them, so a replica that traded
/// with its same-side peer in the first round after the heal trades with the other side in the
/// second: two rounds. The slack covers the rounds themselves (Merkle calls, one of which may
/// wait out its timeout on a connection that died in the partition, pushes) and the polling.
const CONVERGENCE_BOUND: Duration = Duration::from_millis(
    2 * SIM_ANTI_ENTROPY_MS
        + DEFAULT_HINT_REPLAY_INTERVAL_MS
        + DOWN_AFTER.as_millis() as u64
        + DEFAULT_MERKLE_TIMEOUT_MS
        + 5_000,
);
/// Node configs of the convergence tests: anti-entropy every `SIM_ANTI_ENTROPY_MS`.
fn short_anti_entropy(cfg: &mut NodeConfig) {
    cfg.anti_entropy_interval_ms = SIM_ANTI_ENTROPY_MS;
}

/// Node configs with every default.
fn defaults(_: &mut NodeConfig) {}

/// Node configs whose hints wait (an hour between replays), so a replica that missed writes
/// stays stale until a read or anti-entropy repairs it.
fn no_hint_replay(cfg: &mut NodeConfig) {
    cfg.hint_replay_interval_ms = 60 * 60 * 1000;
}

/// How often convergence is checked.
const POLL: Duration = Duration::from_millis(500);

fn seed() -> u64 {
    std::env::var("KV_SEED")
        .ok()
        .map(|s| s.parse().expect("KV_SEED must be an integer"))
        .unwrap_or(DEFAULT_SEED)
}

/// Prints how to replay a failed simulation.
struct Reproduce {
    test: &'static str,
    seed: u64,
}

impl Drop for Reproduce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nsimulation failed with seed {seed}; rerun it with:\n  KV_SEED={seed} cargo test -p tests --test sim_ap -- --exact {test}\n",
                seed = self.seed,
                test = self.test,
            );
        }
    }
}

/// A simulation of `nodes` nodes whose configs `tweak` adjusts; returns it with the nodes' disks
/// and the replay guard.
fn sim(
    test: &'static str,
    nodes: usize,
    tweak: fn(&mut NodeConfig),
    duration: Duration,
) -> (turmoil::Sim<'static>, SimDisks, Reproduce) {
    let seed = seed();
    let guard = Reproduce { test, seed };
    let mut sim = turmoil::Builder::new()
        .simulation_duration(duration)
        .rng_seed(seed)
        .tcp_capacity(1024)
        .build();
    let disks = SimDisks::default();
    add_nodes_on(
        &mut sim,
        &SimOptions {
            nodes,
            tweak: Arc::new(tweak),
            ..Default::default()
        },
        &disks,
    );
    (sim, disks, guard)
}

/// Runs the simulation until every client so far has finished; a failure panics.
fn run(sim: &mut turmoil::Sim<'_>) {
    sim.run()
        .unwrap_or_else(|e| panic!("simulation failed: {e}"));
}

fn addr(node: &str) -> String {
    format!("{node}:{}", kv_testkit::sim::SIM_PORT)
}

fn addrs(nodes: usize) -> Vec<String> {
    (1..=nodes).map(|i| addr(&format!("n{i}"))).collect()
}

fn with(consistency: Consistency) -> Options {
    Options {
        consistency,
        ..Default::default()
    }
}

/// The HLC of a write's version, as a totally ordered tuple.
type Hlc = (u64, u32, u64);

fn write_hlc(w: &WriteResult) -> Hlc {
    let h = w
        .version
        .as_ref()
        .and_then(|v| v.hlc)
        .expect("an AP write returns its HLC version");
    (h.physical_ms, h.logical, h.node_id)
}

fn record_hlc(r: &kv_proto::internal::Record) -> Hlc {
    let h = r.hlc.expect("a stored AP record has an HLC");
    (h.physical_ms, h.logical, h.node_id)
}

/// What a replica holds for a key: (HLC, value or `None` for a tombstone); `None` if nothing.
type Held = Option<(Hlc, Option<Vec<u8>>)>;

fn held(r: &Option<kv_proto::internal::Record>) -> Held {
    r.as_ref()
        .map(|r| (record_hlc(r), (!r.tombstone).then(|| r.value.clone())))
}

/// Waits until every node in `nodes` sees every other one alive.
async fn wait_all_alive(c: &Client, nodes: usize) {
    for i in 1..=nodes {
        for j in 1..=nodes {
            if i != j {
                wait_node_state(
                    c,
                    &addr(&format!("n{i}")),
                    &format!("n{j}"),
                    NodeState::Alive,
                    MEMBERSHIP_DEADLINE,
                )
                .await;
            }
        }
    }
}

/// Reads `keys` on every replica until all replicas hold the same record for every key, or
/// `bound` passes (then panics naming a key that differs). Returns the time it took and the
/// converged records.
async fn wait_converged(
    reader: &ReplicaReader,
    replicas: &[String],
    keys: &[Vec<u8>],
    bound: Duration,
) -> (Duration, BTreeMap<Vec<u8>, Held>) {
    let start = Instant::now();
    loop {
        let mut converged = BTreeMap::new();
        let mut differing = None;
        'keys: for key in keys {
            let mut first: Option<Held> = None;
            for r in replicas {
                let got = match reader.read(r, AP_ID, key).await {
                    Ok(rec) => held(&rec),
                    Err(e) => {
                        differing = Some(e);
                        break 'keys;
                    }
                };
                match &first {
                    None => first = Some(got),
                    Some(f) if *f == got => {}
                    Some(f) => {
                        differing = Some(format!(
                            "key {:?}: {f:?} on {} but {got:?} on {r}",
                            String::from_utf8_lossy(key),
                            replicas[0]
                        ));
                        break 'keys;
                    }
                }
            }
            converged.insert(key.clone(), first.expect("at least one replica"));
        }
        match differing {
            None => return (start.elapsed(), converged),
            Some(d) if start.elapsed() > bound => {
                panic!("replicas did not converge within {bound:?}: {d}")
            }
            Some(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// One acknowledged write of the partition workload.
#[derive(Debug, Clone)]
struct Acked {
    key: Vec<u8>,
    value: Vec<u8>,
    hlc: Hlc,
    side: &'static str,
    /// Position in its writer's sequence (a writer's later writes have larger numbers).
    seq: usize,
    writer: &'static str,
}

/// Guarantees 1-3: during a partition both sides accept writes (consistency one); after the heal
/// all replicas converge within `CONVERGENCE_BOUND` to the acknowledged write with the highest
/// HLC for every key; the acknowledged writes LWW overwrote are counted.
#[test]
fn partition_with_writes_on_both_sides_converges_to_the_newest_acknowledged_write() {
    let (mut sim, _disks, _guard) = sim(
        "partition_with_writes_on_both_sides_converges_to_the_newest_acknowledged_write",
        3,
        short_anti_entropy,
        Duration::from_secs(200),
    );
    sim.client("driver", async {
        let probe = client(&["n1:7000"], RPC_TIMEOUT).await?;
        wait_all_alive(&probe, 3).await;
        let reader = ReplicaReader::new(&addrs(3), RPC_TIMEOUT);

        // n3 alone on one side, n1 and n2 on the other.
        turmoil::partition("n3", "n1");
        turmoil::partition("n3", "n2");

        const ROUNDS: usize = 5;
        const HOT_KEYS: usize = 4;
        let writers: [(&'static str, &'static str, &'static str); 3] = [
            ("w1", "majority", "n1:7000"),
            ("w2", "majority", "n2:7000"),
            ("w3", "minority", "n3:7000"),
        ];
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let mut tasks = Vec::new();
        for (writer, side, seed) in writers {
            let c = client(&[seed], RPC_TIMEOUT).await?;
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                for round in 0..ROUNDS {
                    let mut keys: Vec<String> =
                        (0..HOT_KEYS).map(|h| format!("hot-{h}")).collect();
                    keys.push(format!("own-{writer}-{round}"));
                    for key in keys {
                        let value = format!("{writer}-r{round}-{key}");
                        // W=1 is met by the coordinator's own replica: it cannot fail.
                        let w = c
                            .put(AP, key.as_bytes(), value.as_bytes(), with(Consistency::One))
                            .await
                            .unwrap_or_else(|e| panic!("{writer} put {key}: {e}"));
                        acked.lock().unwrap().push(Acked {
                            key: key.into_bytes(),
                            value: value.into_bytes(),
                            hlc: write_hlc(&w),
                            side,
                            seq,
                            writer,
                        });
                        seq += 1;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
        let acked = acked.lock().unwrap().clone();
        let per_side = |s: &str| acked.iter().filter(|a| a.side == s).count();
        let (majority, minority) = (per_side("majority"), per_side("minority"));
        assert_eq!(majority, 2 * ROUNDS * (HOT_KEYS + 1));
        assert_eq!(minority, ROUNDS * (HOT_KEYS + 1));

        // The partition is real: neither side's own keys reached the other side.
        for (key, absent_on) in [("own-w1-0", "n3:7000"), ("own-w3-0", "n1:7000")] {
            let rec = reader.read(absent_on, AP_ID, key.as_bytes()).await?;
            assert!(rec.is_none(), "{key} reached {absent_on} across the partition");
        }

        turmoil::repair("n3", "n1");
        turmoil::repair("n3", "n2");
        let keys: Vec<Vec<u8>> = {
            let mut k: Vec<_> = acked.iter().map(|a| a.key.clone()).collect();
            k.sort();
            k.dedup();
            k
        };
        let (took, converged) = wait_converged(&reader, &addrs(3), &keys, CONVERGENCE_BOUND).await;

        // The converged value is the acknowledged write with the highest HLC.
        let mut overwritten = 0;
        let mut lost_sides = 0;
        // Writes whose whole side lost the key: the other side's newer write replaced them
        // though nobody on their side ever saw it (the price of accepting writes on both sides).
        let mut lost_to_other_side = 0;
        for key in &keys {
            let writes: Vec<&Acked> = acked.iter().filter(|a| &a.key == key).collect();
            let newest = writes.iter().max_by_key(|a| a.hlc).expect("written");
            assert_eq!(
                converged[key],
                Some((newest.hlc, Some(newest.value.clone()))),
                "key {:?} converged to something other than its newest acknowledged write",
                String::from_utf8_lossy(key)
            );
            overwritten += writes.len() - 1;
            lost_to_other_side += writes.iter().filter(|a| a.side != newest.side).count();
            // A side's last acknowledged write of the key, lost unless it is the newest.
            for side in ["majority", "minority"] {
                let last = writes
                    .iter()
                    .filter(|a| a.side == side)
                    .max_by_key(|a| (a.hlc, a.writer, a.seq));
                if last.is_some_and(|l| l.hlc != newest.hlc) {
                    lost_sides += 1;
                }
            }
        }
        // Each hot key was written by both sides: exactly one side's final write of it lost.
        assert_eq!(lost_sides, HOT_KEYS);
        println!(
            "partition: {} writes acknowledged ({majority} on the majority side, {minority} on the minority side), {} keys; converged {took:?} after the heal (bound {CONVERGENCE_BOUND:?}); {overwritten} acknowledged writes overwritten by LWW; {lost_to_other_side} of them lost to a write from the other side of the partition, {lost_sides} of those being a side's last write of a key",
            acked.len(),
            keys.len()
        );
        Ok(())
    });
    run(&mut sim);
}

/// With one of three replicas down, `quorum` writes and reads succeed while `all` fails with
/// `Unavailable` saying how many replicas answered and how many were needed.
#[test]
fn with_a_node_down_quorum_succeeds_and_all_is_unavailable() {
    let (mut sim, _disks, _guard) = sim(
        "with_a_node_down_quorum_succeeds_and_all_is_unavailable",
        3,
        defaults,
        Duration::from_secs(120),
    );
    sim.client("setup", async {
        let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
        wait_all_alive(&c, 3).await;
        c.put(AP, b"before", b"v0", with(Consistency::All)).await?;
        Ok(())
    });
    run(&mut sim);
    sim.crash("n3");
    sim.client("checks", async {
        let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
        let expect_unavailable = |err: kv_client::Error, op: &str| {
            let msg = err.to_string();
            assert!(
                matches!(err, kv_client::Error::Unavailable(_)),
                "{op}: expected Unavailable, got {msg}"
            );
            assert!(
                msg.contains(&format!("AP {op}"))
                    && msg.contains("2 of the 3 required replicas answered"),
                "{op}: the error must say 2 of 3 answered: {msg}"
            );
        };

        // Before n1's failure detector notices: the write to n3 times out (1 s), 2 acks of 3.
        let err = c
            .put(AP, b"k-all-early", b"v", with(Consistency::All))
            .await
            .unwrap_err();
        expect_unavailable(err, "write");

        wait_node_state(&c, "n1:7000", "n3", NodeState::Down, MEMBERSHIP_DEADLINE).await;
        for i in 0..10 {
            let key = format!("k{i}");
            let value = format!("v{i}");
            c.put(
                AP,
                key.as_bytes(),
                value.as_bytes(),
                with(Consistency::Quorum),
            )
            .await?;
            let got = c.get(AP, key.as_bytes(), with(Consistency::Quorum)).await?;
            assert_eq!(got.value, Some(value.into_bytes()));
            // The default level is quorum too.
            let got = c.get(AP, key.as_bytes(), Options::default()).await?;
            assert!(got.value.is_some());
        }
        let got = c.get(AP, b"before", with(Consistency::Quorum)).await?;
        assert_eq!(got.value.as_deref(), Some(&b"v0"[..]));
        let err = c
            .put(AP, b"k-all", b"v", with(Consistency::All))
            .await
            .unwrap_err();
        expect_unavailable(err, "write");
        let err = c
            .get(AP, b"before", with(Consistency::All))
            .await
            .unwrap_err();
        expect_unavailable(err, "read");
        let err = c
            .delete(AP, b"before", with(Consistency::All))
            .await
            .unwrap_err();
        expect_unavailable(err, "write");

        // With as many nodes as replicas there is no fallback node: the coordinator keeps a hint
        // for every write n3 missed (the ten quorum writes, and the two `all` writes and the
        // `all` delete, which failed but applied on n1 and n2), and nobody else holds any.
        eventually(Duration::from_secs(10), || async {
            let hints = hints_held(&c, "n1:7000").await.map_err(|e| e.to_string())?;
            if hints["n3"] == 13 {
                Ok(())
            } else {
                Err(format!("n1 holds {hints:?}, expected 13 hints for n3"))
            }
        })
        .await;
        let hints = hints_held(&c, "n2:7000").await?;
        assert!(hints.values().all(|&h| h == 0), "n2 holds {hints:?}");
        Ok(())
    });
    run(&mut sim);
}

/// The ring's preference lists, by partition, as node names.
async fn preference_lists(c: &Client) -> (u32, Vec<Vec<String>>) {
    let ring = c.refresh_ring().await.expect("ring");
    let name: BTreeMap<u64, String> = ring
        .members
        .iter()
        .map(|m| (m.id, m.name.clone()))
        .collect();
    let lists = ring
        .partitions
        .iter()
        .map(|p| p.preference.iter().map(|id| name[id].clone()).collect())
        .collect();
    (ring.partition_count, lists)
}

fn preference<'a>(lists: &'a (u32, Vec<Vec<String>>), key: &[u8]) -> &'a [String] {
    let p = kv_client::placement::partition_for_key(key, lists.0);
    &lists.1[p as usize]
}

/// Five nodes, n5 down: writes coordinated by n1 succeed at quorum, and each write whose
/// replicas include n5 leaves exactly one hint for n5 on the first fallback of its preference
/// list (n1 itself for some keys). After n5 restarts the hints drain to zero and n5's replica
/// holds every such write.
#[test]
fn hinted_handoff_delivers_the_writes_a_down_node_missed() {
    let (mut sim, _disks, _guard) = sim(
        "hinted_handoff_delivers_the_writes_a_down_node_missed",
        5,
        defaults,
        Duration::from_secs(120),
    );
    // Keys chosen from the ring: (key, hint holder) for keys replicated on n5, and keys not.
    type Plan = (Vec<(String, String)>, Vec<String>);
    let plan: Arc<Mutex<Plan>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, Hlc>>> = Arc::default();
    {
        let plan = plan.clone();
        sim.client("setup", async move {
            let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
            wait_all_alive(&c, 5).await;
            let lists = preference_lists(&c).await;
            let (mut hinted, mut plain) = (Vec::new(), Vec::new());
            let mut held_by_n1 = 0;
            for i in 0..10_000 {
                let key = format!("hh-{i}");
                let pref = preference(&lists, key.as_bytes());
                if pref[..3].contains(&"n5".to_string()) {
                    let holder = pref[3].clone();
                    if holder == "n1" && held_by_n1 < 8 {
                        held_by_n1 += 1;
                        hinted.push((key, holder));
                    } else if holder != "n1" && hinted.len() - held_by_n1 < 16 {
                        hinted.push((key, holder));
                    }
                } else if plain.len() < 8 {
                    plain.push(key);
                }
                if held_by_n1 == 8 && hinted.len() == 24 && plain.len() == 8 {
                    break;
                }
            }
            assert_eq!(hinted.len(), 24, "the ring gives too few keys on n5");
            *plan.lock().unwrap() = (hinted, plain);
            Ok(())
        });
    }
    run(&mut sim);
    sim.crash("n5");
    {
        let (plan, acked) = (plan.clone(), acked.clone());
        sim.client("writes", async move {
            let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
            wait_node_state(&c, "n1:7000", "n5", NodeState::Down, MEMBERSHIP_DEADLINE).await;
            let (hinted, plain) = plan.lock().unwrap().clone();
            let keys = hinted.iter().map(|(k, _)| k).chain(plain.iter());
            for key in keys {
                let w = c
                    .put(
                        AP,
                        key.as_bytes(),
                        format!("value of {key}").as_bytes(),
                        with(Consistency::Quorum),
                    )
                    .await?;
                acked.lock().unwrap().insert(key.clone(), write_hlc(&w));
            }
            // Each hinted key left one hint for n5 on its first fallback, none for anyone else.
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            for (_, holder) in &hinted {
                *expected.entry(holder.clone()).or_default() += 1;
            }
            assert!(expected["n1"] > 0, "the coordinator holds hints too");
            for holder in ["n1", "n2", "n3", "n4"] {
                let want = expected.get(holder).copied().unwrap_or(0);
                // A quorum write returns after 2 acks; the hint may still be on its way.
                eventually(Duration::from_secs(10), || async {
                    let hints = hints_held(&c, &addr(holder))
                        .await
                        .map_err(|e| e.to_string())?;
                    let others: u64 = hints
                        .iter()
                        .filter(|(n, _)| *n != "n5")
                        .map(|(_, h)| h)
                        .sum();
                    assert_eq!(others, 0, "{holder} holds hints for live nodes: {hints:?}");
                    if hints["n5"] == want {
                        Ok(())
                    } else {
                        Err(format!(
                            "{holder} holds {} hints for n5, expected {want}",
                            hints["n5"]
                        ))
                    }
                })
                .await;
            }
            println!("hinted handoff: hints for n5 per holder {expected:?}");
            Ok(())
        });
    }
    run(&mut sim);
    sim.bounce("n5");
    sim.client("drain", async move {
        let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
        let start = Instant::now();
        // n5 is seen alive at its first heartbeat; then one replay round delivers.
        for holder in ["n1", "n2", "n3", "n4"] {
            eventually(Duration::from_secs(30), || async {
                let hints = hints_held(&c, &addr(holder))
                    .await
                    .map_err(|e| e.to_string())?;
                if hints["n5"] == 0 {
                    Ok(())
                } else {
                    Err(format!("{holder} still holds {} hints for n5", hints["n5"]))
                }
            })
            .await;
        }
        println!(
            "hinted handoff: hints drained {:?} after n5 restarted",
            start.elapsed()
        );
        let reader = ReplicaReader::new(&addrs(5), RPC_TIMEOUT);
        let (hinted, _) = plan.lock().unwrap().clone();
        let acked = acked.lock().unwrap().clone();
        for (key, _) in &hinted {
            let rec = reader.read("n5:7000", AP_ID, key.as_bytes()).await?;
            assert_eq!(
                held(&rec),
                Some((acked[key], Some(format!("value of {key}").into_bytes()))),
                "n5's replica of {key}"
            );
        }
        Ok(())
    });
    run(&mut sim);
}

/// n3 misses quorum writes while partitioned; n1 keeps hints for it, but hint replay is off in
/// this test (`no_hint_replay`). After the heal and before any anti-entropy round, reads repair
/// it: an `all` read for every key, and a
/// `quorum` read for the keys whose first two replicas include n3.
#[test]
fn reads_repair_a_stale_replica() {
    let (mut sim, _disks, _guard) = sim(
        "reads_repair_a_stale_replica",
        3,
        no_hint_replay,
        Duration::from_secs(120),
    );
    sim.client("driver", async {
        let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
        wait_all_alive(&c, 3).await;
        let lists = preference_lists(&c).await;
        let reader = ReplicaReader::new(&addrs(3), RPC_TIMEOUT);
        turmoil::partition("n3", "n1");
        turmoil::partition("n3", "n2");
        let mut acked = BTreeMap::new();
        for i in 0..12 {
            let key = format!("rr-{i}");
            let w = c
                .put(
                    AP,
                    key.as_bytes(),
                    format!("v{i}").as_bytes(),
                    with(Consistency::Quorum),
                )
                .await?;
            acked.insert(key, (i, write_hlc(&w)));
        }
        // Both directions of the link were dead long enough to be noticed; after the repair,
        // each side sees the other alive again, so n1's own calls to n3 go through (a
        // coordinator whose read to n3 fails asks n2 instead, and n3 is not repaired).
        wait_node_state(&c, "n1:7000", "n3", NodeState::Down, MEMBERSHIP_DEADLINE).await;
        wait_node_state(&c, "n3:7000", "n1", NodeState::Down, MEMBERSHIP_DEADLINE).await;
        turmoil::repair("n3", "n1");
        turmoil::repair("n3", "n2");
        wait_node_state(&c, "n1:7000", "n3", NodeState::Alive, MEMBERSHIP_DEADLINE).await;
        wait_node_state(&c, "n3:7000", "n1", NodeState::Alive, MEMBERSHIP_DEADLINE).await;
        let (mut by_quorum, mut by_all) = (0, 0);
        for (key, (i, hlc)) in &acked {
            // Stale: the write to n3 timed out long ago and its hint waits on n1.
            let before = reader.read("n3:7000", AP_ID, key.as_bytes()).await?;
            assert_eq!(held(&before), None, "n3 already holds {key}");
            // The coordinator (n1, a replica of every key with 3 nodes) reads its own copy
            // first, then the next replica in preference order: a quorum read asks n3 only
            // when n3 comes first among the others.
            let pref = preference(&lists, key.as_bytes());
            let first_other = pref.iter().find(|n| n.as_str() != "n1");
            let level = if first_other.map(String::as_str) == Some("n3") {
                by_quorum += 1;
                Consistency::Quorum
            } else {
                by_all += 1;
                Consistency::All
            };
            let got = c.get(AP, key.as_bytes(), with(level)).await?;
            assert_eq!(got.value, Some(format!("v{i}").into_bytes()));
            // Read repair finishes before the read returns.
            let after = reader.read("n3:7000", AP_ID, key.as_bytes()).await?;
            assert_eq!(
                held(&after),
                Some((*hlc, Some(format!("v{i}").into_bytes()))),
                "{key} not repaired by a {level:?} read"
            );
        }
        assert!(
            by_quorum > 0 && by_all > 0,
            "quorum {by_quorum}, all {by_all}"
        );
        // The coordinator counts what it repaired; `kv status` shows it.
        let status = c.status(Some("n1:7000")).await?;
        assert!(
            status.read_repairs >= acked.len() as u64,
            "n1 reports {} read repairs",
            status.read_repairs
        );
        // All of this happened before the first periodic anti-entropy round after the start.
        let elapsed = turmoil::sim_elapsed().expect("inside the simulation");
        assert!(
            elapsed < DEFAULT_ANTI_ENTROPY,
            "took {elapsed:?}: anti-entropy may have repaired"
        );
        println!("read repair: {by_quorum} keys repaired by quorum reads, {by_all} by all reads");
        Ok(())
    });
    run(&mut sim);
}

/// A key deleted on the majority side while n3 (partitioned) still holds its old value stays
/// deleted: after the heal every replica converges to the tombstone, reads through every node
/// find nothing, and it stays so across further anti-entropy rounds.
#[test]
fn a_delete_during_a_partition_never_comes_back() {
    let (mut sim, _disks, _guard) = sim(
        "a_delete_during_a_partition_never_comes_back",
        3,
        short_anti_entropy,
        Duration::from_secs(200),
    );
    sim.client("driver", async {
        let c1 = client(&["n1:7000"], RPC_TIMEOUT).await?;
        let c3 = client(&["n3:7000"], RPC_TIMEOUT).await?;
        wait_all_alive(&c1, 3).await;
        let reader = ReplicaReader::new(&addrs(3), RPC_TIMEOUT);
        let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("del-{i}").into_bytes()).collect();
        for k in &keys {
            c1.put(AP, k, b"old", with(Consistency::All)).await?;
        }
        turmoil::partition("n3", "n1");
        turmoil::partition("n3", "n2");
        let mut tombstones = BTreeMap::new();
        for k in &keys {
            let d = c1.delete(AP, k, with(Consistency::Quorum)).await?;
            tombstones.insert(k.clone(), write_hlc(&d));
        }
        // The minority side still serves the old value: the price of availability.
        for k in &keys {
            let got = c3.get(AP, k, with(Consistency::One)).await?;
            assert_eq!(got.value.as_deref(), Some(&b"old"[..]));
        }
        turmoil::repair("n3", "n1");
        turmoil::repair("n3", "n2");
        let (took, converged) = wait_converged(&reader, &addrs(3), &keys, CONVERGENCE_BOUND).await;
        for k in &keys {
            assert_eq!(converged[k], Some((tombstones[k], None)), "{k:?}");
        }
        println!("delete: replicas converged to the tombstones {took:?} after the heal");
        // It stays deleted through more anti-entropy rounds, and no read brings it back.
        let until = Instant::now() + Duration::from_millis(2 * SIM_ANTI_ENTROPY_MS);
        while Instant::now() < until {
            for seed in ["n1:7000", "n2:7000", "n3:7000"] {
                let c = client(&[seed], RPC_TIMEOUT).await?;
                for k in &keys {
                    let got = c.get(AP, k, with(Consistency::One)).await?;
                    assert_eq!(got.value, None, "{k:?} came back via {seed}");
                }
            }
            for r in addrs(3) {
                for k in &keys {
                    let rec = reader.read(&r, AP_ID, k).await?;
                    assert_eq!(held(&rec), Some((tombstones[k], None)), "{k:?} on {r}");
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(())
    });
    run(&mut sim);
}

/// n3 loses its data (three nodes, so no hints exist for it) and anti-entropy alone brings it
/// back to its peers' records within `CONVERGENCE_BOUND`. n3 comes back partitioned, so the test
/// first sees it empty, and nothing reads through the KV API, so read repair plays no part.
///
/// n3's whole disk is wiped, Raft logs included: openraft's `loosen-follower-log-revert`
/// lets its groups' leaders catch it up again instead of panicking.
#[test]
fn anti_entropy_refills_a_wiped_replica() {
    let (mut sim, disks, _guard) = sim(
        "anti_entropy_refills_a_wiped_replica",
        3,
        short_anti_entropy,
        Duration::from_secs(200),
    );
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("ae-{i}").into_bytes()).collect();
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Hlc>>> = Arc::default();
    {
        let (keys, acked) = (keys.clone(), acked.clone());
        sim.client("setup", async move {
            let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
            wait_all_alive(&c, 3).await;
            for k in &keys {
                let w = c.put(AP, k, b"kept", with(Consistency::All)).await?;
                acked.lock().unwrap().insert(k.clone(), write_hlc(&w));
            }
            Ok(())
        });
    }
    run(&mut sim);
    sim.crash("n3");
    disks.wipe("n3");
    sim.partition("n3", "n1");
    sim.partition("n3", "n2");
    sim.bounce("n3");
    sim.client("check", async move {
        let reader = ReplicaReader::new(&addrs(3), RPC_TIMEOUT);
        for k in &keys {
            let rec = reader.read("n3:7000", AP_ID, k).await?;
            assert_eq!(held(&rec), None, "n3 was not wiped");
        }
        turmoil::repair("n3", "n1");
        turmoil::repair("n3", "n2");
        let (took, converged) = wait_converged(&reader, &addrs(3), &keys, CONVERGENCE_BOUND).await;
        let acked = acked.lock().unwrap().clone();
        for k in &keys {
            assert_eq!(
                converged[k],
                Some((acked[k], Some(b"kept".to_vec()))),
                "{k:?}"
            );
        }
        println!("anti-entropy: the wiped replica converged {took:?} after the heal");
        Ok(())
    });
    run(&mut sim);
}

/// Sends one replica write of `key` stamped `physical_ms` straight to `addr`'s internal API, as
/// a peer (or anyone who reaches the peer port) could; returns the status on refusal.
async fn raw_replica_write(
    addr: &str,
    key: &[u8],
    physical_ms: u64,
    hint_for: u64,
) -> Result<(), tonic::Status> {
    let channel = TurmoilDialer
        .channel(addr)
        .expect("valid simulated address");
    let mut client = kv_proto::internal::internal_client::InternalClient::new(channel);
    let mut req = tonic::Request::new(kv_proto::internal::ApWriteRequest {
        keyspace: AP_ID.to_string(),
        record: Some(kv_proto::internal::Record {
            key: key.to_vec(),
            value: b"from the future".to_vec(),
            tombstone: false,
            hlc: Some(kv_proto::v1::Hlc {
                physical_ms,
                logical: 0,
                node_id: 2,
            }),
        }),
        hint_for,
        from: 2,
    });
    req.set_timeout(RPC_TIMEOUT);
    client.ap_write(req).await.map(|_| ())
}

/// Issue 9, item 7: one replica write stamped ten years ahead moved every clock of the cluster.
/// Now a timestamp more than the maximum clock offset (500 ms) ahead is refused with
/// `FAILED_PRECONDITION` naming the node, the offset and the limit — `u64::MAX` too, without a
/// panic — nothing is stored, the refusal is counted, and later writes carry the node's own
/// time. A hint for a node that is not a member is refused with `INVALID_ARGUMENT`.
#[test]
fn replica_writes_from_far_in_the_future_are_refused_and_move_no_clock() {
    let (mut sim, _disks, _guard) = sim(
        "replica_writes_from_far_in_the_future_are_refused_and_move_no_clock",
        3,
        defaults,
        Duration::from_secs(60),
    );
    sim.client("driver", async {
        let c = client(&["n1:7000"], RPC_TIMEOUT).await?;
        wait_all_alive(&c, 3).await;
        let before = write_hlc(&c.put(AP, b"before", b"v", with(Consistency::All)).await?);
        const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;
        for (key, physical_ms) in [
            (&b"ten-years"[..], before.0 + TEN_YEARS_MS),
            (&b"end-of-time"[..], u64::MAX),
        ] {
            let status = raw_replica_write("n1:7000", key, physical_ms, 0)
                .await
                .expect_err("a timestamp from the far future was accepted");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            let msg = status.message();
            assert!(
                msg.contains("node 1 refused a timestamp from node 2")
                    && msg.contains("maximum clock offset of 500 ms"),
                "{msg}"
            );
        }
        let status = raw_replica_write("n1:7000", b"hint", before.0, 99)
            .await
            .expect_err("a hint for node 99 was accepted");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("not a member"), "{status:?}");

        let reader = ReplicaReader::new(&addrs(3), RPC_TIMEOUT);
        for key in [&b"ten-years"[..], b"end-of-time", b"hint"] {
            assert_eq!(reader.read("n1:7000", AP_ID, key).await?, None);
        }
        let status = c.status(Some("n1:7000")).await?;
        assert!(status.clock_skew_events >= 2, "{status:?}");
        // n1 and its peers still stamp writes with their own time.
        for seed in ["n1:7000", "n2:7000"] {
            let via = client(&[seed], RPC_TIMEOUT).await?;
            let after = write_hlc(&via.put(AP, b"after", b"v", with(Consistency::All)).await?);
            assert!(
                after.0 < before.0 + 60 * 60 * 1000,
                "a write through {seed} carries {after:?}, {before:?} before the refusals"
            );
        }
        Ok(())
    });
    run(&mut sim);
}
