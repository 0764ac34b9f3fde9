//! Tests of `ap.rs`.
use super::*;
use crate::history::{Op, Operation, Outcome};

const S: u64 = 1_000_000_000;

fn ts(ms: u64) -> Hlc {
    (ms, 0, 1)
}

fn op(key: &str, op: Op, t0: u64, t1: u64, read: Option<&str>, stamp: Option<Hlc>) -> Operation {
    Operation {
        id: 0,
        process: 0,
        key: key.into(),
        op,
        outcome: Outcome::Ok,
        read: read.map(String::from),
        version: None,
        timestamp: stamp,
        mismatch: false,
        invoke_ns: t0,
        complete_ns: Some(t1),
    }
}

fn put(key: &str, v: &str, t0: u64, t1: u64, stamp: Hlc) -> Operation {
    op(key, Op::Write(v.into()), t0, t1, None, Some(stamp))
}

fn delete(key: &str, t0: u64, t1: u64, stamp: Hlc) -> Operation {
    op(key, Op::Delete, t0, t1, None, Some(stamp))
}

fn read(key: &str, t0: u64, t1: u64, v: Option<&str>, stamp: Option<Hlc>) -> Operation {
    op(key, Op::Read, t0, t1, v, stamp)
}

fn replica(node: usize, key: &str, rec: Option<(Option<&str>, Hlc)>, time_ns: u64) -> ReplicaRead {
    ReplicaRead {
        node,
        key: key.into(),
        record: rec.map(|(v, t)| Record {
            value: v.map(String::from),
            timestamp: t,
        }),
        time_ns,
    }
}

/// Heal at 10 s, 5 s deadline, final reads at 20 s.
fn input(final_reads: Vec<ReplicaRead>) -> ApInput {
    ApInput {
        final_reads,
        samples: vec![],
        heal_ns: 10 * S,
        convergence_deadline_ns: 5 * S,
    }
}

fn all_agree(key: &str, v: Option<&str>, stamp: Hlc) -> Vec<ReplicaRead> {
    (0..3)
        .map(|n| replica(n, key, Some((v, stamp)), 20 * S))
        .collect()
}

#[test]
fn lost_write_detected_and_overwrite_is_not_loss() {
    let ops = [put("k", "a", 0, 10, ts(1)), put("k", "b", 20, 30, ts(2))];
    let ok = check_operations(&ops, &input(all_agree("k", Some("b"), ts(2))));
    assert_eq!((ok.acknowledged_writes, ok.lost_writes), (2, 0));
    // Replicas kept "a": the acknowledged "b" with a higher timestamp vanished.
    let lost = check_operations(&ops, &input(all_agree("k", Some("a"), ts(1))));
    assert_eq!(lost.lost_writes, 1);
    assert_eq!(lost.lost_examples, vec![("k".into(), "b".into(), ts(2))]);
    // Nothing at all on the replicas and no later delete: both lost.
    let gone = check_operations(&ops, &input(vec![replica(0, "k", None, 20 * S)]));
    assert_eq!(gone.lost_writes, 2);
    // Empty because a later acknowledged delete's tombstone was purged: not lost.
    let ops = [put("k", "a", 0, 10, ts(1)), delete("k", 20, 30, ts(2))];
    let purged = check_operations(&ops, &input(vec![replica(0, "k", None, 20 * S)]));
    assert_eq!(purged.lost_writes, 0);
}

#[test]
fn divergence_after_deadline_detected() {
    let ops = [put("k", "a", 0, 10, ts(1))];
    let agree = check_operations(&ops, &input(all_agree("k", Some("a"), ts(1))));
    assert_eq!(agree.divergent_keys, 0);
    let mut reads = all_agree("k", Some("a"), ts(1));
    reads[2] = replica(2, "k", None, 20 * S);
    let diverged = check_operations(&ops, &input(reads.clone()));
    assert_eq!(diverged.divergent_keys, 1);
    assert_eq!(diverged.divergent_examples[0].1.len(), 3);
    assert_eq!(diverged.anomalies(), 1);
    // Disagreement before the deadline is allowed.
    for r in &mut reads {
        r.time_ns = 12 * S;
    }
    assert_eq!(check_operations(&ops, &input(reads)).divergent_keys, 0);
    // A tombstone and a purged tombstone are the same state.
    let mut reads = all_agree("k", None, ts(2));
    reads[0] = replica(0, "k", None, 20 * S);
    assert_eq!(check_operations(&ops, &input(reads)).divergent_keys, 0);
}

#[test]
fn resurrected_delete_detected() {
    let ops = [put("k", "a", 0, 10, ts(1)), delete("k", 20, 30, ts(2))];
    let stays = check_operations(&ops, &input(all_agree("k", None, ts(2))));
    assert_eq!(stays.resurrected_keys, 0);
    let mut reads = all_agree("k", None, ts(2));
    reads[1] = replica(1, "k", Some((Some("a"), ts(1))), 20 * S);
    let back = check_operations(&ops, &input(reads));
    assert_eq!(back.resurrected_keys, 1);
    assert_eq!(back.resurrected_examples, vec![("k".into(), "a".into())]);
    // A client read after the deadline that returns the deleted value also counts.
    let mut with_read = ops.to_vec();
    with_read.push(read("k", 16 * S, 16 * S + 10, Some("a"), Some(ts(1))));
    let client = check_operations(&with_read, &input(all_agree("k", None, ts(2))));
    assert_eq!(client.resurrected_keys, 1);
    // A newer put after the delete is not a resurrection.
    let ops = [delete("k", 20, 30, ts(2)), put("k", "c", 40, 50, ts(3))];
    let newer = check_operations(&ops, &input(all_agree("k", Some("c"), ts(3))));
    assert_eq!(newer.resurrected_keys, 0);
}

#[test]
fn stale_reads_counted() {
    let ops = [
        put("k", "a", 0, 10, ts(1)),
        put("k", "b", 20, 30, ts(2)),
        // Fresh: began after "b" was acknowledged and saw it.
        read("k", 40, 50, Some("b"), Some(ts(2))),
        // Concurrent with "b": seeing "a" is not stale.
        read("k", 25, 35, Some("a"), Some(ts(1))),
        // Stale: began after "b" was acknowledged but returned "a".
        read("k", 60, 70, Some("a"), Some(ts(1))),
        // Stale: found nothing at all.
        read("k", 80, 90, None, None),
    ];
    let report = check_operations(&ops, &input(all_agree("k", Some("b"), ts(2))));
    assert_eq!((report.reads, report.stale_reads), (4, 2));
    assert!((report.stale_read_rate() - 0.5).abs() < 1e-9);
    assert_eq!(report.stale_examples[0].invoke_ns, 60);
    let fresh = check_operations(&ops[..4], &input(all_agree("k", Some("b"), ts(2))));
    assert_eq!(fresh.stale_reads, 0);
    // After an acknowledged delete, finding nothing is fresh and the old value is stale.
    let ops = [
        put("k", "a", 0, 10, ts(1)),
        delete("k", 20, 30, ts(2)),
        read("k", 40, 50, None, None),
        read("k", 60, 70, Some("a"), Some(ts(1))),
    ];
    let report = check_operations(&ops, &input(all_agree("k", None, ts(2))));
    assert_eq!((report.reads, report.stale_reads), (2, 1));
    assert_eq!(report.stale_examples[0].invoke_ns, 60);
}

#[test]
fn time_to_converge_from_samples() {
    let sample = |s: u64, converged| ConvergenceSample {
        time_ns: s * S,
        converged,
    };
    let mut inp = input(vec![]);
    // Converged before the heal does not count; flapped once; stable from 13 s.
    inp.samples = vec![
        sample(9, true),
        sample(11, false),
        sample(12, true),
        sample(12, true),
        sample(13, false),
        sample(13, true),
        sample(14, true),
    ];
    inp.samples.swap(4, 5);
    inp.samples.sort_by_key(|s| (s.time_ns, s.converged));
    let report = check_operations(&[], &inp);
    assert_eq!(report.converge_ns, Some(3 * S));
    assert!(!report.converged_late(5 * S));
    assert!(report.converged_late(2 * S));
    inp.samples.push(sample(15, false));
    let never = check_operations(&[], &inp);
    assert_eq!(never.converge_ns, None);
    assert!(never.converged_late(5 * S));
}

#[test]
fn append_set_finds_lost_elements() {
    use crate::history::Recorder;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let rec = Recorder::with_clock(Arc::new(move || clock.fetch_add(1, Ordering::SeqCst)));
    for (key, value, end) in [
        ("s/1", "e1", 0),
        ("s/2", "e2", 0),
        ("s/3", "e3", 1),
        ("s/4", "e4", 0),
    ] {
        let id = rec.invoke(0, key, Op::Write(value.into()));
        match end {
            0 => rec.ok(id, None, None, None),
            _ => rec.info(id),
        }
    }
    let final_from = now.load(Ordering::SeqCst);
    for (key, found) in [
        ("s/1", Some("e1")),
        ("s/2", None),
        ("s/3", Some("e3")),
        ("s/9", Some("x")),
    ] {
        let id = rec.invoke(1, key, Op::Read);
        rec.ok(id, found.map(String::from), None, None);
    }
    let report = check_set(&rec.history(), final_from).expect("well-formed");
    assert_eq!(report.acknowledged, 3);
    assert_eq!(report.lost, vec!["s/2".to_string()]);
    assert_eq!(report.unread, 1);
    assert_eq!(report.recovered, 1);
    assert_eq!(report.unexpected, vec!["s/9=x".to_string()]);
}
