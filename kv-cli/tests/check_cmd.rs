//! `kv check HISTORY` as users run it (issue 11, items 4 and 5): verdicts and exit codes for
//! JSON-lines and Jepsen EDN histories, the violation window and the writes stuck reads
//! expected, undecided searches, AP convergence from final replica reads, and bad input named
//! by its line — in text and in `-o json`.

mod common;

use jepsen::ap::{ApInput, ConvergenceSample, Record, ReplicaRead};
use jepsen::history::{EventType, History, OpKind};
use jepsen::simulate::{inject_stale_read, register_history, strip_revisions, SimConfig};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// One hot key, as a CP keyspace answers it, at `processes` concurrent clients.
fn cp_history(processes: usize, ops: usize) -> History {
    register_history(&SimConfig {
        seed: 5,
        processes,
        keys: 1,
        ops,
        info_pct: 5,
        revisions: true,
        mismatches: true,
        cas_deletes: false,
    })
}

fn save(dir: &Path, name: &str, h: &History, ap: Option<&ApInput>) -> PathBuf {
    let path = dir.join(name);
    jepsen::file::save(&path, h, ap).expect("saving a history");
    path
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a file");
    path
}

fn kv(dir: &Path, args: &[&str]) -> Output {
    common::kv(dir, args)
}

fn check(dir: &Path, path: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check", path.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    kv(dir, &args)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(out)))
}

#[test]
fn a_linearizable_hot_key_history_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "ok.jsonl", &cp_history(32, 2_000), None);
    let out = check(dir.path(), &path, &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("model cp"), "{text}");
    assert!(text.contains("linearizable: all 1 keys"), "{text}");
    let out = check(dir.path(), &path, &["-o", "json"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "linearizable");
    assert_eq!(v["exit"], 0);
    assert_eq!(v["format"], "jsonl");
    assert!(
        v["writes_ordered_by_revision"].as_u64().unwrap() > 100,
        "{v}"
    );
    assert_eq!(v["violations"], serde_json::json!([]));
}

#[test]
fn a_stale_read_exits_1_and_shows_the_window_and_the_write_it_expected() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = cp_history(64, 3_000);
    let read = inject_stale_read(&mut h).expect("a late read");
    let first = h
        .events
        .iter()
        .find(|e| e.kind == EventType::Ok && e.f == OpKind::Write)
        .map(|e| e.id)
        .unwrap();
    let path = save(dir.path(), "stale.jsonl", &h, None);
    let out = check(dir.path(), &path, &[]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("NOT linearizable: 1 of 1 keys"), "{text}");
    assert!(
        text.contains("smallest window that cannot be linearized"),
        "{text}"
    );
    assert!(text.contains(&format!("read #{read} returned")), "{text}");
    assert!(
        text.contains(&format!("expected the value of #{first} ")),
        "{text}"
    );

    let out = check(dir.path(), &path, &["-o", "json"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "not_linearizable");
    let violation = &v["violations"][0];
    assert_eq!(violation["stuck"][0]["operation"]["id"], read);
    assert_eq!(violation["stuck"][0]["expected_write"]["id"], first);
    let window = violation["window"]["operations"].as_array().unwrap();
    assert!(window.iter().any(|o| o["id"] == read), "{violation}");
    assert!(window.len() < 200, "{}", window.len());
}

#[test]
fn a_search_cut_off_is_undecided_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let h = strip_revisions(&cp_history(32, 2_000));
    let path = save(dir.path(), "hard.jsonl", &h, None);
    let out = check(dir.path(), &path, &["--max-states", "10"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("undecided: no violation found"),
        "{}",
        show(&out)
    );
    let out = check(dir.path(), &path, &["--max-states", "10", "-o", "json"]);
    assert_eq!(code(&out), 1);
    let v = json(&out);
    assert_eq!(v["verdict"], "undecided");
    assert_eq!(v["undecided_keys"], serde_json::json!(["k0"]));
}

const KNOSSOS: &str = r#"{:process 0, :type :invoke, :f :write, :value 1, :time 0}
{:process 1, :type :invoke, :f :read, :value nil, :time 1}
{:process 0, :type :ok, :f :write, :value 1, :time 2}
{:process 1, :type :ok, :f :read, :value 1, :time 3}
{:process :nemesis, :type :info, :f :start, :value nil, :time 4}
{:process 2, :type :invoke, :f :cas, :value [1 2], :time 5}
{:process 2, :type :ok, :f :cas, :value [1 2], :time 6}
{:process 1, :type :invoke, :f :read, :value nil, :time 9}
{:process 1, :type :ok, :f :read, :value 2, :time 10}
"#;

#[test]
fn jepsen_edn_histories_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.edn", KNOSSOS);
    let out = check(dir.path(), &good, &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("(edn)"), "{}", show(&out));
    let stale = KNOSSOS.replace(":ok, :f :read, :value 2", ":ok, :f :read, :value 1");
    let bad = write(dir.path(), "bad.txt", &stale);
    let out = check(dir.path(), &bad, &["--input", "edn", "-o", "json"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "not_linearizable");
    assert_eq!(v["violations"][0]["key"], "register");
    // Our own histories export to EDN and check the same.
    let h = cp_history(8, 500);
    let edn = write(dir.path(), "ours.edn", &h.to_edn());
    let out = check(dir.path(), &edn, &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
}

#[test]
fn bad_input_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let invoke = r#"{"id":0,"type":"invoke","process":0,"key":"k","f":"read","time_ns":0}"#;
    let broken = write(
        dir.path(),
        "broken.jsonl",
        &format!("{invoke}\n\n{{not json\n"),
    );
    let out = check(dir.path(), &broken, &[]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jsonl line 3"), "{err}");
    let out = check(dir.path(), &broken, &["-o", "json"]);
    assert_eq!(code(&out), 2);
    let e: Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
    assert_eq!(e["error"]["code"], "bad_input");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("line 3"),
        "{e}"
    );

    let twice = write(dir.path(), "twice.jsonl", &format!("{invoke}\n{invoke}\n"));
    let out = check(dir.path(), &twice, &[]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: operation 0 invoked twice"), "{err}");

    let edn = write(
        dir.path(),
        "txn.edn",
        "{:process 0, :type :invoke, :f :txn, :value []}",
    );
    let out = check(dir.path(), &edn, &[]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: unsupported :f :txn"));

    let out = check(dir.path(), &dir.path().join("missing.jsonl"), &[]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    let empty = write(dir.path(), "empty.jsonl", "");
    assert_eq!(code(&check(dir.path(), &empty, &[])), 2);
}

fn ap_history(lost: bool) -> (History, ApInput) {
    let rec = jepsen::Recorder::with_clock(std::sync::Arc::new({
        let t = std::sync::atomic::AtomicU64::new(0);
        move || t.fetch_add(1_000_000, std::sync::atomic::Ordering::SeqCst)
    }));
    let a = rec.invoke(0, "cart", jepsen::Op::Write("a".into()));
    rec.ok(a, None, None, Some((10, 0, 1)));
    let b = rec.invoke(1, "cart", jepsen::Op::Write("b".into()));
    rec.ok(b, None, None, Some((20, 0, 2)));
    // After a loss, replicas hold only the older write.
    let kept = if lost { ("a", 10) } else { ("b", 20) };
    let final_reads = (0..3)
        .map(|node| ReplicaRead {
            node,
            key: "cart".into(),
            record: Some(Record {
                value: Some(kept.0.into()),
                timestamp: (kept.1, 0, if lost { 1 } else { 2 }),
            }),
            time_ns: 100_000_000,
        })
        .collect();
    let input = ApInput {
        final_reads,
        samples: vec![ConvergenceSample {
            time_ns: 60_000_000,
            converged: true,
        }],
        heal_ns: 50_000_000,
        convergence_deadline_ns: 40_000_000,
    };
    (rec.history(), input)
}

#[test]
fn ap_histories_with_final_replica_reads_are_checked_for_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let (h, input) = ap_history(false);
    let good = save(dir.path(), "ap.jsonl", &h, Some(&input));
    let out = check(dir.path(), &good, &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("model ap, 3 final replica reads"), "{text}");
    assert!(text.contains("converged 10 ms after the heal"), "{text}");
    let (h, input) = ap_history(true);
    let lost = save(dir.path(), "lost.jsonl", &h, Some(&input));
    let out = check(dir.path(), &lost, &["-o", "json"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let v = json(&out);
    assert_eq!(
        (v["model"].as_str(), v["verdict"].as_str()),
        (Some("ap"), Some("anomalies"))
    );
    assert_eq!(v["report"]["lost_writes"], 1);
    // A history without replica reads cannot be checked as AP.
    let (h, _) = ap_history(false);
    let plain = save(dir.path(), "plain.jsonl", &h, None);
    let out = check(dir.path(), &plain, &["--model", "ap"]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no final replica reads"));
}

#[test]
fn the_history_can_come_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    cp_history(4, 200).write_jsonl(&mut text).unwrap();
    let mut child = common::kv_command(dir.path(), &["check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kv");
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", show(&out));
}
