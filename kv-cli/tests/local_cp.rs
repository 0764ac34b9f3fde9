//! CP failover on real processes: `kv local up` starts three `kv` nodes; a client (the
//! `kv_client` library) writes unique values in a loop to keyspace `cp`, all in one partition;
//! the partition's leader is SIGKILLed mid-loop. The loop goes on (writes failing with
//! `Unavailable` / `DeadlineExceeded` are of unknown outcome, not acknowledged), the failover
//! time (kill → first acknowledged write, wall clock) is printed, every acknowledged write is
//! read back through both surviving nodes, and `kv cas` works from the CLI (exit code 4 on a
//! mismatch).

mod common;

use common::*;

use kv_client::placement::partition_for_key;
use kv_client::{Client, ClientConfig, Error};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of each workload request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Acknowledged writes before the kill, and after it before the loop stops.
const ACKS_AROUND_KILL: usize = 30;
/// Generous bound for anything that must eventually happen (wall clock, loaded machine).
const EVENTUALLY: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Retries `f` until it succeeds, failing after `EVENTUALLY`.
async fn eventually<T, E: std::fmt::Debug, Fut: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > EVENTUALLY => {
                panic!("{what}: not within {EVENTUALLY:?}: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One write of the loop: key, value, and its outcome with the wall-clock time it ended.
struct Write {
    key: String,
    value: String,
    started: Instant,
    ended: Instant,
    result: Result<u64, Error>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_loop_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    let up = kv(dir, &["local", "up", "--base-port", "0"]);
    assert!(up.status.success(), "{}", text(&up));
    let nodes: Vec<(String, u64)> = cluster(dir)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["addr"].as_str().unwrap().to_string(),
                n["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 3);

    let mut cfg = ClientConfig::new(nodes.iter().map(|(a, _)| a.clone()));
    cfg.timeout = REQUEST_TIMEOUT;
    let c = eventually("connect", || Client::connect(cfg.clone())).await;
    let ring = c.refresh_ring().await.unwrap();
    let p = partition_for_key(b"failover", ring.partition_count);
    let keys_of_p = move |from: usize| {
        (from..)
            .map(|i| format!("failover-{i}"))
            .find(|k| partition_for_key(k.as_bytes(), ring.partition_count) == p)
            .unwrap()
    };

    // Write in a loop until told to stop.
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, writes, stop) = (c.clone(), writes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = keys_of_p(next);
                next = key.rsplit('-').next().unwrap().parse::<usize>().unwrap() + 1;
                let value = format!("value-{i}");
                let started = Instant::now();
                let result = c
                    .put("cp", key.as_bytes(), value.as_bytes(), Default::default())
                    .await
                    .map(|w| w.version.map(|v| v.revision).unwrap_or(0));
                writes.lock().unwrap().push(Write {
                    key,
                    value,
                    started,
                    ended: Instant::now(),
                    result,
                });
            }
        })
    };
    let acked = |since: Option<Instant>| {
        writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.result.is_ok() && since.is_none_or(|s| w.started > s))
            .count()
    };
    let wait_acks = |n: usize, since: Option<Instant>| async move {
        let start = Instant::now();
        while acked(since) < n {
            assert!(
                start.elapsed() < EVENTUALLY,
                "only {} acknowledged writes",
                acked(since)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_acks(ACKS_AROUND_KILL, None).await;

    // The leader of the partition, as the nodes report it.
    let leader = eventually("find the leader", || async {
        let mut leaders = Vec::new();
        for (addr, pid) in &nodes {
            if let Ok(s) = c.status(Some(addr)).await {
                if s.leader_of.contains(&p) {
                    leaders.push((addr.clone(), *pid));
                }
            }
        }
        if leaders.len() == 1 {
            Ok(leaders.remove(0))
        } else {
            Err(format!("nodes claiming partition {p}: {leaders:?}"))
        }
    })
    .await;
    let status = Command::new("kill")
        .args(["-9", &leader.1.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    wait_acks(ACKS_AROUND_KILL, Some(killed_at)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let writes = std::mem::take(&mut *writes.lock().unwrap());
    // A write sent before the kill may be answered just after it: count only writes sent after.
    let failover = writes
        .iter()
        .filter(|w| w.result.is_ok() && w.started > killed_at)
        .map(|w| w.ended - killed_at)
        .min()
        .unwrap();
    let unknown: Vec<String> = writes
        .iter()
        .filter_map(|w| w.result.as_ref().err())
        .map(|e| {
            assert!(
                // A node's "not applied" (no leader reachable within this test's 2 s
                // deadline, while the failover takes 1.7–3 s here) is a definite failure that
                // loses nothing; every other failure must be an unknown outcome.
                matches!(
                    e,
                    Error::Unavailable(_)
                        | Error::NotApplied(_)
                        | Error::DeadlineExceeded { .. }
                        | Error::Transport { .. }
                ),
                "a write failed otherwise than with an unknown or a not-applied outcome: {e}"
            );
            e.to_string()
        })
        .collect();
    let acked: Vec<&Write> = writes.iter().filter(|w| w.result.is_ok()).collect();
    println!(
        "local_cp: killed leader {} of partition {p}; first acknowledged write {} ms later (wall clock); {} acknowledged, {} unknown ({:?})",
        leader.0,
        failover.as_millis(),
        acked.len(),
        unknown.len(),
        unknown.first()
    );

    // Every acknowledged write is there, read linearizably through each surviving node.
    for (addr, _) in nodes.iter().filter(|(a, _)| *a != leader.0) {
        let mut cfg = ClientConfig::new([addr.clone()]);
        cfg.seeds_only = true;
        cfg.timeout = Duration::from_secs(5);
        let reader = eventually("connect", || Client::connect(cfg.clone())).await;
        for w in &acked {
            let got = eventually("read back", || {
                reader.get("cp", w.key.as_bytes(), Default::default())
            })
            .await;
            assert_eq!(
                got.value.as_deref(),
                Some(w.value.as_bytes()),
                "acknowledged write {} = {} lost (read through {addr})",
                w.key,
                w.value
            );
            assert_eq!(
                got.version.map(|v| v.revision),
                w.result.as_ref().ok().copied()
            );
        }
    }

    // Compare-and-swap from the CLI, with the leader still dead.
    let live = nodes
        .iter()
        .find(|(a, _)| *a != leader.0)
        .unwrap()
        .0
        .clone();
    let cas = |args: &[&str]| {
        let mut all = vec!["cas"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--keyspace",
            "cp",
            "--endpoints",
            &live,
            "--timeout-ms",
            "10000",
        ]);
        kv(dir, &all)
    };
    let out = cas(&["cas-key", "one", "--expect-absent"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("OK"),
        "{}",
        text(&out)
    );
    let out = cas(&["cas-key", "two", "--expect-value", "one"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cas(&["cas-key", "three", "--expect-value", "one"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("MISMATCH") && stdout.contains("\"two\""),
        "{}",
        text(&out)
    );
    let out = kv(dir, &["get", "cas-key", "--endpoints", &live]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "two",
        "{}",
        text(&out)
    );
}
