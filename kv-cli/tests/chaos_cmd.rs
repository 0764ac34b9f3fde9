//! `kv chaos` on real processes: a partition makes the cut-off node refuse CP writes (nothing
//! applied) while it still takes AP writes, faults compose across commands, and `kv chaos heal`
//! gives CP back to that node; pause / resume and kill / restart act on the node's process (a
//! restarted node gets its network faults back); network faults on nodes started without
//! --chaos fail with an error naming the node and the flag.

mod common;

use common::*;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// Generous bound for anything that must eventually happen (a loaded machine, elections).
const EVENTUALLY: Duration = Duration::from_secs(60);
/// How often a command is retried while waiting.
const RETRY: Duration = Duration::from_millis(200);

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `kv ARGS` until it exits 0; fails the test after `EVENTUALLY`.
fn eventually_ok(dir: &Path, args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let out = kv(dir, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "kv {args:?} did not succeed within {EVENTUALLY:?}: {}",
            text(&out)
        );
        std::thread::sleep(RETRY);
    }
}

/// `kv ARGS -o json`, which must succeed, parsed.
fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kv(dir, &all);
    assert!(out.status.success(), "kv {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kv {args:?}: {e}: {}", text(&out)))
}

/// Each node's `drop_to` in a `kv chaos` JSON answer, as "name:peer,peer".
fn drops(v: &serde_json::Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let to: Vec<&str> = n["drop_to"]
                .as_array()
                .expect("drop_to")
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            format!("{}:{}", n["name"].as_str().unwrap(), to.join(","))
        })
        .collect()
}

/// The node's entry in a `kv chaos` JSON answer.
fn node<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// The process state letter of `pid` (`S`, `R`, `T` for stopped...), `None` once it is gone.
fn proc_state(pid: u64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// A key whose CP partition `node` does not lead: cut off, that node refuses it without
/// appending anything (a partition it leads would take the write into its log, of unknown
/// outcome until the heal).
fn key_not_led_by(dir: &Path, node: &str) -> String {
    let partitions = json(dir, &["ring"])["partition_count"].as_u64().unwrap() as u32;
    let start = Instant::now();
    loop {
        let led = leader_of(dir, node);
        let key = (0..100_000).map(|i| format!("greeting-{i}")).find(|k| {
            let p = kv_client::placement::partition_for_key(k.as_bytes(), partitions);
            !led.contains(&u64::from(p))
        });
        if let Some(key) = key {
            return key;
        }
        // `node` leads every partition (nothing balances leadership yet, see
        // FIXME(leader balance) in kv-server/src/cp/engine.rs; seen on a loaded machine, where
        // the searching loop above spun for ever): cut it off until another node leads some
        // partition, then heal (its stale leaderships end at the others' higher terms).
        assert!(
            start.elapsed() < EVENTUALLY,
            "{node} still leads every partition after {EVENTUALLY:?}"
        );
        json(dir, &["chaos", "partition", node]);
        while ["n1", "n2", "n3"]
            .iter()
            .filter(|n| **n != node)
            .all(|n| leader_of(dir, n).is_empty())
        {
            assert!(
                start.elapsed() < EVENTUALLY,
                "no other node became a leader"
            );
            std::thread::sleep(RETRY);
        }
        json(dir, &["chaos", "heal"]);
    }
}

/// The CP partitions `node` leads, from `kv status` (exit 5 while a node is unhealthy, with
/// the report on stdout all the same).
fn leader_of(dir: &Path, node: &str) -> Vec<u64> {
    let out = kv(dir, &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kv status: {e}: {}", text(&out)));
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .map(|n| {
            n["leader_of"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_u64().unwrap()).collect())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| panic!("no {node} in {status}"))
}

/// Asserts that `out` is the refusal of a CP write by a node without a majority.
fn assert_refused(out: &Output) {
    // Exit 5, not 6: the node knows nothing was appended (no leader, or the leader unreachable:
    // `CpEngine::not_leader_or_wait` and `pause_for_election`) and says so (`kv-not-applied`).
    // The write is also checked not to be applied after the heal.
    assert_eq!(out.status.code(), Some(5), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unavailable"), "{stderr}");
}

fn pid_of(dir: &Path, name: &str) -> u64 {
    cluster(dir)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["pid"].as_u64())
        .unwrap_or_else(|| panic!("{name} has no pid"))
}

#[test]
fn a_partition_refuses_cp_on_the_cut_off_node_keeps_ap_there_and_heal_gives_cp_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0", "--chaos"]));
    eventually_ok(dir, &["status"]);
    let addrs = addrs(dir);
    let n3 = addrs[2].as_str();
    let key = key_not_led_by(dir, "n3");
    let key = key.as_str();
    ok(&kv(dir, &["put", key, "before"]));

    let cut = json(dir, &["chaos", "partition", "n3"]);
    assert_eq!(drops(&cut), ["n1:n3", "n2:n3", "n3:n1,n2"], "{cut}");

    // The cut-off node refuses CP writes.
    assert_refused(&kv(
        dir,
        &[
            "put",
            key,
            "minority",
            "--endpoints",
            n3,
            "--timeout-ms",
            "2000",
        ],
    ));
    // It still takes AP writes (one replica: its own).
    let ap = kv(
        dir,
        &[
            "-k",
            "ap",
            "put",
            "cart",
            "n3-side",
            "--consistency",
            "one",
            "--endpoints",
            n3,
        ],
    );
    assert_eq!(ap.status.code(), Some(0), "{}", text(&ap));
    // The majority side serves CP (once it has leaders for the groups n3 led).
    eventually_ok(dir, &["put", "other", "majority", "--endpoints", &addrs[0]]);

    // Faults compose across commands: a slow link keeps the partition in place.
    let slow = json(dir, &["chaos", "slow", "n1", "n2", "--delay-ms", "50"]);
    assert_eq!(drops(&slow), ["n1:n3", "n2:n3", "n3:n1,n2"], "{slow}");
    assert_eq!(node(&slow, "n1")["delay_ms"]["n2"], 50, "{slow}");
    let status = json(dir, &["chaos", "status"]);
    assert_eq!(drops(&status), ["n1:n3", "n2:n3", "n3:n1,n2"], "{status}");
    // Still refused: the slow link did not undo the partition on n3 (a read changes nothing:
    // its refusal is exit 5).
    let refused = kv(
        dir,
        &["get", key, "--endpoints", n3, "--timeout-ms", "2000"],
    );
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));

    let healed = json(dir, &["chaos", "heal"]);
    assert_eq!(drops(&healed), ["n1:", "n2:", "n3:"], "{healed}");
    assert_eq!(node(&healed, "n1")["delay_ms"], serde_json::json!({}));
    // The refused write was not applied; CP through n3 works again: a write, then a
    // linearizable read of it.
    let got = eventually_ok(dir, &["get", key, "--endpoints", n3]);
    assert_eq!(got.trim(), "before");
    ok(&kv(dir, &["put", key, "after", "--endpoints", n3]));
    let got = ok(&kv(dir, &["get", key, "--endpoints", n3]));
    assert_eq!(got.trim(), "after");
    // The AP write taken by n3 alone reaches the others after the heal (hinted handoff).
    let start = Instant::now();
    while kv(dir, &["-k", "ap", "get", "cart", "--endpoints", &addrs[0]]).stdout != b"n3-side\n" {
        assert!(
            start.elapsed() < EVENTUALLY,
            "n3's AP write never reached n1"
        );
        std::thread::sleep(RETRY);
    }

    // Process faults on the same cluster.
    // pause / resume: SIGSTOP freezes the process; heal resumes it.
    let n2_pid = pid_of(dir, "n2");
    let paused = json(dir, &["chaos", "pause", "n2"]);
    assert_eq!(node(&paused, "n2")["process"], "paused", "{paused}");
    assert_eq!(proc_state(n2_pid).as_deref(), Some("T"));
    let frozen = kv(
        dir,
        &["get", key, "--endpoints", &addrs[1], "--timeout-ms", "1000"],
    );
    assert_ne!(frozen.status.code(), Some(0), "{}", text(&frozen));
    // A paused node cannot take a network fault: refused before anything changes.
    let refused = kv(dir, &["chaos", "partition", "n2"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("paused"));
    assert_eq!(
        drops(&json(dir, &["chaos", "status"])),
        ["n1:", "n2:", "n3:"]
    );
    let healed = json(dir, &["chaos", "heal"]);
    assert_eq!(node(&healed, "n2")["process"], "running", "{healed}");
    assert_ne!(proc_state(n2_pid).as_deref(), Some("T"));
    eventually_ok(dir, &["get", key, "--endpoints", &addrs[1]]);
    let resumed = json(dir, &["chaos", "resume", "n2"]);
    assert!(
        resumed["message"].as_str().unwrap().contains("not paused"),
        "{resumed}"
    );

    // kill / restart: the restarted node gets back the faults it held.
    json(dir, &["chaos", "partition", "n3"]);
    let n3_pid = pid_of(dir, "n3");
    let killed = json(dir, &["chaos", "kill", "n3"]);
    assert_eq!(node(&killed, "n3")["process"], "down", "{killed}");
    // Gone, or a zombie nobody has reaped yet (its parent, `kv local up`, has exited).
    let state = proc_state(n3_pid);
    assert!(
        matches!(state.as_deref(), None | Some("Z")),
        "n3 after kill: {state:?}"
    );
    let restarted = json(dir, &["chaos", "restart", "n3"]);
    assert_eq!(node(&restarted, "n3")["process"], "running", "{restarted}");
    assert_ne!(pid_of(dir, "n3"), n3_pid);
    assert_eq!(
        drops(&restarted),
        ["n1:n3", "n2:n3", "n3:n1,n2"],
        "{restarted}"
    );
    // Its partition is back in place: a read through it is refused.
    let refused = kv(
        dir,
        &["get", key, "--endpoints", n3, "--timeout-ms", "2000"],
    );
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    json(dir, &["chaos", "heal"]);
    eventually_ok(dir, &["put", key, "last", "--endpoints", n3]);
    assert_eq!(ok(&kv(dir, &["get", key])).trim(), "last");
}

#[test]
fn network_faults_on_nodes_without_chaos_name_the_node_and_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(
        dir,
        &["local", "up", "--base-port", "0", "--nodes", "1"],
    ));
    let addr = addrs(dir)[0].clone();

    let refused = kv(dir, &["chaos", "skew", "n1", "--ms", "-500"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("n1") && stderr.contains("--chaos"),
        "{stderr}"
    );

    // The same through --endpoints (the nodes found from the ring), in JSON.
    let refused = kv_command(
        dir,
        &[
            "chaos",
            "skew",
            "n1",
            "--ms",
            "500",
            "--endpoints",
            &addr,
            "-o",
            "json",
        ],
    )
    .env("XDG_STATE_HOME", dir.join("state"))
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let err: serde_json::Value = serde_json::from_slice(&refused.stderr).unwrap();
    assert_eq!(err["error"]["code"], "bad_input");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("n1") && message.contains("--chaos"),
        "{message}"
    );

    // Process faults need the local cluster; unknown nodes and empty sides are bad input.
    for args in [
        &["chaos", "kill", "n1", "--endpoints", addr.as_str()][..],
        &["chaos", "pause", "n9"],
        &["chaos", "slow", "n1", "n9", "--delay-ms", "5"],
        &["chaos", "partition", "n1"],
    ] {
        let out = kv(dir, args);
        assert_eq!(out.status.code(), Some(2), "kv {args:?}: {}", text(&out));
    }
    // Nothing was recorded or changed: the node serves as before.
    ok(&kv(dir, &["chaos", "heal"]));
    ok(&kv(
        dir,
        &["-k", "ap", "put", "k", "v", "--consistency", "one"],
    ));
}
