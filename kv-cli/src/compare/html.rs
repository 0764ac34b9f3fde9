//! `kv compare --report DIR`: one self-contained HTML file (inline SVG and CSS, no script,
//! nothing fetched) with, per mode, a timeline of ok / failed / unknown operations over time
//! and their latency over time, the fault windows shaded on both; the comparison table; links
//! to the history files written beside it; and the command that reproduces the run.

use super::judge::{self, ModeReport, Row};
use super::{history_file, Comparison, FaultSpan};
use jepsen::history::Outcome;
use std::fmt::Write as _;

/// Buckets of a timeline.
const BUCKETS: u64 = 60;
/// Points drawn at most per latency plot (every k-th operation beyond that).
const MAX_POINTS: usize = 2_000;
/// Plot size, px.
const WIDTH: f64 = 720.0;
/// See [`WIDTH`].
const HEIGHT: f64 = 160.0;
/// Left margin for the axis labels, px.
const LEFT: f64 = 48.0;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x_of(t_ns: u64, end_ns: u64) -> f64 {
    LEFT + (WIDTH - LEFT) * (t_ns.min(end_ns) as f64 / end_ns.max(1) as f64)
}

fn shade(out: &mut String, spans: &[FaultSpan], end_ns: u64) {
    for s in spans {
        let (x0, x1) = (x_of(s.from_ns, end_ns), x_of(s.to_ns, end_ns));
        let _ = write!(
            out,
            r##"<rect class="fault" x="{x0:.1}" y="0" width="{:.1}" height="{HEIGHT}" fill="#999" fill-opacity="0.25"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            escape(&s.label)
        );
    }
}

fn axis(out: &mut String, end_ns: u64, y_label: &str) {
    let secs = end_ns as f64 / 1e9;
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#333"/><text x="{LEFT}" y="{}" font-size="10">0 s</text><text x="{}" y="{}" font-size="10" text-anchor="end">{secs:.1} s</text><text x="2" y="10" font-size="10">{}</text>"##,
        HEIGHT + 12.0,
        WIDTH,
        HEIGHT + 12.0,
        escape(y_label)
    );
}

/// The timeline of one mode: per time bucket (by invoke time), stacked bars of ok (green),
/// failed (red) and unknown (orange) operations.
fn timeline(
    report: &ModeReport,
    ops: &[jepsen::Operation],
    spans: &[FaultSpan],
    end_ns: u64,
) -> String {
    let bucket_ns = (end_ns / BUCKETS).max(1);
    let mut counts = vec![[0usize; 3]; BUCKETS as usize + 1];
    for o in ops {
        let b = ((o.invoke_ns / bucket_ns) as usize).min(BUCKETS as usize);
        let i = match judge::served_as(o) {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
        };
        counts[b][i] += 1;
    }
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    let mode = report.mode.name();
    let mut out = format!(
        r#"<svg id="timeline-{mode}" class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" viewBox="0 0 {WIDTH} {}">"#,
        HEIGHT + 16.0,
        HEIGHT + 16.0
    );
    shade(&mut out, spans, end_ns);
    let bar_w = (WIDTH - LEFT) / BUCKETS as f64;
    for (b, c) in counts.iter().enumerate() {
        let mut y = HEIGHT;
        for (i, color, name) in [
            (0, "#2a2", "ok"),
            (1, "#d22", "failed"),
            (2, "#e90", "unknown"),
        ] {
            if c[i] == 0 {
                continue;
            }
            let h = HEIGHT * c[i] as f64 / max as f64;
            y -= h;
            let _ = write!(
                out,
                r#"<rect class="{name}" x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{} {name}</title></rect>"#,
                LEFT + b as f64 * bar_w,
                (bar_w - 1.0).max(1.0),
                c[i]
            );
        }
    }
    axis(
        &mut out,
        end_ns,
        &format!("ops per {} ms", bucket_ns / 1_000_000),
    );
    out.push_str("</svg>");
    out
}

/// Latency of one mode over time: a point per operation at its invoke time (ok green, failed
/// red, unknown orange), linear scale up to the slowest.
fn latency(
    report: &ModeReport,
    ops: &[jepsen::Operation],
    spans: &[FaultSpan],
    end_ns: u64,
) -> String {
    let points: Vec<(u64, u64, Outcome)> = ops
        .iter()
        .filter_map(|o| {
            Some((
                o.invoke_ns,
                o.complete_ns?.saturating_sub(o.invoke_ns),
                judge::served_as(o),
            ))
        })
        .collect();
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let max = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
    let mode = report.mode.name();
    let mut out = format!(
        r#"<svg id="latency-{mode}" class="latency" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" viewBox="0 0 {WIDTH} {}">"#,
        HEIGHT + 16.0,
        HEIGHT + 16.0
    );
    shade(&mut out, spans, end_ns);
    for (t, l, outcome) in points.iter().step_by(step) {
        let color = match outcome {
            Outcome::Ok => "#2a2",
            Outcome::Fail => "#d22",
            Outcome::Info => "#e90",
        };
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{color}"/>"#,
            x_of(*t, end_ns),
            HEIGHT - HEIGHT * (*l as f64 / max as f64)
        );
    }
    axis(
        &mut out,
        end_ns,
        &format!("latency, up to {:.1} ms", max as f64 / 1e6),
    );
    out.push_str("</svg>");
    out
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(r#"<table id="summary">"#);
    for (i, (label, cells)) in rows.iter().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        let _ = write!(out, "<tr><th>{}</th>", escape(label));
        for c in cells {
            let _ = write!(out, "<{tag}>{}</{tag}>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// The whole report. `command` reproduces the run; the histories are expected beside it
/// under [`history_file`] names.
pub fn render(cmp: &Comparison, reports: &[ModeReport], command: &str) -> String {
    let end_ns = cmp
        .runs
        .iter()
        .flat_map(|r| judge::workload_ops(&r.history, r.mode))
        .filter_map(|o| o.complete_ns)
        .max()
        .unwrap_or(cmp.workload_end_ns)
        .max(1);
    let rows = judge::rows(reports, &cmp.minority);
    let mut out = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>kv compare</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap}.legend span{margin-right:1em}</style></head><body>"#,
    );
    out.push_str("<h1>kv compare: CP and AP under the same faults</h1>");
    let _ = write!(
        out,
        "<p>Where: {}. Faults: {}.</p>",
        escape(&cmp.cluster),
        escape(
            &cmp.spans
                .iter()
                .map(|s| format!(
                    "{} from {:.1} s to {:.1} s",
                    s.label,
                    s.from_ns as f64 / 1e9,
                    s.to_ns as f64 / 1e9
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )
    );
    let _ = write!(
        out,
        r#"<h2>Reproduce</h2><pre id="command">{}</pre>"#,
        escape(command)
    );
    let _ = write!(out, "<h2>Summary</h2>{}", table(&rows));
    out.push_str(r#"<p class="legend"><span style="color:#2a2">■ ok</span><span style="color:#d22">■ failed</span><span style="color:#e90">■ unknown outcome</span><span style="color:#999">■ fault in place</span></p>"#);
    for (run, report) in cmp.runs.iter().zip(reports) {
        let ops = judge::workload_ops(&run.history, run.mode);
        let mode = run.mode.name();
        let file = history_file(run.mode);
        let _ = write!(
            out,
            r#"<h2>{mode}</h2><h3>Operations over time</h3>{}<h3>Latency over time</h3>{}<p>History: <a href="{file}">{file}</a> (JSON lines; check it with <code>kv check {file} --model {mode}</code>)</p>"#,
            timeline(report, &ops, &cmp.spans, end_ns),
            latency(report, &ops, &cmp.spans, end_ns),
        );
        if !report.checked.examples.is_empty() {
            let _ = write!(
                out,
                "<h3>Anomalies</h3><pre>{}</pre>",
                escape(&report.checked.examples.join("\n\n"))
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}
