//! Tests of deciding histories by their revisions (CP keyspaces return them): one hot key at 32
//! and 64 clients decided either way, each kind of violation found and explained, failed cas
//! as observations, cas to absent. Timings are printed (`--nocapture`), never asserted.

use std::time::Instant;

use super::*;
use crate::history::{Event, EventType, Op, OpKind};
use crate::simulate::{
    inject_failed_current_cas, inject_lost_write, inject_revision_swap, inject_stale_read,
    register_history, strip_revisions, SimConfig,
};

/// One hot key as a CP keyspace answers it: revisions, mismatches recorded.
fn cp(seed: u64, processes: usize, ops: usize, info_pct: u32) -> History {
    register_history(&SimConfig {
        seed,
        processes,
        keys: 1,
        ops,
        info_pct,
        revisions: true,
        mismatches: true,
        cas_deletes: false,
    })
}

fn timed(label: &str, h: &History) -> LinReport {
    let started = Instant::now();
    let report = check(h).expect("well-formed");
    println!(
        "{label}: {:?} in {:.3} s, {} states, {} writes ordered by revision, {} info searched",
        report.verdict(),
        started.elapsed().as_secs_f64(),
        report.states,
        report.ordered_writes,
        report.info_searched
    );
    report
}

#[test]
fn hot_key_histories_with_revisions_are_decided_at_32_and_64_clients() {
    for processes in [32, 64] {
        for (ops, info_pct) in [(2_000, 0), (2_000, 10), (20_000, 5)] {
            let h = cp(11, processes, ops, info_pct);
            let label = format!("{processes} clients, {ops} ops, {info_pct}% info");
            let report = timed(&label, &h);
            assert_eq!(report.verdict(), Verdict::Linearizable, "{label}");
            assert!(report.ordered_writes > ops / 10, "{label}: {report:?}");
        }
    }
    // What the same kind of history gives without revisions: often no verdict (printed only).
    let h = strip_revisions(&cp(11, 32, 2_000, 0));
    let report = check_operations(&h.operations().expect("well-formed"), 50_000);
    println!(
        "32 clients, 2000 ops, no revisions, 50k-state bound: {:?}",
        report.verdict()
    );
}

/// Checks `h`, expects a violation, and returns it.
fn violation(label: &str, h: &History) -> Violation {
    let report = timed(label, h);
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{label}");
    assert_eq!(report.violations.len(), 1, "{label}");
    let v = report.violations[0].clone();
    println!("{v}");
    v
}

#[test]
fn stale_reads_are_found_at_32_and_64_clients() {
    for processes in [32, 64] {
        let mut h = cp(21, processes, 3_000, 5);
        let read = inject_stale_read(&mut h).expect("a late read");
        let v = violation(&format!("stale read, {processes} clients"), &h);
        assert_eq!(v.stuck[0].id, read);
        // It names the first write of the key, whose value it returned.
        let first = h
            .events
            .iter()
            .find(|e| e.kind == EventType::Ok && e.f == OpKind::Write)
            .map(|e| e.id);
        assert_eq!(v.expected[0].as_ref().map(|w| w.id), first);
        assert!(
            v.reason.starts_with(&format!("read #{read} returned")),
            "{}",
            v.reason
        );
        // The window is about the read, not the history.
        assert!(v.window.iter().any(|o| o.id == read));
        assert!(v.window_total <= 4 * processes, "{}", v.window_total);
    }
}

#[test]
fn lost_writes_are_found_at_32_and_64_clients() {
    for processes in [32, 64] {
        let mut h = cp(31, processes, 3_000, 5);
        let lost = inject_lost_write(&mut h).expect("a write read later");
        let v = violation(&format!("lost write, {processes} clients"), &h);
        assert!(v.stuck[0].op == Op::Read, "{v}");
        assert!(v.window_total <= 4 * processes, "{}", v.window_total);
        // The write that vanished is in the window, or is the value the register held.
        let named = v
            .window
            .iter()
            .chain(&v.window_uncertain)
            .chain(&v.context)
            .any(|o| o.id == lost);
        assert!(named, "{v}");
    }
}

#[test]
fn a_revision_order_that_contradicts_real_time_is_found() {
    for processes in [4, 32, 64] {
        let mut h = cp(41, processes, 2_000, 0);
        let (a, b) = inject_revision_swap(&mut h).expect("two writes in real-time order");
        let v = violation(&format!("revision swap, {processes} clients"), &h);
        // Seen first as the order itself, or as a read or cas that the order makes stale.
        let ids: Vec<u64> = v
            .window
            .iter()
            .chain(&v.window_uncertain)
            .map(|o| o.id)
            .collect();
        assert!(ids.contains(&a) || ids.contains(&b), "{v}");
        assert!(v.window_total <= 4 * processes, "{}", v.window_total);
        // The values alone are linearizable: only the revisions show the bug. (At high
        // concurrency the search without revisions is cut off, which is why they matter.)
        let stripped = strip_revisions(&h).operations().expect("well-formed");
        let stripped = check_operations(&stripped, 20_000);
        if processes == 4 {
            assert_eq!(stripped.verdict(), Verdict::Linearizable);
        } else {
            assert_ne!(stripped.verdict(), Verdict::NotLinearizable);
        }
    }
}

#[test]
fn a_failed_cas_whose_expected_value_was_current_is_found() {
    for processes in [32, 64] {
        let mut h = cp(51, processes, 2_000, 0);
        let cas = inject_failed_current_cas(&mut h).expect("a key with writes");
        let v = violation(&format!("failed current cas, {processes} clients"), &h);
        assert_eq!(v.stuck[0].id, cas);
        assert!(v.reason.contains("failed on a mismatch"), "{}", v.reason);
        assert!(v.window_total <= 4, "{v}");
    }
}

#[test]
fn random_revision_histories_pass_with_cas_deletes() {
    for seed in 0..20 {
        let h = register_history(&SimConfig {
            seed,
            processes: 1 + seed as usize % 40,
            keys: 1 + seed as usize % 3,
            ops: 400,
            info_pct: (seed % 4) as u32 * 5,
            revisions: true,
            mismatches: true,
            cas_deletes: true,
        });
        let report = check(&h).expect("well-formed");
        assert!(report.is_linearizable(), "seed {seed}: {report:?}");
    }
}

// Hand-built histories: `(process, f, value, expected, outcome, revision, invoke, complete)`.
type Row = (
    u64,
    OpKind,
    Option<&'static str>,
    Option<&'static str>,
    EventType,
    Option<u64>,
    u64,
    u64,
);

fn hand(rows: &[Row]) -> History {
    let mut events: Vec<Event> = Vec::new();
    for (id, &(process, f, value, expected, end, rev, t0, t1)) in rows.iter().enumerate() {
        let invoke = Event {
            id: id as u64,
            kind: EventType::Invoke,
            process,
            key: "k".into(),
            f,
            value: if f == OpKind::Read {
                None
            } else {
                value.map(String::from)
            },
            expected: expected.map(String::from),
            version: None,
            timestamp: None,
            mismatch: false,
            time_ns: t0,
        };
        let mut done = invoke.clone();
        done.kind = end;
        done.time_ns = t1;
        done.version = rev;
        done.mismatch = end == EventType::Fail && f == OpKind::Cas;
        if f == OpKind::Read {
            done.value = value.map(String::from);
        }
        events.push(invoke);
        events.push(done);
    }
    events.sort_by_key(|e| (e.time_ns, e.kind != EventType::Invoke));
    History { events }
}

const W: OpKind = OpKind::Write;
const R: OpKind = OpKind::Read;
const C: OpKind = OpKind::Cas;
const OK: EventType = EventType::Ok;
const FAIL: EventType = EventType::Fail;
const INFO: EventType = EventType::Info;

fn verdict(rows: &[Row]) -> LinReport {
    check(&hand(rows)).expect("well-formed")
}

#[test]
fn reads_must_name_the_revision_of_the_value_they_returned() {
    let base = [
        (0, W, Some("a"), None, OK, Some(3), 0, 10),
        (0, W, Some("b"), None, OK, Some(5), 20, 30),
    ];
    let mut good = base.to_vec();
    good.push((1, R, Some("b"), None, OK, Some(5), 40, 50));
    assert!(verdict(&good).is_linearizable());
    let mut wrong = base.to_vec();
    wrong.push((1, R, Some("b"), None, OK, Some(3), 40, 50));
    let report = verdict(&wrong);
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    let reason = &report.violations[0].reason;
    assert!(
        reason.starts_with("read #2 returned \"b\" at revision 3"),
        "{reason}"
    );
    let mut twice = base.to_vec();
    twice.push((1, W, Some("c"), None, OK, Some(5), 40, 50));
    let report = verdict(&twice);
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert!(report.violations[0]
        .reason
        .contains("two writes returned revision 5"));
}

#[test]
fn revisions_out_of_real_time_order_are_named() {
    let rows = [
        (0, W, Some("a"), None, OK, Some(5), 0, 10),
        (1, W, Some("b"), None, OK, Some(3), 20, 30),
    ];
    let report = verdict(&rows);
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    let v = &report.violations[0];
    assert_eq!(
        v.reason,
        "write #0 got revision 5, after #1 (revision 3), yet #1 began only after #0 had completed: the revision order contradicts real time"
    );
    assert_eq!(v.expected[0].as_ref().map(|w| w.id), Some(1));
    // Without revisions, nothing is wrong.
    let mut plain = hand(&rows);
    plain.events.iter_mut().for_each(|e| e.version = None);
    assert!(check(&plain).expect("well-formed").is_linearizable());
}

#[test]
fn a_read_orders_the_timed_out_write_it_saw() {
    // The timed-out write of "t" got revision 4, between "a" (3) and "b" (5), as the read says.
    let rows = [
        (0, W, Some("a"), None, OK, Some(3), 0, 10),
        (1, W, Some("t"), None, INFO, None, 5, 15),
        (0, W, Some("b"), None, OK, Some(5), 20, 30),
        (2, R, Some("t"), None, OK, Some(4), 12, 25),
    ];
    let report = verdict(&rows);
    assert!(report.is_linearizable(), "{report:?}");
    assert_eq!(report.ordered_writes, 3);
    // Saying revision 6 puts it after "b", which a read of "b" after it contradicts.
    let mut late = rows.to_vec();
    late[3] = (2, R, Some("t"), None, OK, Some(6), 12, 25);
    late.push((3, R, Some("b"), None, OK, Some(5), 40, 50));
    assert_eq!(verdict(&late).verdict(), Verdict::NotLinearizable);
}

#[test]
fn a_failed_cas_is_an_observation() {
    let current = [
        (0, W, Some("a"), None, OK, None, 0, 10),
        (1, C, Some("x"), Some("a"), FAIL, None, 20, 30),
    ];
    let report = verdict(&current);
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
    assert!(report.violations[0].reason.contains("failed on a mismatch"));
    // A write of something else running at the same time explains it...
    let mut raced = current.to_vec();
    raced.push((2, W, Some("b"), None, OK, None, 15, 25));
    assert!(verdict(&raced).is_linearizable());
    // ... and so does a timed-out one nobody read, which may have landed.
    let mut timed_out = current.to_vec();
    timed_out.push((2, W, Some("t"), None, INFO, None, 15, 16));
    assert!(verdict(&timed_out).is_linearizable());
    // A plain failure says nothing.
    let mut plain = hand(&current);
    plain.events.iter_mut().for_each(|e| e.mismatch = false);
    assert!(check(&plain).expect("well-formed").is_linearizable());
}

#[test]
fn a_cas_may_delete() {
    let rows = [
        (0, W, Some("a"), None, OK, Some(1), 0, 10),
        (1, C, None, Some("a"), OK, Some(2), 20, 30),
        (2, R, None, None, OK, None, 40, 50),
    ];
    assert!(verdict(&rows).is_linearizable());
    let mut back = rows.to_vec();
    back[2] = (2, R, Some("a"), None, OK, Some(1), 40, 50);
    assert_eq!(verdict(&back).verdict(), Verdict::NotLinearizable);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// A window of a linearizable history never fails: what makes a failing window a witness,
    /// and the verdict of a search cut off by its bound sound.
    #[test]
    fn windows_of_linearizable_histories_never_fail(
        seed in proptest::prelude::any::<u64>(),
        processes in 1usize..24,
        ops in 1usize..120,
        info_pct in 0u32..30,
        revisions in proptest::prelude::any::<bool>(),
        start in 0u64..1000,
        length in 0u64..1000,
    ) {
        let h = register_history(&SimConfig {
            seed,
            processes,
            keys: 1,
            ops,
            info_pct,
            revisions,
            mismatches: true,
            cas_deletes: true,
        });
        let all = h.operations().expect("well-formed");
        let refs: Vec<&crate::history::Operation> = all.iter().collect();
        let end = h.events.iter().map(|e| e.time_ns).max().unwrap_or(0);
        let from = start * end / 1000;
        let to = from + length * (end - from) / 1000;
        let mut budget = u64::MAX;
        for from in [None, Some(from)] {
            let failed = super::explain::fails(&refs, from, to, 1_000_000, &mut budget);
            proptest::prop_assert!(failed.is_none(), "{from:?}..{to}\n{}", h.to_edn());
        }
    }
}
