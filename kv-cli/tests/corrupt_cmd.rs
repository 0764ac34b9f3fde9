//! `kv chaos corrupt` on real processes: bytes flipped in a stopped node's records are found by
//! its checksums when it starts again (its scrub) and repaired from the other replicas, in both
//! modes; every key still reads its value through that node, and `/metrics` counts the repairs.
//! A running node is refused.

mod common;

use common::*;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Generous bound for anything that must eventually happen (a loaded machine, elections).
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Keys written per keyspace.
const KEYS: usize = 12;

/// `kv_corrupt_records_total` samples of the node serving HTTP on `http_addr`, summed by
/// (mode, action).
fn corrupt_counters(http_addr: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut s) = std::net::TcpStream::connect(http_addr) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return out;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    for line in text
        .lines()
        .filter(|l| l.starts_with("kv_corrupt_records_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        *out.entry((label("mode"), label("action"))).or_default() += value;
    }
    out
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(&kv(dir, &all))).unwrap()
}

#[test]
fn flipped_records_of_a_stopped_node_are_repaired_from_its_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    for ks in ["cp", "ap"] {
        for i in 0..KEYS {
            let mut args = vec!["put", "--keyspace", ks];
            let (k, v) = (format!("{ks}-key-{i}"), format!("{ks}-value-{i}"));
            args.extend([k.as_str(), v.as_str()]);
            if ks == "ap" {
                args.extend(["--consistency", "all"]);
            }
            ok(&kv(dir, &args));
        }
    }
    // A running node is refused, and nothing is flipped.
    let refused = kv(dir, &["chaos", "corrupt", "n2", "--count", "1"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is running"));

    ok(&kv(dir, &["local", "stop", "n2"]));
    let flipped = json(
        dir,
        &["chaos", "corrupt", "n2", "--count", "8", "--seed", "3"],
    );
    let flipped = flipped["flipped"].as_array().unwrap().clone();
    assert_eq!(flipped.len(), 8, "{flipped:?}");
    let named = json(
        dir,
        &["chaos", "corrupt", "n2", "-k", "ap", "--key", "ap-key-0"],
    );
    assert_eq!(named["flipped"][0]["key"], "ap-key-0");
    let total = flipped.len() + 1;
    ok(&kv(dir, &["local", "start", "n2"]));

    // The scrub finds and repairs every flipped record soon after the start.
    let http = cluster(dir)["nodes"][1]["http_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    loop {
        let c = corrupt_counters(&http);
        let repaired: f64 = c
            .iter()
            .filter(|((_, action), _)| action == "repaired")
            .map(|(_, v)| v)
            .sum();
        if repaired >= total as f64 {
            println!(
                "n2 repaired {repaired} records {:?} after its start: {c:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "n2 repaired {repaired} of {total} flipped records: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every key reads its value through n2.
    let n2 = addrs(dir)[1].clone();
    for ks in ["cp", "ap"] {
        for i in 0..KEYS {
            let key = format!("{ks}-key-{i}");
            let mut args = vec!["get", "--keyspace", ks, key.as_str(), "--endpoints", &n2];
            if ks == "ap" {
                args.extend(["--consistency", "all"]);
            }
            assert_eq!(ok(&kv(dir, &args)).trim(), format!("{ks}-value-{i}"));
        }
    }
}
