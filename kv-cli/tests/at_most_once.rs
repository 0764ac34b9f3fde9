//! At-most-once CP writes on real processes: eight clients increment one counter with
//! compare-and-swap while the leader of its partition is SIGKILLed, so connections reset
//! mid-request and requests are retried. Every increment a client saw acknowledged must be in
//! the final value, and nothing else may be, beyond the increments whose outcome was unknown:
//! `acked <= final <= acked + unknown`. A CAS applied twice, or an applied CAS reported as a
//! mismatch (its retry compared against its own write), breaks the upper bound.

mod common;

use common::*;

use kv_client::placement::partition_for_key;
use kv_client::{Client, ClientConfig, Error, Expected};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deadline of each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent incrementing clients.
const WORKERS: usize = 8;
/// Acknowledged increments before the kill, and after it before the workers stop.
const ACKS_AROUND_KILL: u64 = 25;
/// Generous bound for anything that must eventually happen (wall clock, loaded machine).
const EVENTUALLY: Duration = Duration::from_secs(90);
/// The counter's key.
const KEY: &[u8] = b"counter";

#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    unknown: AtomicU64,
}

async fn increment_until(c: Client, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(got) = c.get("cp", KEY, Default::default()).await else {
            continue;
        };
        let current = got.value.expect("the counter exists");
        let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
        let next = (n + 1).to_string();
        match c
            .cas(
                "cp",
                KEY,
                Expected::Value(current),
                next.as_bytes(),
                Default::default(),
            )
            .await
        {
            Ok(r) if r.succeeded => {
                tally.acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {} // Another client got there first: nothing applied.
            Err(
                Error::Unavailable(_) | Error::DeadlineExceeded { .. } | Error::Transport { .. },
            ) => {
                tally.unknown.fetch_add(1, Ordering::SeqCst);
            }
            // Certainly not applied (a dial that failed, not the leader, or a node's refusal
            // before proposing, e.g. while the killed leader's partition elects another).
            Err(Error::Connect { .. } | Error::NotLeader { .. } | Error::NotApplied(_)) => {}
            Err(e) => panic!("an increment failed otherwise than with an unknown outcome: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_increments_across_a_leader_kill_apply_at_most_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0"]));
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
    let mut cfg = ClientConfig::new(nodes.iter().map(|(a, _)| a.clone()));
    cfg.timeout = REQUEST_TIMEOUT;
    let start = Instant::now();
    let c = loop {
        match Client::connect(cfg.clone()).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() > EVENTUALLY => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    loop {
        match c.put("cp", KEY, b"0", Default::default()).await {
            Ok(_) => break,
            Err(e) if start.elapsed() > EVENTUALLY => panic!("seeding the counter: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let partition = partition_for_key(KEY, c.refresh_ring().await.unwrap().partition_count);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(increment_until(c.clone(), tally.clone(), stop.clone())))
        .collect();
    let wait_acked = |n: u64| {
        let tally = tally.clone();
        async move {
            let start = Instant::now();
            while tally.acked.load(Ordering::SeqCst) < n {
                assert!(start.elapsed() < EVENTUALLY, "increments stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acked(ACKS_AROUND_KILL).await;

    let start = Instant::now();
    let leader_pid = loop {
        let mut leaders = Vec::new();
        for (addr, pid) in &nodes {
            if let Ok(s) = c.status(Some(addr)).await {
                if s.leader_of.contains(&partition) {
                    leaders.push(*pid);
                }
            }
        }
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "no single leader: {leaders:?}"
        );
    };
    let killed = Command::new("kill")
        .args(["-9", &leader_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let before_kill = tally.acked.load(Ordering::SeqCst);
    wait_acked(before_kill + ACKS_AROUND_KILL).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let start = Instant::now();
    let value = loop {
        match c.get("cp", KEY, Default::default()).await {
            Ok(got) => break got.value.unwrap(),
            Err(e) if start.elapsed() > EVENTUALLY => panic!("final read: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let final_value: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
    let acked = tally.acked.load(Ordering::SeqCst);
    let unknown = tally.unknown.load(Ordering::SeqCst);
    println!(
        "at_most_once: {acked} acknowledged increments, {unknown} unknown, final value {final_value}"
    );
    assert!(
        final_value >= acked,
        "an acknowledged increment was lost: final {final_value} < acknowledged {acked}"
    );
    assert!(
        final_value <= acked + unknown,
        "an increment applied twice or an applied one was reported as a mismatch: final \
         {final_value} > acknowledged {acked} + unknown {unknown}"
    );
}
