//! History files as `kv check` reads them: the project's JSON lines (client events, plus the AP
//! check's inputs as extra records) or Jepsen's EDN, the format told or guessed from the content,
//! and every problem reported with the line it is on.
//!
//! JSON-lines records, one per line, told apart by `"type"`:
//! - `invoke` / `ok` / `fail` / `info`: a client event ([`Event`]);
//! - `replica`: a final read of one replica ([`ReplicaRead`]);
//! - `convergence`: one convergence poll after the heal ([`ConvergenceSample`]);
//! - `heal`: when the last fault healed and how long replicas may disagree after it
//!   (`time_ns`, `convergence_deadline_ns`).

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ap::{ApInput, ConvergenceSample, ReplicaRead};
use crate::history::{Event, EventType, History, HistoryError, OpId};

/// Format of a history file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The project's JSON lines.
    Jsonl,
    /// Jepsen's EDN (Knossos / Elle histories).
    Edn,
}

impl Format {
    /// Guesses from the first non-blank character: `{"` starts JSON, anything else EDN.
    pub fn guess(text: &str) -> Format {
        let body = text.trim_start();
        let json = body.starts_with('{') && body[1..].trim_start().starts_with('"');
        if json || body.is_empty() {
            Format::Jsonl
        } else {
            Format::Edn
        }
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Edn => "edn",
        }
    }
}

/// A history file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryFile {
    /// The client events.
    pub history: History,
    /// The AP check's inputs, when the file has final replica reads (JSON lines only).
    pub ap: Option<ApInput>,
}

/// The `heal` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Heal {
    time_ns: u64,
    #[serde(default)]
    convergence_deadline_ns: u64,
}

fn invalid(line: usize, reason: impl Into<String>) -> HistoryError {
    HistoryError::Invalid {
        line,
        reason: reason.into(),
    }
}

/// Reads JSON lines: events and AP records. Blank lines are skipped.
pub fn read_jsonl<R: BufRead>(input: R) -> Result<HistoryFile, HistoryError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut ap = ApInput::default();
    let mut has_ap = false;
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
            line: number,
            source,
        })?;
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        let json = |source| HistoryError::Json {
            line: number,
            source,
        };
        match kind {
            "invoke" | "ok" | "fail" | "info" => {
                events.push(serde_json::from_value::<Event>(value).map_err(json)?);
                lines.push(number);
            }
            "replica" => {
                ap.final_reads
                    .push(serde_json::from_value::<ReplicaRead>(value).map_err(json)?);
                has_ap = true;
            }
            "convergence" => {
                ap.samples
                    .push(serde_json::from_value::<ConvergenceSample>(value).map_err(json)?);
            }
            "heal" => {
                let heal: Heal = serde_json::from_value(value).map_err(json)?;
                ap.heal_ns = heal.time_ns;
                ap.convergence_deadline_ns = heal.convergence_deadline_ns;
            }
            "" => return Err(invalid(number, "record without a \"type\"")),
            other => {
                return Err(invalid(
                    number,
                    format!("unknown record type {other:?} (expected invoke, ok, fail, info, replica, convergence or heal)"),
                ))
            }
        }
    }
    let history = History { events };
    validate(&history, &lines)?;
    Ok(HistoryFile {
        history,
        ap: has_ap.then_some(ap),
    })
}

/// Pairs the events as the checkers will, and names the line of the first problem.
fn validate(history: &History, lines: &[usize]) -> Result<(), HistoryError> {
    let Err(e) = history.operations() else {
        return Ok(());
    };
    let line_of = |id: OpId, invoke: bool, nth: usize| {
        history
            .events
            .iter()
            .zip(lines)
            .filter(|(ev, _)| ev.id == id && (ev.kind == EventType::Invoke) == invoke)
            .nth(nth)
            .map(|(_, &line)| line)
    };
    let located = match &e {
        HistoryError::DuplicateInvoke(id) => line_of(*id, true, 1),
        HistoryError::UnmatchedCompletion(id) => line_of(*id, false, 0),
        HistoryError::Mismatch(id, why) if *why == "completed twice" => line_of(*id, false, 1),
        HistoryError::Mismatch(id, _) => line_of(*id, false, 0),
        HistoryError::MissingValue(id, _) => line_of(*id, true, 0),
        _ => None,
    };
    Err(match located {
        Some(line) => invalid(line, e.to_string()),
        None => e,
    })
}

/// Reads a history in `format` (guessed from the content when None).
pub fn parse(text: &str, format: Option<Format>) -> Result<(HistoryFile, Format), HistoryError> {
    let format = format.unwrap_or_else(|| Format::guess(text));
    let file = match format {
        Format::Jsonl => read_jsonl(text.as_bytes())?,
        Format::Edn => HistoryFile {
            history: crate::edn::read_history(text)?,
            ap: None,
        },
    };
    Ok((file, format))
}

/// Loads a history file (see [`parse`]).
pub fn load(path: &Path, format: Option<Format>) -> Result<(HistoryFile, Format), HistoryError> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        invalid(line, "not UTF-8 text")
    })?;
    parse(&text, format)
}

/// `v` as a JSON object with `"type": kind` added.
fn tagged<T: Serialize>(kind: &str, v: &T) -> Result<Value, HistoryError> {
    let mut value = serde_json::to_value(v).map_err(std::io::Error::from)?;
    if let Value::Object(map) = &mut value {
        map.insert("type".into(), Value::from(kind));
    }
    Ok(value)
}

/// Writes the AP check's inputs as `replica`, `convergence` and `heal` records.
pub fn write_ap_jsonl<W: Write>(ap: &ApInput, mut out: W) -> Result<(), HistoryError> {
    let heal = Heal {
        time_ns: ap.heal_ns,
        convergence_deadline_ns: ap.convergence_deadline_ns,
    };
    let records = ap
        .final_reads
        .iter()
        .map(|r| tagged("replica", r))
        .chain(ap.samples.iter().map(|s| tagged("convergence", s)))
        .chain(std::iter::once(tagged("heal", &heal)));
    for record in records {
        serde_json::to_writer(&mut out, &record?).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Saves a history, and the AP check's inputs when given, as JSON lines at `path`.
pub fn save(path: &Path, history: &History, ap: Option<&ApInput>) -> Result<(), HistoryError> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    history.write_jsonl(&mut out)?;
    if let Some(ap) = ap {
        write_ap_jsonl(ap, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
