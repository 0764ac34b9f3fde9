use super::*;
use chaos::scenario::FINAL_READ_PROCESS_BASE;
use jepsen::ap::{Record, ReplicaRead};
use jepsen::history::Recorder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A recorder whose clock advances 1 ms per event.
fn recorder() -> Recorder {
    let t = Arc::new(AtomicU64::new(0));
    Recorder::with_clock(Arc::new(move || t.fetch_add(1_000_000, Ordering::SeqCst)))
}

#[test]
fn percentile_is_nearest_rank() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 50), Some(50));
    assert_eq!(percentile(&v, 99), Some(99));
    assert_eq!(percentile(&[7], 99), Some(7));
    assert_eq!(percentile(&[], 50), None);
}

#[test]
fn cp_finds_a_lost_set_element_and_a_stale_read() {
    let r = recorder();
    let w = r.invoke(0, "x/set/p0-1", Op::Write("e0-1".into()));
    r.ok(w, None, Some(1), None);
    // The final read (process above the base) finds nothing: the acknowledged write is lost,
    // and the history is not linearizable either.
    let f = r.invoke(FINAL_READ_PROCESS_BASE, "x/set/p0-1", Op::Read);
    r.ok(f, None, None, None);
    let checked = check_cp(&r.history(), Some(5));
    assert_eq!(checked.lost_writes, 1, "{checked:?}");
    assert_eq!(checked.anomalies, 1, "{checked:?}");
    assert_eq!(checked.verdict, "NOT linearizable");

    let good = recorder();
    let w = good.invoke(0, "x/set/p0-1", Op::Write("e0-1".into()));
    good.ok(w, None, Some(1), None);
    let f = good.invoke(FINAL_READ_PROCESS_BASE, "x/set/p0-1", Op::Read);
    good.ok(f, Some("e0-1".into()), Some(1), None);
    let checked = check_cp(&good.history(), Some(5));
    assert_eq!(
        (checked.lost_writes, checked.anomalies),
        (0, 0),
        "{checked:?}"
    );
    assert_eq!(checked.verdict, "linearizable");
    assert_eq!(checked.lww_overwritten, None);
}

fn replica(node: usize, value: &str, ts: jepsen::Hlc) -> ReplicaRead {
    ReplicaRead {
        node,
        key: "k".into(),
        record: Some(Record {
            value: Some(value.into()),
            timestamp: ts,
        }),
        time_ns: 100_000_000,
    }
}

#[test]
fn ap_counts_lww_overwrites_apart_from_lost_writes() {
    let r = recorder();
    // Two concurrent acknowledged writes; the higher timestamp wins everywhere.
    let a = r.invoke(0, "k", Op::Write("a".into()));
    let b = r.invoke(1, "k", Op::Write("b".into()));
    r.ok(a, None, None, Some((10, 0, 1)));
    r.ok(b, None, None, Some((11, 0, 2)));
    let input = |v: &str, ts| ApInput {
        final_reads: (0..3).map(|n| replica(n, v, ts)).collect(),
        samples: vec![jepsen::ap::ConvergenceSample {
            time_ns: 90_000_000,
            converged: true,
        }],
        heal_ns: 50_000_000,
        convergence_deadline_ns: 40_000_000,
    };
    let checked = check_ap(&r.history(), &input("b", (11, 0, 2)));
    assert_eq!(checked.lww_overwritten, Some(1), "{checked:?}");
    assert_eq!(
        (checked.lost_writes, checked.anomalies),
        (0, 0),
        "{checked:?}"
    );
    assert!(checked.verdict.starts_with("converged"), "{checked:?}");
    // Every replica holding an older value than an acknowledged write: lost.
    let checked = check_ap(&r.history(), &input("a", (10, 0, 1)));
    assert_eq!(checked.lost_writes, 1, "{checked:?}");
    assert!(checked.anomalies >= 1, "{checked:?}");
}

#[test]
fn report_counts_a_cas_mismatch_as_served_and_leaves_out_final_reads() {
    let r = recorder();
    let c = r.invoke(
        0,
        "k",
        Op::Cas {
            expected: Some("x".into()),
            new: Some("y".into()),
        },
    );
    r.mismatch(c);
    let w = r.invoke(1, "k", Op::Write("v".into()));
    r.fail(w);
    let f = r.invoke(FINAL_READ_PROCESS_BASE, "k", Op::Read);
    r.ok(f, None, None, None);
    let run = ModeRun {
        mode: Mode::Cp,
        history: r.history(),
        sides: [(Side::Whole, (2, 1))].into_iter().collect(),
        ap_input: None,
        checked: Checked::default(),
    };
    let rep = report(&run);
    assert_eq!((rep.ok, rep.failed, rep.unknown), (1, 1, 0));
    assert_eq!((rep.requests, rep.served), (2, 1));
    assert_eq!(rep.json()["availability_pct"], 50.0);
    let text = table_text(&rows(&[rep], "n3"));
    assert!(text.contains("50.0% (1/2)"), "{text}");
    assert!(text.contains("- (no LWW)"), "{text}");
}
