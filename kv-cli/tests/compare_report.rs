//! `kv compare --report DIR -o json` end to end on real processes (a short run, part of the
//! test command): CP refuses the cut-off node and stays linearizable, AP serves it and
//! converges, the histories beside the report pass `kv check`, and the HTML report is
//! self-contained, has a timeline and a latency plot per mode with the fault shaded, and a
//! table whose numbers are the JSON output's.

mod common;

use common::*;
use serde_json::Value;

/// The `<svg id="ID" ...>...</svg>` element of `html`; fails the test when it is missing.
fn svg<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!(r#"<svg id="{id}""#))
        .unwrap_or_else(|| panic!("no <svg id={id:?}> in the report"));
    let len = html[start..]
        .find("</svg>")
        .unwrap_or_else(|| panic!("<svg id={id:?}> is not closed"));
    &html[start..start + len + "</svg>".len()]
}

/// The table's rows: label, then one cell per mode (HTML entities left as they are).
fn table_rows(html: &str) -> Vec<Vec<String>> {
    let start = html.find(r#"<table id="summary">"#).expect("summary table");
    let end = start + html[start..].find("</table>").expect("table closed");
    html[start..end]
        .split("<tr>")
        .skip(1)
        // Text nodes sit between a tag's '>' and the next '<': every other part.
        .map(|row| {
            row.split(['<', '>'])
                .step_by(2)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], label: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.first().map(|l| l.trim()) == Some(label))
        .map(|r| &r[1..])
        .unwrap_or_else(|| panic!("no row {label:?} in {rows:?}"))
}

#[test]
fn a_short_compare_writes_a_report_whose_table_matches_its_json() {
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let out_dir = tmp.path().join("out");
    let out = kv_command(
        tmp.path(),
        &[
            "compare",
            "--duration",
            "6s",
            "--clients",
            "3",
            "--seed",
            "5",
            "--report",
            out_dir.to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .env("TMPDIR", &tmpdir)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "kv compare: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    println!("{json:#}");
    let (cp, ap) = (&json["modes"]["cp"], &json["modes"]["ap"]);

    // What users come for: CP refuses the cut-off node and stays linearizable; AP serves it,
    // loses nothing beyond last-write-wins, and converges.
    assert_eq!(json["promises_kept"], true);
    assert_eq!(cp["checker"], "linearizable", "{cp}");
    assert_eq!(cp["anomalies"], 0, "{cp}");
    assert_eq!(cp["lost_acknowledged_writes"], 0, "{cp}");
    assert_eq!(ap["lost_acknowledged_writes"], 0, "{ap}");
    let minority = |m: &Value| m["sides"]["minority"]["availability_pct"].as_f64().unwrap();
    assert!(minority(ap) >= 90.0, "AP minority side: {ap}");
    assert!(minority(cp) < 50.0, "CP minority side: {cp}");
    assert!(ap["converge_ms"].is_u64(), "{ap}");
    // The cluster's temporary folder is gone.
    assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0);

    // The histories beside the report are valid and pass the checkers on their own.
    for mode in ["cp", "ap"] {
        let file = out_dir.join(format!("{mode}.jsonl"));
        assert!(file.exists(), "{file:?}");
        let check = kv(
            tmp.path(),
            &[
                "check",
                file.to_str().unwrap(),
                "--model",
                mode,
                "-o",
                "json",
            ],
        );
        assert!(
            check.status.success(),
            "kv check {mode}: {}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }

    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    // Self-contained: nothing to fetch, no script.
    for banned in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!html.contains(banned), "the report contains {banned:?}");
    }
    for mode in ["cp", "ap"] {
        let timeline = svg(&html, &format!("timeline-{mode}"));
        assert!(
            timeline.contains(r#"class="fault""#),
            "{mode}: no fault window shaded"
        );
        assert!(timeline.contains(r#"class="ok""#), "{mode}: no ok bar");
        let latency = svg(&html, &format!("latency-{mode}"));
        assert!(latency.contains("<circle"), "{mode}: no latency point");
        assert!(
            html.contains(&format!(r#"<a href="{mode}.jsonl">"#)),
            "no link to {mode}.jsonl"
        );
    }
    // CP fails requests on the minority side: the timeline shows them.
    assert!(
        svg(&html, "timeline-cp").contains(r#"class="failed""#)
            || svg(&html, "timeline-cp").contains(r#"class="unknown""#)
    );
    // The table says what the JSON says.
    let rows = table_rows(&html);
    let overall = row(&rows, "availability, overall");
    let anomalies = row(&rows, "anomalies found");
    let lost = row(&rows, "acknowledged writes lost");
    for (i, m) in [cp, ap].into_iter().enumerate() {
        let cell = format!("{}/{}", m["served"], m["requests"]);
        assert!(overall[i].contains(&cell), "{overall:?} vs {cell}");
        assert_eq!(anomalies[i], m["anomalies"].to_string(), "{anomalies:?}");
        assert_eq!(
            lost[i],
            m["lost_acknowledged_writes"].to_string(),
            "{lost:?}"
        );
    }
    let lww = row(&rows, "writes overwritten by LWW");
    assert_eq!(lww[1], ap["lww_overwritten"].to_string(), "{lww:?}");
    // The exact command that reproduces the run.
    let command = json["command"].as_str().unwrap();
    assert!(
        command.starts_with("kv compare --seed 5 --duration 6s --clients 3"),
        "{command}"
    );
    assert!(
        html.contains(&format!(r#"<pre id="command">{}</pre>"#, command)),
        "the report lacks the command {command}"
    );
}

#[test]
fn a_partition_that_cannot_heal_in_time_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kv(
        tmp.path(),
        &[
            "compare",
            "--duration",
            "4s",
            "--partition-at",
            "2s",
            "--partition-for",
            "3s",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--partition-for") && err.contains("--duration"),
        "{err}"
    );
    let out = kv(tmp.path(), &["compare", "--duration", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Nothing was started: no cluster folder anywhere under the test's folder.
    assert!(!tmp.path().join(".kv-local").exists());
}

/// `kv compare --sim --seed N` repeats exactly: two runs (two processes, each writing its own
/// report folder) give byte-identical CP and AP histories.
#[test]
fn the_same_seed_in_simulation_writes_the_same_histories() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out_dir = tmp.path().join(name);
        let out = kv(
            tmp.path(),
            &[
                "compare",
                "--sim",
                "--seed",
                "11",
                "--duration",
                "4s",
                "--report",
                out_dir.to_str().unwrap(),
                "-o",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "kv compare --sim: {:?}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    };
    let (a, b) = (run("a"), run("b"));
    for history in ["cp.jsonl", "ap.jsonl"] {
        let first = std::fs::read(a.join(history)).unwrap();
        let second = std::fs::read(b.join(history)).unwrap();
        assert!(
            first.iter().filter(|b| **b == b'\n').count() > 50,
            "{history}: too short to mean anything"
        );
        if first != second {
            let line = first
                .split(|b| *b == b'\n')
                .zip(second.split(|b| *b == b'\n'))
                .position(|(x, y)| x != y);
            panic!("{history} differs between two runs of seed 11, first at line {line:?}");
        }
    }
}
