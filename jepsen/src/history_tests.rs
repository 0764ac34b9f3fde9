//! History recording tests: event order, outcomes, JSON lines and EDN round trips.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

fn recorded() -> History {
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let rec = Recorder::with_clock(Arc::new(move || clock.fetch_add(10, Ordering::SeqCst)));
    let w = rec.invoke(0, "k", Op::Write("a \"quoted\"".into()));
    let r = rec.invoke(1, "k", Op::Read);
    rec.ok(w, None, Some(7), None);
    rec.ok(r, Some("a \"quoted\"".into()), Some(7), Some((5, 1, 2)));
    let c = rec.invoke(
        0,
        "k",
        Op::Cas {
            expected: None,
            new: Some("b".into()),
        },
    );
    rec.fail(c);
    let d = rec.invoke(2, "k2", Op::Delete);
    rec.info(d);
    let _pending = rec.clone().invoke(3, "k", Op::Write("c".into()));
    rec.history()
}

#[test]
fn jsonl_round_trip() {
    let h = recorded();
    let mut buf = Vec::new();
    h.write_jsonl(&mut buf).expect("write to memory");
    let back = History::read_jsonl(&buf[..]).expect("read back");
    assert_eq!(back, h);
    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), h.events.len());
}

#[test]
fn save_and_load_file() {
    let h = recorded();
    let path = std::env::temp_dir().join(format!("jepsen-history-{}.jsonl", std::process::id()));
    h.save(&path).expect("save");
    let back = History::load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(back.expect("load"), h);
    assert!(matches!(History::load(&path), Err(HistoryError::Io(_))));
}

#[test]
fn bad_jsonl_is_an_error_naming_the_line() {
    let input = b"{\"id\":0,\"type\":\"invoke\",\"process\":0,\"key\":\"k\",\"f\":\"read\",\"time_ns\":0}\n\nnot json\n";
    match History::read_jsonl(&input[..]) {
        Err(HistoryError::Json { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

#[test]
fn operations_pair_and_validate() {
    let ops = recorded().operations().expect("well-formed");
    assert_eq!(ops.len(), 5);
    assert_eq!(ops[1].read.as_deref(), Some("a \"quoted\""));
    assert_eq!(ops[1].timestamp, Some((5, 1, 2)));
    assert_eq!(ops[2].outcome, Outcome::Fail);
    assert_eq!(ops[3].outcome, Outcome::Info);
    assert_eq!((ops[4].outcome, ops[4].complete_ns), (Outcome::Info, None));
    let mut h = recorded();
    h.events.remove(0);
    assert!(matches!(
        h.operations(),
        Err(HistoryError::UnmatchedCompletion(0))
    ));
    let mut h = recorded();
    let dup = h.events[0].clone();
    h.events.push(dup);
    assert!(matches!(
        h.operations(),
        Err(HistoryError::DuplicateInvoke(0))
    ));
}

#[test]
fn edn_export_snapshot() {
    let expected = r#"{:type :invoke, :f :write, :value ["k" "a \"quoted\""], :process 0, :time 0, :index 0}
{:type :invoke, :f :read, :value ["k" nil], :process 1, :time 10, :index 1}
{:type :ok, :f :write, :value ["k" "a \"quoted\""], :process 0, :time 20, :index 2, :revision 7}
{:type :ok, :f :read, :value ["k" "a \"quoted\""], :process 1, :time 30, :index 3, :revision 7}
{:type :invoke, :f :cas, :value ["k" [nil "b"]], :process 0, :time 40, :index 4}
{:type :fail, :f :cas, :value ["k" [nil "b"]], :process 0, :time 50, :index 5}
{:type :invoke, :f :write, :value ["k2" nil], :process 2, :time 60, :index 6}
{:type :info, :f :write, :value ["k2" nil], :process 2, :time 70, :index 7}
{:type :invoke, :f :write, :value ["k" "c"], :process 3, :time 80, :index 8}
"#;
    assert_eq!(recorded().to_edn(), expected);
}
