//! The summary table shown after a run: per mode and schedule, availability, anomalies,
//! acknowledged writes lost and time to converge, rendered as aligned text.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::history::{History, HistoryError, Outcome};

/// One row of the summary: one mode under one nemesis schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Keyspace mode, e.g. "cp" or "ap".
    pub mode: String,
    /// Nemesis schedule name.
    pub schedule: String,
    /// Requests issued.
    pub requests: usize,
    /// Requests that returned ok (reads and writes).
    pub served: usize,
    /// Anomalies found by the checkers (consistency violations).
    pub anomalies: usize,
    /// Acknowledged writes lost.
    pub lost_writes: usize,
    /// Time from heal to convergence; None = not measured or never converged.
    pub converge_ms: Option<u64>,
}

impl SummaryRow {
    /// Percentage of requests served (100 when there were none).
    pub fn availability_pct(&self) -> f64 {
        if self.requests == 0 {
            100.0
        } else {
            100.0 * self.served as f64 / self.requests as f64
        }
    }
}

/// Requests issued and requests served (ok) in a history.
pub fn availability(history: &History) -> Result<(usize, usize), HistoryError> {
    let ops = history.operations()?;
    let served = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
    Ok((ops.len(), served))
}

const HEADERS: [&str; 6] = [
    "mode",
    "schedule",
    "availability",
    "anomalies",
    "lost writes",
    "converge",
];

/// Renders rows as an aligned text table with a header line and a rule under it.
pub fn render_table(rows: &[SummaryRow]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.mode.clone(),
                r.schedule.clone(),
                format!("{:.1}% ({}/{})", r.availability_pct(), r.served, r.requests),
                r.anomalies.to_string(),
                r.lost_writes.to_string(),
                r.converge_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        let parts: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            // Text columns align left, numbers right.
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, &HEADERS);
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    let _ = writeln!(out, "{}", rule.join("  "));
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &refs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = [
            SummaryRow {
                mode: "cp".into(),
                schedule: "majority-minority".into(),
                requests: 1000,
                served: 612,
                anomalies: 0,
                lost_writes: 0,
                converge_ms: None,
            },
            SummaryRow {
                mode: "ap".into(),
                schedule: "majority-minority".into(),
                requests: 1000,
                served: 1000,
                anomalies: 3,
                lost_writes: 12,
                converge_ms: Some(1350),
            },
        ];
        let expected = "\
mode  schedule                 availability  anomalies  lost writes  converge
----  -----------------  ------------------  ---------  -----------  --------
cp    majority-minority    61.2% (612/1000)          0            0         -
ap    majority-minority  100.0% (1000/1000)          3           12   1350 ms
";
        assert_eq!(render_table(&rows), expected);
    }
}
