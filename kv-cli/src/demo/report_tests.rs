use super::*;

fn at(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn write(side: Side, key: &str, value: &str, start: u64, end: u64) -> Op {
    Op {
        mode: Mode::Ap,
        side,
        kind: Kind::Write,
        during_partition: true,
        key: key.into(),
        value: Some(value.into()),
        error: None,
        start: at(start),
        end: at(end),
    }
}

fn read(side: Side, key: &str, value: Option<&str>, start: u64, end: u64) -> Op {
    Op {
        kind: Kind::Read,
        value: value.map(str::to_string),
        ..write(side, key, "", start, end)
    }
}

fn failed(mut op: Op, error: &str) -> Op {
    op.error = Some(error.into());
    if op.kind == Kind::Read {
        op.value = None;
    }
    op
}

fn refs(ops: &[Op]) -> Vec<&Op> {
    ops.iter().collect()
}

fn finals(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

#[test]
fn durations_read_in_the_unit_that_fits() {
    assert_eq!(human(Duration::from_micros(420)), "0.4 ms");
    assert_eq!(human(at(850)), "850 ms");
    assert_eq!(human(at(2345)), "2.3 s");
}

#[test]
fn percentiles_are_nearest_rank() {
    let values: Vec<Duration> = (1..=100).rev().map(at).collect();
    assert_eq!(percentile(&values, 50), Some(at(50)));
    assert_eq!(percentile(&values, 99), Some(at(99)));
    assert_eq!(percentile(&values, 100), Some(at(100)));
    assert_eq!(percentile(&[at(7)], 99), Some(at(7)));
    assert_eq!(percentile(&[], 50), None);
}

#[test]
fn a_read_missing_a_write_acknowledged_before_it_began_is_stale() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 10),
        write(Side::Minority, "k", "b", 20, 30),
        read(Side::Majority, "k", Some("a"), 40, 45),
        read(Side::Minority, "k", Some("b"), 40, 45),
    ];
    let stale = stale_reads(&refs(&ops));
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].0, &ops[2]);
    assert_eq!(stale[0].1, Some(&ops[1]));
}

#[test]
fn a_read_concurrent_with_the_newer_write_is_not_stale() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 10),
        // Still in flight when the read began: the read may come before it.
        write(Side::Minority, "k", "b", 20, 50),
        read(Side::Majority, "k", Some("a"), 40, 45),
        // Overlaps the first write: not proof that "a" was in place before "b".
        write(Side::Minority, "j", "c", 0, 30),
        write(Side::Majority, "j", "d", 5, 25),
        read(Side::Majority, "j", Some("c"), 40, 45),
    ];
    assert!(stale_reads(&refs(&ops)).is_empty());
}

#[test]
fn failed_writes_explain_values_but_replace_nothing() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 10),
        failed(write(Side::Minority, "k", "b", 20, 30), "Unavailable"),
        // "b" may have been applied: reading it is not an anomaly.
        read(Side::Majority, "k", Some("b"), 40, 45),
        // Reading "a" is not stale either: "b" was never acknowledged.
        read(Side::Majority, "k", Some("a"), 50, 55),
    ];
    assert!(stale_reads(&refs(&ops)).is_empty());
}

#[test]
fn reading_absent_after_an_acknowledged_write_or_a_value_nobody_wrote_is_stale() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 10),
        read(Side::Minority, "k", None, 20, 25),
        read(Side::Minority, "k", Some("zzz"), 30, 35),
        read(Side::Minority, "other", None, 30, 35),
    ];
    let stale = stale_reads(&refs(&ops));
    assert_eq!(stale.len(), 2);
    assert_eq!(stale[0], (&ops[1], Some(&ops[0])));
    assert_eq!(stale[1], (&ops[2], None));
}

#[test]
fn a_write_is_lost_when_the_final_value_is_older_than_it() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 10),
        write(Side::Minority, "k", "b", 20, 30),
    ];
    let lost = lost_writes(&refs(&ops), &finals(&[("k", Some("a"))]));
    assert_eq!(lost, vec![&ops[1]]);
    assert!(lost_writes(&refs(&ops), &finals(&[("k", Some("b"))])).is_empty());
    // Absent, or a value no write produced: every acknowledged write of the key is lost.
    assert_eq!(lost_writes(&refs(&ops), &finals(&[("k", None)])).len(), 2);
    assert_eq!(
        lost_writes(&refs(&ops), &finals(&[("k", Some("x"))])).len(),
        2
    );
}

#[test]
fn concurrent_writes_may_end_either_way() {
    let ops = vec![
        write(Side::Majority, "k", "a", 0, 30),
        write(Side::Minority, "k", "b", 20, 40),
    ];
    for fin in ["a", "b"] {
        assert!(lost_writes(&refs(&ops), &finals(&[("k", Some(fin))])).is_empty());
    }
}

#[test]
fn the_side_whose_last_write_is_not_kept_is_counted_once_per_key() {
    let mut before = write(Side::Majority, "k", "init", 0, 5);
    before.during_partition = false;
    let ops = vec![
        before,
        write(Side::Majority, "k", "m1", 10, 12),
        write(Side::Majority, "k", "m2", 20, 22),
        write(Side::Minority, "k", "n1", 15, 17),
        write(Side::Minority, "j", "n2", 15, 17),
    ];
    let discarded = discarded_by_lww(
        &refs(&ops),
        &finals(&[("k", Some("m2")), ("j", Some("n2"))]),
    );
    assert_eq!(discarded, vec![&ops[3]]);
    let discarded = discarded_by_lww(
        &refs(&ops),
        &finals(&[("k", Some("n1")), ("j", Some("n2"))]),
    );
    assert_eq!(discarded, vec![&ops[2]]);
}

#[test]
fn judge_counts_each_side_during_the_partition_only() {
    let mut before = write(Side::Minority, "k", "init", 0, 5);
    before.during_partition = false;
    let mut ops = vec![
        before,
        write(Side::Majority, "k", "m1", 10, 14),
        read(Side::Majority, "k", Some("m1"), 20, 22),
        failed(write(Side::Minority, "k", "n1", 10, 810), "Unavailable"),
        failed(
            read(Side::Minority, "k", None, 810, 1600),
            "DeadlineExceeded",
        ),
    ];
    for op in &mut ops {
        op.mode = Mode::Cp;
    }
    let report = judge(
        Mode::Cp,
        &ops,
        &finals(&[("k", Some("m1"))]),
        Some(at(1500)),
    );
    assert_eq!(report.majority, Served { ok: 2, total: 2 });
    assert_eq!(report.minority, Served { ok: 0, total: 2 });
    assert_eq!(report.latency_ok, Some((at(2), at(4))));
    assert_eq!(report.failed_after_p50, Some(at(790)));
    assert_eq!(
        report.errors,
        BTreeMap::from([("DeadlineExceeded".into(), 1), ("Unavailable".into(), 1)])
    );
    assert_eq!(
        (
            report.stale_reads,
            report.lost_writes,
            report.discarded_by_lww,
            report.failed_writes_applied
        ),
        (0, 0, 0, 0)
    );
    // A refused write whose value is the final one was applied after all.
    let applied = judge(Mode::Cp, &ops, &finals(&[("k", Some("n1"))]), None);
    assert_eq!(applied.failed_writes_applied, 1);
    // Another mode's operations are not counted.
    assert_eq!(
        judge(Mode::Ap, &ops, &BTreeMap::new(), None).majority.total,
        0
    );

    let json = report.json();
    assert_eq!(json["minority"]["ok"], 0);
    assert_eq!(json["majority"]["availability"], 1.0);
    assert_eq!(json["anomalies"]["lost_acknowledged_writes"], 0);
    assert_eq!(json["converged_after_ms"], 1500);
    let text = table_text(&[report], "n1, n2", "n3");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("minority side (n3)"))
        .unwrap_or_else(|| panic!("no minority row in\n{text}"));
    assert!(row.ends_with("0/2 served"), "{text}");
}
