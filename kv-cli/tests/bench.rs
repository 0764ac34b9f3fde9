//! `kv bench` against a real local cluster: short runs by count on the CP and AP keyspaces,
//! closed and open loop, whose JSON reports are parsed and checked for what a user reads from
//! them (every request accounted for, percentiles in order, hops and serving nodes counted);
//! and flags that cannot make a run refused before any load. Speed is never asserted.

mod common;

use common::*;
use serde_json::Value;
use std::process::Output;

fn json_report(out: &Output) -> Value {
    let stdout = ok(out);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("kv bench -o json printed no JSON ({e}):\n{stdout}"))
}

/// Checks what every report must say about a run of `count` requests.
fn check_accounting(report: &Value, count: u64) {
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    assert_eq!(n(&report["requests"]), count, "{report:#}");
    assert_eq!(
        n(&report["errors"]["total"]),
        0,
        "a healthy cluster: {report:#}"
    );
    assert_eq!(n(&report["answered"]), count);
    let per_op: u64 = report["ops"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| n(&o["requests"]))
        .sum();
    assert_eq!(per_op, count, "each request counted under its kind");
    let lat = &report["latency_ms"];
    let p = |k: &str| lat[k].as_f64().unwrap_or_else(|| panic!("no {k} in {lat}"));
    assert!(p("p50") > 0.0);
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99"), "{lat}");
    assert!(p("p99") <= p("p99_9") && p("p99_9") <= p("max"), "{lat}");
    assert!(report["throughput_ops_s"].as_f64().unwrap() > 0.0);
    // Hops are measured with token-aware routing; every answer names its node.
    let hops = &report["hops"];
    assert_eq!(n(&hops["of"]), count, "{hops}");
    assert!(n(&hops["count"]) <= count);
    let served: u64 = report["served_by"]
        .as_object()
        .unwrap()
        .values()
        .map(n)
        .sum();
    assert_eq!(served, count, "{}", report["served_by"]);
}

#[test]
fn kv_bench_reports_short_runs_as_json_and_refuses_impossible_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    check_refusals(dir);

    // CP: preloaded keys, a mixed closed loop; every get finds its key.
    let report = json_report(&kv(
        dir,
        &[
            "bench",
            "--count",
            "120",
            "-c",
            "4",
            "--keys",
            "50",
            "--preload",
            "--mix",
            "get=60,put=30,cas=10",
            "--seed",
            "7",
            "-o",
            "json",
        ],
    ));
    check_accounting(&report, 120);
    assert_eq!(report["target"], "kv");
    assert_eq!(report["keyspace"], "cp");
    assert_eq!(report["mode"], "cp");
    assert_eq!(report["loop"], "closed");
    assert_eq!(report["seed"], 7);
    assert_eq!(report["preload"]["keys"], 50);
    assert_eq!(report["preload"]["errors"], 0);
    assert_eq!(
        report["ops"]["get"]["not_found"], 0,
        "preloaded: {report:#}"
    );
    assert_eq!(
        report["ops"]["cas"]["cas_mismatch"], 0,
        "every key holds the benchmark's value, so every swap succeeds: {report:#}"
    );

    // AP: open loop, zipfian keys, consistency one.
    let report = json_report(&kv(
        dir,
        &[
            "-k",
            "ap",
            "bench",
            "--count",
            "60",
            "--rate",
            "200",
            "-c",
            "8",
            "--mix",
            "put=50,get=50",
            "--distribution",
            "zipfian",
            "--consistency",
            "one",
            "-o",
            "json",
        ],
    ));
    check_accounting(&report, 60);
    assert_eq!(report["mode"], "ap");
    assert_eq!(report["loop"], "open");
    assert_eq!(report["rate"], 200.0);
    assert_eq!(report["distribution"], "zipfian");
    assert_eq!(report["consistency"], "one");
    // An AP request is served by the node it was sent to: the coordinator answers itself.
    assert_eq!(report["hops"]["count"], 0, "{report:#}");

    // The text report names the figures.
    let text = ok(&kv(dir, &["bench", "--count", "20", "--mix", "put=1"]));
    for want in ["closed loop", "answered", "p99.9 ms", "hops:", "served by"] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
}

/// Flags that cannot make a run are refused (exit 2, the reason in the JSON error) before
/// any load is sent.
fn check_refusals(dir: &std::path::Path) {
    for (args, reason) in [
        (
            &["-k", "ap", "bench", "--mix", "cas=1"][..],
            "compare-and-swap needs a CP",
        ),
        (&["-k", "ap", "bench", "--stale"], "--stale is for CP"),
        (
            &["bench", "--consistency", "one"],
            "--consistency is for AP",
        ),
        (&["-k", "nope", "bench"], "does not exist"),
        (&["bench", "--mix", "scan=1"], "unknown operation"),
        (&["bench", "--concurrency", "0"], "--concurrency 0"),
        (&["bench", "--count", "0"], "--count 0"),
    ] {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = kv(dir, &full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err: Value = serde_json::from_slice(&out.stderr)
            .unwrap_or_else(|e| panic!("{args:?}: no JSON error ({e})"));
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{args:?}: {message}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing measured");
    }
}
