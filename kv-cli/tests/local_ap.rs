//! End-to-end test of hinted handoff on real processes: `kv local up` starts three nodes, one is
//! killed with SIGKILL, `kv put --keyspace ap` keeps succeeding at the default quorum (2 of 3),
//! `kv status -o json` shows the hints the live nodes hold for the dead one (with three nodes
//! every node replicates every key and there is no fallback node, so each write's coordinator
//! keeps its hint), `kv local up` restarts it, the hints drain to zero, and the restarted node's
//! replica holds every write it missed.

mod common;

use common::*;

use kv_client::{Client, ClientConfig};
use kv_proto::internal::internal_client::InternalClient;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Nodes of the cluster (`kv local up`'s default).
const NODES: usize = 3;
/// Keys written while the node is down.
const KEYS: usize = 40;
/// How long the hints may take to appear, and to drain once the node is back (generous: the
/// machine may be loaded; on an idle one each takes a few seconds at most).
const HINTS_DEADLINE: Duration = Duration::from_secs(60);
/// How often `kv status` is polled.
const POLL: Duration = Duration::from_millis(200);

/// Hints pending for `node`, summed over every reachable node's view in `kv status -o json`
/// (which exits 5 while a node is down, with the report on stdout all the same).
fn hints_for(dir: &Path, node: &str) -> u64 {
    let out = kv(dir, &["status", "-o", "json"]);
    assert!(
        matches!(out.status.code(), Some(0 | 5)),
        "kv status: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    report["nodes"]
        .as_array()
        .expect("one entry per node")
        .iter()
        .filter(|v| v["reachable"] == true)
        .flat_map(|v| v["view"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["name"] == node)
        .map(|n| n["hints_pending"].as_u64().expect("hints_pending"))
        .sum()
}

/// Polls `kv status` until the hints pending for `node` equal `want`; returns the time it took.
fn wait_hints(dir: &Path, node: &str, want: u64) -> Duration {
    let start = Instant::now();
    loop {
        let got = hints_for(dir, node);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < HINTS_DEADLINE,
            "hints pending for {node}: {got}, expected {want} within {HINTS_DEADLINE:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Each key's replicas (the first three of its preference list), by node name.
fn replicas(addrs: &[String], keys: &[String]) -> BTreeMap<String, Vec<String>> {
    runtime().block_on(async {
        let c = Client::connect(ClientConfig::new(addrs.iter().cloned()))
            .await
            .expect("connect");
        let ring = c.refresh_ring().await.expect("ring");
        let name: BTreeMap<u64, String> = ring
            .members
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect();
        keys.iter()
            .map(|k| {
                let p = kv_client::placement::partition_for_key(k.as_bytes(), ring.partition_count);
                let pref = &ring.partitions[p as usize].preference;
                (
                    k.clone(),
                    pref[..3].iter().map(|id| name[id].clone()).collect(),
                )
            })
            .collect()
    })
}

/// `addr`'s own replica of `key` in the `ap` keyspace (id 2), read through the internal API:
/// `(value, tombstone)`, or `None` when it holds nothing.
fn replica_value(addr: &str, key: &str) -> Option<(Vec<u8>, bool)> {
    runtime().block_on(async {
        let channel = kv_client::net::endpoint_for(addr)
            .expect("address")
            .connect()
            .await
            .expect("connect to the node");
        let mut c = InternalClient::new(channel);
        let resp = c
            .ap_read(kv_proto::internal::ApReadRequest {
                keyspace: "2".into(),
                key: key.as_bytes().to_vec(),
            })
            .await
            .expect("ApRead");
        resp.into_inner().record.map(|r| (r.value, r.tombstone))
    })
}

#[test]
fn writes_missed_by_a_killed_node_reach_it_through_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    let up = ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    assert!(up.contains("local cluster ready"), "{up}");
    let c = cluster(dir);
    let addrs = addrs(dir);
    assert_eq!(addrs.len(), NODES);
    // Replicas are read through the internal API, which is served on the peer port.
    let (dead, dead_addr) = (
        "n3",
        c["nodes"][2]["peer_addr"].as_str().unwrap().to_string(),
    );
    let keys: Vec<String> = (0..KEYS).map(|i| format!("hinted-{i}")).collect();
    let replicas = replicas(&addrs, &keys);
    let missed: Vec<&String> = keys
        .iter()
        .filter(|k| replicas[*k].iter().any(|n| n == dead))
        .collect();
    assert!(!missed.is_empty(), "no key is replicated on {dead}");
    assert_eq!(hints_for(dir, dead), 0);

    // SIGKILL: a crash, not a shutdown.
    let pid = c["nodes"][2]["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();

    // The default consistency (quorum, 2 of 3) is met by the live replicas and fallbacks.
    for (i, key) in keys.iter().enumerate() {
        ok(&kv(
            dir,
            &["put", key, &format!("value-{i}"), "--keyspace", "ap"],
        ));
    }
    // One hint per write that the dead node should have received (held by the key's first
    // fallback, or with none by the write's coordinator).
    let took = wait_hints(dir, dead, missed.len() as u64);
    println!(
        "{} of {KEYS} writes left a hint for {dead} (visible after {took:?})",
        missed.len()
    );

    // `kv local up` restarts the killed node on its old port with its old data.
    let up = ok(&kv(dir, &["local", "up"]));
    assert!(up.contains("local cluster ready"), "{up}");
    let took = wait_hints(dir, dead, 0);
    println!("hints for {dead} drained {took:?} after `kv local up` returned");

    // The restarted node's own replica holds every write it missed.
    for key in &missed {
        let i: usize = key.trim_start_matches("hinted-").parse().unwrap();
        assert_eq!(
            replica_value(&dead_addr, key),
            Some((format!("value-{i}").into_bytes(), false)),
            "{dead}'s replica of {key}"
        );
    }
    // And every key reads back at consistency all, coordinated by the restarted node.
    for (i, key) in keys.iter().enumerate() {
        let got = ok(&kv(
            dir,
            &[
                "get",
                key,
                "--keyspace",
                "ap",
                "--consistency",
                "all",
                "--endpoints",
                &dead_addr,
            ],
        ));
        assert_eq!(got.trim(), format!("value-{i}"));
    }
}
