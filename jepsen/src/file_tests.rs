//! Tests of `file.rs`: format guessing, the AP records, and errors that name their line.

use super::*;
use crate::ap::Record;
use crate::history::{Op, Recorder};

fn history() -> History {
    let rec = Recorder::with_clock(std::sync::Arc::new(|| 5));
    let w = rec.invoke(0, "k", Op::Write("a".into()));
    rec.ok(w, None, None, Some((1, 0, 2)));
    rec.history()
}

fn ap_input() -> ApInput {
    ApInput {
        final_reads: vec![
            ReplicaRead {
                node: 0,
                key: "k".into(),
                record: Some(Record {
                    value: Some("a".into()),
                    timestamp: (1, 0, 2),
                }),
                time_ns: 50,
            },
            ReplicaRead {
                node: 1,
                key: "k".into(),
                record: None,
                time_ns: 51,
            },
        ],
        samples: vec![ConvergenceSample {
            time_ns: 40,
            converged: true,
        }],
        heal_ns: 30,
        convergence_deadline_ns: 15,
    }
}

#[test]
fn formats_are_guessed_from_the_content() {
    assert_eq!(Format::guess("  {\"id\":0}"), Format::Jsonl);
    assert_eq!(Format::guess("{:type :invoke}"), Format::Edn);
    assert_eq!(Format::guess("[{:type :invoke}]"), Format::Edn);
    assert_eq!(Format::guess(""), Format::Jsonl);
}

#[test]
fn history_and_ap_records_round_trip() {
    let path = std::env::temp_dir().join(format!("jepsen-file-{}.jsonl", std::process::id()));
    save(&path, &history(), Some(&ap_input())).expect("save");
    let loaded = load(&path, None);
    let _ = std::fs::remove_file(&path);
    let (file, format) = loaded.expect("load");
    assert_eq!(format, Format::Jsonl);
    assert_eq!(file.history, history());
    assert_eq!(file.ap, Some(ap_input()));
    // Without AP records there is no AP input.
    let mut buf = Vec::new();
    history().write_jsonl(&mut buf).expect("write");
    assert_eq!(read_jsonl(&buf[..]).expect("read").ap, None);
}

#[test]
fn problems_name_their_line() {
    let invoke = r#"{"id":0,"type":"invoke","process":0,"key":"k","f":"read","time_ns":0}"#;
    let ok = r#"{"id":0,"type":"ok","process":0,"key":"k","f":"read","time_ns":1}"#;
    let cases = [
        (
            format!("{invoke}\n\n{{\"type\":\"bogus\"}}"),
            3,
            "unknown record type",
        ),
        (format!("{invoke}\n{{\"x\":1}}"), 2, "without a \"type\""),
        (format!("{invoke}\n{ok}\n{ok}"), 3, "completed twice"),
        (format!("{invoke}\n{invoke}"), 2, "invoked twice"),
        (ok.to_string(), 1, "without a matching invoke"),
        (
            format!(
                "{invoke}\n{}",
                ok.replace("\"ok\"", "\"fail\"")
                    .replace("}", ",\"mismatch\":true}")
            ),
            2,
            "mismatch on a non-failed cas",
        ),
    ];
    for (text, line, words) in cases {
        match parse(&text, None) {
            Err(HistoryError::Invalid { line: l, reason }) => {
                assert_eq!(l, line, "{text}: {reason}");
                assert!(reason.contains(words), "{text}: {reason}");
            }
            other => panic!("{text}: expected an error, got {other:?}"),
        }
    }
    match parse(&format!("{invoke}\n{{\"type\":\"ok\",\"id\":\"x\"}}"), None) {
        Err(HistoryError::Json { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

#[test]
fn edn_is_read_when_told_or_guessed() {
    let text = "{:process 0, :type :invoke, :f :read, :value nil}\n{:process 0, :type :ok, :f :read, :value nil}";
    let (file, format) = parse(text, None).expect("EDN");
    assert_eq!(format, Format::Edn);
    assert_eq!(file.history.events.len(), 2);
    assert!(parse(text, Some(Format::Jsonl)).is_err());
}
