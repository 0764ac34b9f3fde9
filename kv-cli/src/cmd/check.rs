//! `kv check HISTORY`: checks a history file — the project's JSON lines
//! (docs/partition-suite.md) or a Jepsen EDN register history — for linearizability (`--model
//! cp`) or for AP convergence (`--model ap`, from the file's final replica reads), and prints
//! the verdict and, for a violation, the smallest window of operations that shows it.
//! Exit 0: valid; 1: a violation, or undecided (the output says which); 2: bad input (which
//! line, what is wrong there).

use super::Ctx;
use crate::cli::{CheckArgs, CheckModel, InputFormat};
use crate::output::{CliError, Exit};
use jepsen::ap::{ApInput, ApReport};
use jepsen::file::{self, Format};
use jepsen::history::{HistoryError, Op, Operation, Outcome};
use jepsen::linearizability::{self, LinReport, Verdict, Violation};
use serde_json::{json, Value};
use std::io::Read;

/// `kv check HISTORY`.
pub fn run(ctx: &Ctx, args: &CheckArgs) -> Result<Exit, CliError> {
    let name = args.history.display().to_string();
    let text = read(args)?;
    let format = args.input.map(|f| match f {
        InputFormat::Jsonl => Format::Jsonl,
        InputFormat::Edn => Format::Edn,
    });
    let bad = |e: HistoryError| bad_input(&name, e);
    let (parsed, format) = file::parse(&text, format).map_err(bad)?;
    let ops = parsed.history.operations().map_err(bad)?;
    if ops.is_empty() {
        return Err(CliError::BadInput(format!(
            "{name}: no client operations in it (read as {})",
            format.name()
        )));
    }
    if args.max_states == 0 {
        return Err(CliError::BadInput("--max-states must be at least 1".into()));
    }
    let keys = ops
        .iter()
        .map(|o| o.key.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let model = args.model.unwrap_or(if parsed.ap.is_some() {
        CheckModel::Ap
    } else {
        CheckModel::Cp
    });
    let about = Input {
        name: &name,
        format,
        operations: ops.len(),
        keys,
    };
    match model {
        CheckModel::Cp => cp(ctx, &about, &ops, args.max_states),
        CheckModel::Ap => match &parsed.ap {
            Some(input) => ap(ctx, &about, &ops, input),
            None => Err(CliError::BadInput(format!(
                "{name} has no final replica reads (lines with \"type\": \"replica\"), which the AP check needs; --model cp checks linearizability"
            ))),
        },
    }
}

/// What was read, for the first line of the answer.
struct Input<'a> {
    name: &'a str,
    format: Format,
    operations: usize,
    keys: usize,
}

impl Input<'_> {
    fn json(&self, model: &str) -> serde_json::Map<String, Value> {
        let mut obj = serde_json::Map::new();
        obj.insert("file".into(), self.name.into());
        obj.insert("format".into(), self.format.name().into());
        obj.insert("model".into(), model.into());
        obj.insert("operations".into(), self.operations.into());
        obj.insert("keys".into(), self.keys.into());
        obj
    }

    fn text(&self, model: &str) -> String {
        format!(
            "{}: {} operations on {} keys ({}), model {model}",
            self.name,
            self.operations,
            self.keys,
            self.format.name()
        )
    }
}

fn read(args: &CheckArgs) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let result = if args.history.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(&args.history).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    let name = args.history.display();
    result.map_err(|e| CliError::BadInput(format!("cannot read {name}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        CliError::BadInput(format!("{name} line {line}: not UTF-8 text"))
    })
}

fn bad_input(name: &str, e: HistoryError) -> CliError {
    CliError::BadInput(match e {
        HistoryError::Json { line, source } => format!("{name} line {line}: {source}"),
        HistoryError::Invalid { line, reason } => format!("{name} line {line}: {reason}"),
        other => format!("{name}: {other}"),
    })
}

/// An operation as JSON: what it did, how it ended, and its line of text.
fn op_json(op: &Operation) -> Value {
    let (f, value, expected) = match &op.op {
        Op::Read => ("read", None, None),
        Op::Write(v) => ("write", Some(v.clone()), None),
        Op::Delete => ("delete", None, None),
        Op::Cas { expected, new } => ("cas", new.clone(), Some(expected.clone())),
    };
    let outcome = match op.outcome {
        Outcome::Fail if op.mismatch => "mismatch",
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    };
    let mut obj = json!({
        "id": op.id,
        "process": op.process,
        "key": op.key,
        "f": f,
        "outcome": outcome,
        "invoke_ns": op.invoke_ns,
        "complete_ns": op.complete_ns,
        "revision": op.version,
        "text": op.to_string(),
    });
    if f != "read" && f != "delete" {
        obj["value"] = json!(value);
    }
    if let Some(expected) = expected {
        obj["expected"] = json!(expected);
    }
    if f == "read" && op.outcome == Outcome::Ok {
        obj["read"] = json!(op.read);
    }
    obj
}

fn violation_json(v: &Violation) -> Value {
    let stuck: Vec<Value> = v
        .stuck
        .iter()
        .zip(&v.expected)
        .map(|(op, w)| json!({"operation": op_json(op), "expected_write": w.as_ref().map(op_json)}))
        .collect();
    json!({
        "key": v.key,
        "reason": v.reason,
        "state": v.state,
        "window": {
            "from_ns": v.window_from_ns,
            "to_ns": (v.window_to_ns != u64::MAX).then_some(v.window_to_ns),
            "total": v.window_total,
            "operations": v.window.iter().map(op_json).collect::<Vec<_>>(),
            "uncertain": v.window_uncertain.iter().map(op_json).collect::<Vec<_>>(),
        },
        "linearized": v.linearized,
        "stuck": stuck,
        "context": v.context.iter().map(op_json).collect::<Vec<_>>(),
    })
}

fn cp(ctx: &Ctx, about: &Input, ops: &[Operation], max_states: u64) -> Result<Exit, CliError> {
    let report: LinReport = linearizability::check_operations(ops, max_states);
    let verdict = report.verdict();
    let (name, exit) = match verdict {
        Verdict::Linearizable => ("linearizable", Exit::Ok),
        Verdict::NotLinearizable => ("not_linearizable", Exit::Error),
        Verdict::Unknown => ("undecided", Exit::Error),
    };
    let mut obj = about.json("cp");
    obj.insert("verdict".into(), name.into());
    obj.insert("exit".into(), exit.code().into());
    obj.insert("states".into(), report.states.into());
    obj.insert(
        "writes_ordered_by_revision".into(),
        report.ordered_writes.into(),
    );
    obj.insert(
        "writes_ordered_by_search".into(),
        report.unordered_writes.into(),
    );
    obj.insert(
        "info".into(),
        json!({"dropped": report.info_dropped, "resolved": report.info_resolved, "searched": report.info_searched}),
    );
    obj.insert(
        "violations".into(),
        report.violations.iter().map(violation_json).collect(),
    );
    obj.insert("undecided_keys".into(), json!(report.unknown));
    ctx.out.result(Value::Object(obj), || {
        let mut t = about.text("cp");
        t.push('\n');
        let how = format!(
            "{} writes ordered by revision, {} by search; {} search states",
            report.ordered_writes, report.unordered_writes, report.states
        );
        match verdict {
            Verdict::Linearizable => {
                t.push_str(&format!("linearizable: all {} keys ({how})", report.keys));
            }
            Verdict::NotLinearizable => {
                t.push_str(&format!(
                    "NOT linearizable: {} of {} keys ({how})",
                    report.violations.len(),
                    report.keys
                ));
                for v in &report.violations {
                    t.push('\n');
                    t.push_str(v.to_string().trim_end());
                }
            }
            Verdict::Unknown => t.push_str(&format!(
                "undecided: no violation found, but the search stopped at {max_states} states on keys {:?} ({how}); try a larger --max-states",
                report.unknown
            )),
        }
        t
    })?;
    Ok(exit)
}

fn ap(ctx: &Ctx, about: &Input, ops: &[Operation], input: &ApInput) -> Result<Exit, CliError> {
    let report: ApReport = jepsen::ap::check_operations(ops, input);
    let never_converged = !input.samples.is_empty() && report.converge_ns.is_none();
    let ok = report.anomalies() == 0 && !never_converged;
    let exit = if ok { Exit::Ok } else { Exit::Error };
    let mut obj = about.json("ap");
    obj.insert(
        "verdict".into(),
        if ok { "converged" } else { "anomalies" }.into(),
    );
    obj.insert("exit".into(), exit.code().into());
    obj.insert("replica_reads".into(), input.final_reads.len().into());
    obj.insert(
        "report".into(),
        serde_json::to_value(&report).unwrap_or(Value::Null),
    );
    ctx.out.result(Value::Object(obj), || {
        let mut t = about.text("ap");
        t.push_str(&format!(", {} final replica reads\n", input.final_reads.len()));
        t.push_str(if ok {
            "converged: no acknowledged write lost, replicas agree, no deleted key came back"
        } else {
            "AP anomalies found:"
        });
        let mut line = |s: String| {
            t.push_str("\n  ");
            t.push_str(&s);
        };
        if report.lost_writes > 0 {
            line(format!(
                "{} acknowledged writes lost (not overwritten by a higher timestamp), e.g. {:?}",
                report.lost_writes, report.lost_examples
            ));
        }
        if report.divergent_keys > 0 {
            line(format!(
                "{} keys whose replicas still disagree, e.g. {:?}",
                report.divergent_keys, report.divergent_examples
            ));
        }
        if report.resurrected_keys > 0 {
            line(format!(
                "{} deleted keys came back, e.g. {:?}",
                report.resurrected_keys, report.resurrected_examples
            ));
        }
        if never_converged {
            line("replicas never stayed converged after the heal (the last convergence poll disagreed)".into());
        }
        line(format!(
            "{} acknowledged writes; {} of {} reads stale ({:.1}%, allowed in AP)",
            report.acknowledged_writes,
            report.stale_reads,
            report.reads,
            100.0 * report.stale_read_rate()
        ));
        if let Some(ns) = report.converge_ns {
            line(format!("converged {} ms after the heal", ns / 1_000_000));
        }
        t
    })?;
    Ok(exit)
}
