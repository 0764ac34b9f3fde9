//! `kv demo -o json` end to end on real processes: during the partition CP is refused on the
//! minority side and serves the majority side with no anomaly, AP serves both sides and its
//! replicas converge after the heal, and the demo's cluster folder is gone afterwards.

mod common;

use common::*;

use std::time::Instant;

#[test]
fn the_demo_shows_cp_refusing_the_minority_and_ap_serving_both_sides_then_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    // The demo's temporary folder goes here, so the test can see that nothing is left.
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let start = Instant::now();
    let out = kv_command(tmp.path(), &["demo", "-o", "json"])
        .env("TMPDIR", &tmpdir)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "kv demo: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON table");
    println!("kv demo took {took:?}:\n{report:#}");

    let cp = &report["modes"]["cp"];
    let ap = &report["modes"]["ap"];
    // CP: the minority side is refused every time, the majority side is served, no anomaly.
    assert!(cp["minority"]["total"].as_u64().unwrap() > 0, "{cp}");
    assert_eq!(cp["minority"]["ok"], 0, "{cp}");
    assert!(cp["majority"]["ok"].as_u64().unwrap() > 0, "{cp}");
    assert_eq!(cp["anomalies"]["stale_reads"], 0, "{cp}");
    assert_eq!(cp["anomalies"]["lost_acknowledged_writes"], 0, "{cp}");
    assert_eq!(cp["converged"], true, "{cp}");
    // AP: every request served on both sides, and the replicas agree after the heal.
    for side in ["majority", "minority"] {
        assert!(ap[side]["total"].as_u64().unwrap() > 0, "{ap}");
        assert_eq!(ap[side]["ok"], ap[side]["total"], "{side}: {ap}");
    }
    assert_eq!(ap["converged"], true, "{ap}");
    assert_eq!(ap["anomalies"]["lost_acknowledged_writes"], 0, "{ap}");

    // Nothing left behind: the cluster's folder, and anything else in the temporary folder.
    assert_eq!(report["cleaned_up"], true);
    let dir = std::path::PathBuf::from(report["dir"].as_str().unwrap());
    assert!(dir.starts_with(&tmpdir), "{dir:?}");
    assert!(!dir.exists(), "{dir:?} still exists");
    assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0);
}
