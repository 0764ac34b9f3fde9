//! End-to-end test of the `kv` binary on real processes: `kv local up` starts three nodes, a
//! value put through one node is read back through each of the others, a killed node's keys
//! fail fast naming it while the rest are served, and `kv local up` recovers from the crash.

mod common;

use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn local_cluster_serves_through_every_node_and_survives_a_killed_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    let up = ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    assert!(up.contains("local cluster ready"), "{up}");
    let c = cluster(dir);
    let addrs = addrs(dir);
    assert_eq!(addrs.len(), 3);

    // Put through one node, read through each of the others.
    for i in 0..12 {
        ok(&kv(
            dir,
            &[
                "put",
                &format!("key{i}"),
                &format!("value{i}"),
                "--endpoints",
                &addrs[0],
            ],
        ));
    }
    for addr in &addrs[1..] {
        for i in 0..12 {
            let got = ok(&kv(dir, &["get", &format!("key{i}"), "--endpoints", addr]));
            assert_eq!(got.trim(), format!("value{i}"));
        }
    }

    // Kill node n3 (SIGKILL: a crash, not a shutdown): every partition keeps a majority, so
    // every key is still read and written through n1.
    let kill = |i: usize| {
        let pid = c["nodes"][i]["pid"].as_u64().unwrap();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    };
    kill(2);
    for i in 0..12 {
        let got = ok(&kv(
            dir,
            &["get", &format!("key{i}"), "--endpoints", &addrs[0]],
        ));
        assert_eq!(got.trim(), format!("value{i}"));
    }
    ok(&kv(
        dir,
        &["put", "key0", "value0", "--endpoints", &addrs[0]],
    ));

    // Kill n2 as well: no partition has a majority. Requests fail within their deadline
    // with an error naming the partition, never hang and never answer stale data.
    kill(1);
    for i in 0..3 {
        let start = Instant::now();
        let out = kv(
            dir,
            &[
                "get",
                &format!("key{i}"),
                "--endpoints",
                &addrs[0],
                "--timeout-ms",
                "2000",
            ],
        );
        assert!(!out.status.success(), "a read without a majority must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unavailable") && err.contains("partition"),
            "{err}"
        );
        // The deadline plus process start-up.
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "not fast: {:?}",
            start.elapsed()
        );
    }

    // `kv local up` notices the stale pids and restarts n2 and n3 with their data.
    let up = ok(&kv(dir, &["local", "up"]));
    assert!(up.contains("local cluster ready"), "{up}");
    for i in 0..12 {
        let got = ok(&kv(
            dir,
            &["get", &format!("key{i}"), "--endpoints", &addrs[2]],
        ));
        assert_eq!(got.trim(), format!("value{i}"));
    }
    let status = ok(&kv(dir, &["local", "status"]));
    assert_eq!(status.matches("running").count(), 3, "{status}");
}

#[test]
fn client_commands_without_a_cluster_say_how_to_get_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kv(tmp.path(), &["get", "k"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kv local up"), "{err}");
    let out = kv(tmp.path(), &["get", "k", "--endpoints", "localhost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("malformed address"), "{err}");
}

#[test]
fn server_with_a_malformed_peer_address_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kv(
        tmp.path(),
        &[
            "server",
            "--name",
            "n1",
            "--peers",
            "n1=127.0.0.1:1,n2=nowhere",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("peer n2") && err.contains("malformed address"),
        "{err}"
    );
}

#[test]
fn local_up_on_a_port_in_use_says_which_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let _cleanup = Cleanup(tmp.path());
    let out = kv(tmp.path(), &["local", "up", "--base-port", &port]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
    assert!(err.contains("--base-port"), "{err}");
}

#[test]
fn local_up_in_the_foreground_stops_the_cluster_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    let mut child = kv_command(dir, &["local", "up", "--foreground", "--base-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait (bounded by the command's own 60 s readiness timeout) for the prompt.
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Ctrl-C"));
    assert!(ready, "kv local up --foreground never said it was ready");
    let status = ok(&kv(dir, &["local", "status"]));
    assert_eq!(status.matches("running").count(), 3, "{status}");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("stopped 3 node(s)")),
        "{rest:?}"
    );
    let status = ok(&kv(dir, &["local", "status"]));
    assert_eq!(status.matches("stopped").count(), 3, "{status}");
}
