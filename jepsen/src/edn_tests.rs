//! Tests of `edn.rs`: the reader, Jepsen register histories (single and independent keys), and
//! errors that name their line.

use super::*;
use crate::history::{Op, Outcome, Recorder};
use crate::linearizability::{self, Verdict};

#[test]
fn reads_the_edn_jepsen_writes() {
    let forms = parse_all(
        "; a comment\n{:a 1, :b [nil true -2.5 \"s\\\"q\\u00e9\"] :c #{:x} :d (sym 7N)}\n#_ {:skipped 1} #jepsen.history.Op{:index 3}",
    )
    .expect("valid EDN");
    assert_eq!(forms.len(), 2);
    assert_eq!(forms[0].0, 2);
    let map = &forms[0].1;
    assert_eq!(map.get("a"), Some(&Edn::Int(1)));
    assert_eq!(
        map.get("b"),
        Some(&Edn::Vector(vec![
            Edn::Nil,
            Edn::Bool(true),
            Edn::Number("-2.5".into()),
            Edn::Str("s\"qé".into())
        ]))
    );
    assert_eq!(
        map.get("c"),
        Some(&Edn::Set(vec![Edn::Keyword("x".into())]))
    );
    assert_eq!(
        map.get("d"),
        Some(&Edn::List(vec![Edn::Symbol("sym".into()), Edn::Int(7)]))
    );
    // A tagged record reads as its map.
    assert_eq!(forms[1].1.get("index"), Some(&Edn::Int(3)));
    assert_eq!(forms[1].0, 3);
}

#[test]
fn malformed_edn_names_the_line() {
    for (text, line, words) in [
        ("{:a 1}\n{:b \"open", 2, "unterminated string"),
        ("{:a 1}\n\n{:b [1 2}", 3, "unexpected `}`"),
        ("{:a}", 1, "odd number"),
        ("{:a 1}\n]", 2, "unexpected `]`"),
    ] {
        match parse_all(text) {
            Err(HistoryError::Invalid { line: l, reason }) => {
                assert_eq!(l, line, "{text:?}: {reason}");
                assert!(reason.contains(words), "{text:?}: {reason}");
            }
            other => panic!("{text:?}: expected an error, got {other:?}"),
        }
    }
    let deep = "[".repeat(MAX_DEPTH + 2);
    assert!(matches!(
        parse_all(&deep),
        Err(HistoryError::Invalid { .. })
    ));
}

/// A Knossos cas-register history: one register, values are numbers.
const KNOSSOS_OK: &str = r#"
{:process 0, :type :invoke, :f :write, :value 1, :time 0}
{:process 1, :type :invoke, :f :read, :value nil, :time 1}
{:process 0, :type :ok, :f :write, :value 1, :time 2}
{:process 1, :type :ok, :f :read, :value 1, :time 3}
{:process :nemesis, :type :info, :f :start, :value nil, :time 4}
{:process 2, :type :invoke, :f :cas, :value [1 2], :time 5}
{:process 2, :type :ok, :f :cas, :value [1 2], :time 6}
{:process 0, :type :invoke, :f :cas, :value [1 3], :time 7}
{:process 0, :type :fail, :f :cas, :value [1 3], :time 8}
{:process 1, :type :invoke, :f :read, :value nil, :time 9}
{:process 1, :type :ok, :f :read, :value 2, :time 10}
"#;

#[test]
fn a_single_register_history_is_read_and_checked() {
    let h = read_history(KNOSSOS_OK).expect("valid history");
    let ops = h.operations().expect("well-formed");
    assert_eq!(ops.len(), 5, "the nemesis op is skipped");
    assert!(ops.iter().all(|o| o.key == SINGLE_REGISTER_KEY));
    assert_eq!(
        ops[2].op,
        Op::Cas {
            expected: Some("1".into()),
            new: Some("2".into())
        }
    );
    assert!(!ops[3].mismatch, "a plain :fail is not a mismatch");
    assert!(linearizability::check(&h)
        .expect("checks")
        .is_linearizable());
    // The last read returning 1 again after the cas to 2 completed is a stale read.
    let stale = KNOSSOS_OK.replace(
        ":type :ok, :f :read, :value 2",
        ":type :ok, :f :read, :value 1",
    );
    let report = linearizability::check(&read_history(&stale).expect("valid")).expect("checks");
    assert_eq!(report.verdict(), Verdict::NotLinearizable);
}

#[test]
fn independent_keys_and_our_own_export_round_trip() {
    let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clock = std::sync::Arc::clone(&now);
    let rec = Recorder::with_clock(std::sync::Arc::new(move || {
        clock.fetch_add(10, std::sync::atomic::Ordering::SeqCst)
    }));
    let w = rec.invoke(0, "x", Op::Write("a b".into()));
    rec.ok(w, None, Some(4), None);
    let c = rec.invoke(
        1,
        "x",
        Op::Cas {
            expected: Some("a b".into()),
            new: None,
        },
    );
    rec.ok(c, None, Some(9), None);
    let m = rec.invoke(
        2,
        "y",
        Op::Cas {
            expected: None,
            new: Some("q".into()),
        },
    );
    let d = rec.invoke(0, "y", Op::Delete);
    rec.mismatch(m);
    rec.info(d);
    let r = rec.invoke(1, "x", Op::Read);
    rec.ok(r, None, None, None);
    let h = rec.history();
    let back = read_history(&h.to_edn()).expect("our export reads back");
    assert_eq!(back.operations().unwrap(), h.operations().unwrap());
}

#[test]
fn jepsen_vector_histories_are_read() {
    let text = "[{:process 0, :type :invoke, :f :write, :value [:k 5]}\n {:process 0, :type :ok, :f :write, :value [:k 5]}\n {:process 1, :type :invoke, :f :read, :value [:k nil]}\n {:process 1, :type :ok, :f :read, :value [:k 5]}]";
    let h = read_history(text).expect("valid");
    let ops = h.operations().expect("well-formed");
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0].key, ":k");
    assert_eq!(ops[1].read.as_deref(), Some("5"));
    assert_eq!(ops[1].outcome, Outcome::Ok);
    // Without :time, the order of events stands in for it.
    assert!(ops[0].complete_ns < Some(ops[1].invoke_ns));
}

#[test]
fn bad_operations_name_their_line() {
    for (text, line, words) in [
        (
            "{:process 0, :type :invoke, :f :txn, :value []}",
            1,
            "unsupported :f :txn",
        ),
        (
            "{:process 0, :type :invoke, :f :read, :value nil}\n{:process 1, :type :ok, :f :read, :value 1}",
            2,
            "no operation in flight",
        ),
        (
            "{:process 0, :type :invoke, :f :read}\n{:process 0, :type :invoke, :f :read}",
            2,
            "still in flight",
        ),
        (
            "{:process 0, :type :invoke, :f :cas, :value 3}",
            1,
            "[expected new]",
        ),
        ("{:process 0, :type :begin, :f :read}", 1, "unknown :type"),
        ("{:type :invoke, :f :read}", 1, "without :process"),
        ("[1 2]", 1, "expected an operation map"),
    ] {
        match read_history(text) {
            Err(HistoryError::Invalid { line: l, reason }) => {
                assert_eq!(l, line, "{text:?}: {reason}");
                assert!(reason.contains(words), "{text:?}: {reason}");
            }
            other => panic!("{text:?}: expected an error, got {other:?}"),
        }
    }
}
