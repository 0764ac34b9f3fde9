//! Client-operation histories: the event records, the thread-safe [`Recorder`] workloads write
//! into, JSON-lines persistence, and export to Jepsen's EDN format for Knossos and Elle.
//!
//! Invariant: every completion event (ok, fail, info) names an operation invoked earlier by the
//! same process; an invoked operation without a completion is treated as `info` (unknown).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Identifier of one client operation, shared by its invoke and completion events.
pub type OpId = u64;

/// An AP write timestamp, `(physical_ms, logical, node_id)`, opaque and totally ordered.
pub type Hlc = (u64, u32, u64);

/// Kind of a history event, as in Jepsen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client sent the request.
    Invoke,
    /// The request definitely took effect (for a read: returned `value`).
    Ok,
    /// The request definitely did not take effect.
    Fail,
    /// Unknown outcome (timeout, connection lost): it may take effect at any later time, or never.
    Info,
}

/// Operation function on a per-key register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read the key.
    Read,
    /// Unconditional write of a value.
    Write,
    /// Compare-and-swap: expected value (None = absent) to new value.
    Cas,
    /// Delete, i.e. write of "absent".
    Delete,
}

/// What a client asked for, given to [`Recorder::invoke`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Read the key.
    Read,
    /// Write this value.
    Write(String),
    /// Replace `expected` (None = absent) by `new` (None = absent: the swap deletes the key).
    Cas {
        /// Value the key must hold for the swap to apply.
        expected: Option<String>,
        /// Value written when it applies; None removes the key.
        new: Option<String>,
    },
    /// Delete the key.
    Delete,
}

impl Op {
    /// The [`OpKind`] of this operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write(_) => OpKind::Write,
            Op::Cas { .. } => OpKind::Cas,
            Op::Delete => OpKind::Delete,
        }
    }
}

/// One history event. Field meaning by `f`: write/cas carry the new value in `value` and cas its
/// expected value in `expected` (None = absent, for both); an ok read carries the value read in
/// `value` (None = absent). A failed cas with `mismatch` set is an observation: the key did not
/// hold `expected` at some moment while the request was in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Operation id shared by invoke and completion.
    pub id: OpId,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Logical client process; a process that saw `info` is retired and replaced by a new id.
    pub process: u64,
    /// The register key.
    pub key: String,
    /// Operation function.
    pub f: OpKind,
    /// Written value (write, cas) or value read (ok read); None = absent.
    #[serde(default)]
    pub value: Option<String>,
    /// Expected value of a cas (None = absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// CP revision returned by the server, if any: the Raft log index of a write, or for a read
    /// the revision of the write whose value it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// AP HLC timestamp returned by the server, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Hlc>,
    /// On a failed cas: it failed because the key held another value than `expected`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mismatch: bool,
    /// Monotonic nanoseconds since the start of the run.
    pub time_ns: u64,
}

/// Errors reading or interpreting a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the underlying file failed.
    #[error("history I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON line could not be parsed.
    #[error("history line {line}: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An operation id was invoked twice.
    #[error("operation {0} invoked twice")]
    DuplicateInvoke(OpId),
    /// A completion event has no matching earlier invoke.
    #[error("operation {0} completed without a matching invoke")]
    UnmatchedCompletion(OpId),
    /// A completion disagrees with its invoke (process, key or function).
    #[error("operation {0}: completion does not match its invoke ({1})")]
    Mismatch(OpId, &'static str),
    /// A write invoke carries no value.
    #[error("operation {0}: {1:?} invoke without a value")]
    MissingValue(OpId, OpKind),
    /// Something wrong at a known line of a history file.
    #[error("line {line}: {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong there.
        reason: String,
    },
}

/// Final outcome of an [`Operation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Took effect.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Unknown, including operations never completed.
    Info,
}

/// An invoke paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Operation id.
    pub id: OpId,
    /// Client process.
    pub process: u64,
    /// Register key.
    pub key: String,
    /// What was asked.
    pub op: Op,
    /// How it ended.
    pub outcome: Outcome,
    /// Value returned by an ok read (None = absent or not a read).
    pub read: Option<String>,
    /// CP revision from the completion, if any.
    pub version: Option<u64>,
    /// AP timestamp from the completion, if any.
    pub timestamp: Option<Hlc>,
    /// A failed cas that failed because the key held another value than expected.
    pub mismatch: bool,
    /// Invoke time, ns since run start.
    pub invoke_ns: u64,
    /// Completion time; None if the operation never completed.
    pub complete_ns: Option<u64>,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "nil".to_string());
        let what = match &self.op {
            Op::Read => match self.outcome {
                Outcome::Ok => format!("read -> {}", show(&self.read)),
                _ => "read".to_string(),
            },
            Op::Write(v) => format!("write {v}"),
            Op::Cas { expected, new } => format!("cas {} -> {}", show(expected), show(new)),
            Op::Delete => "delete".to_string(),
        };
        let outcome = if self.mismatch {
            "Mismatch".to_string()
        } else {
            format!("{:?}", self.outcome)
        };
        let revision = self.version.map_or_else(String::new, |r| format!(" @r{r}"));
        let end = self
            .complete_ns
            .map_or_else(|| "never".to_string(), |c| format!("{c}ns"));
        write!(
            f,
            "#{} p{} {outcome} {what}{revision} [{}ns .. {end}]",
            self.id, self.process, self.invoke_ns
        )
    }
}

/// A recorded history: events in the order they were recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The events, in record order (non-decreasing `time_ns` when written by a [`Recorder`]).
    pub events: Vec<Event>,
}

impl History {
    /// Writes one JSON object per line.
    pub fn write_jsonl<W: Write>(&self, mut out: W) -> Result<(), HistoryError> {
        for event in &self.events {
            serde_json::to_writer(&mut out, event).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads a history written by [`History::write_jsonl`]; blank lines are skipped.
    pub fn read_jsonl<R: BufRead>(input: R) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
                line: index + 1,
                source,
            })?;
            events.push(event);
        }
        Ok(History { events })
    }

    /// Saves the history as JSON lines at `path`.
    pub fn save(&self, path: &std::path::Path) -> Result<(), HistoryError> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        self.write_jsonl(&mut out)?;
        out.flush()?;
        Ok(())
    }

    /// Loads a history saved by [`History::save`].
    pub fn load(path: &std::path::Path) -> Result<History, HistoryError> {
        History::read_jsonl(std::io::BufReader::new(std::fs::File::open(path)?))
    }

    /// Pairs invokes with completions, in invoke order; validates the history's shape.
    pub fn operations(&self) -> Result<Vec<Operation>, HistoryError> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut by_id: HashMap<OpId, usize> = HashMap::new();
        for e in &self.events {
            match e.kind {
                EventType::Invoke => {
                    let op = match e.f {
                        OpKind::Read => Op::Read,
                        OpKind::Delete => Op::Delete,
                        OpKind::Write => Op::Write(
                            e.value
                                .clone()
                                .ok_or(HistoryError::MissingValue(e.id, e.f))?,
                        ),
                        OpKind::Cas => Op::Cas {
                            expected: e.expected.clone(),
                            new: e.value.clone(),
                        },
                    };
                    if by_id.insert(e.id, ops.len()).is_some() {
                        return Err(HistoryError::DuplicateInvoke(e.id));
                    }
                    ops.push(Operation {
                        id: e.id,
                        process: e.process,
                        key: e.key.clone(),
                        op,
                        outcome: Outcome::Info,
                        read: None,
                        version: None,
                        timestamp: None,
                        mismatch: false,
                        invoke_ns: e.time_ns,
                        complete_ns: None,
                    });
                }
                kind => {
                    let index = *by_id
                        .get(&e.id)
                        .ok_or(HistoryError::UnmatchedCompletion(e.id))?;
                    let op = &mut ops[index];
                    if op.complete_ns.is_some() {
                        return Err(HistoryError::Mismatch(e.id, "completed twice"));
                    }
                    if op.process != e.process || op.key != e.key || op.op.kind() != e.f {
                        return Err(HistoryError::Mismatch(e.id, "process, key or f differ"));
                    }
                    if e.time_ns < op.invoke_ns {
                        return Err(HistoryError::Mismatch(e.id, "completes before invoke"));
                    }
                    op.outcome = match kind {
                        EventType::Ok => Outcome::Ok,
                        EventType::Fail => Outcome::Fail,
                        _ => Outcome::Info,
                    };
                    if kind == EventType::Ok && e.f == OpKind::Read {
                        op.read = e.value.clone();
                    }
                    if e.mismatch && (kind != EventType::Fail || e.f != OpKind::Cas) {
                        return Err(HistoryError::Mismatch(e.id, "mismatch on a non-failed cas"));
                    }
                    op.version = e.version;
                    op.timestamp = e.timestamp;
                    op.mismatch = e.mismatch;
                    op.complete_ns = Some(e.time_ns);
                }
            }
        }
        Ok(ops)
    }

    /// Renders the history in Jepsen's EDN format, one map per line, for Knossos and Elle.
    ///
    /// Values use Jepsen's independent-key tuples `[key value]`; cas values are `[key [old new]]`.
    /// A delete is exported as a write of `nil`, because Knossos' cas-register has no delete.
    /// A cas that failed on a mismatch carries `:error :mismatch`; the revision, when known, is
    /// `:revision N` (Jepsen's tools ignore keys they do not know).
    pub fn to_edn(&self) -> String {
        let mut out = String::new();
        for (index, e) in self.events.iter().enumerate() {
            let f = match e.f {
                OpKind::Read => ":read",
                OpKind::Write | OpKind::Delete => ":write",
                OpKind::Cas => ":cas",
            };
            let kind = match e.kind {
                EventType::Invoke => ":invoke",
                EventType::Ok => ":ok",
                EventType::Fail => ":fail",
                EventType::Info => ":info",
            };
            let inner = match e.f {
                OpKind::Read if e.kind != EventType::Ok => "nil".to_string(),
                OpKind::Cas => format!("[{} {}]", edn_opt(&e.expected), edn_opt(&e.value)),
                OpKind::Delete => "nil".to_string(),
                _ => edn_opt(&e.value),
            };
            let mut extra = String::new();
            if e.mismatch {
                extra.push_str(", :error :mismatch");
            }
            if let Some(r) = e.version {
                let _ = write!(extra, ", :revision {r}");
            }
            let _ = writeln!(
                out,
                "{{:type {kind}, :f {f}, :value [{} {inner}], :process {}, :time {}, :index {index}{extra}}}",
                edn_str(&e.key),
                e.process,
                e.time_ns
            );
        }
        out
    }
}

fn edn_opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "nil".to_string(), edn_str)
}

/// `s` as an EDN string literal.
pub(crate) fn edn_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Source of monotonic time in ns since the run started.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct RecorderState {
    events: Vec<Event>,
    /// Invoke event index of each operation not yet completed.
    pending: HashMap<OpId, usize>,
    next_id: OpId,
}

/// Thread-safe, cheaply cloned history recorder shared by all workload clients.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<Mutex<RecorderState>>,
    clock: Clock,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder timed by `tokio::time::Instant`, which follows simulated time under turmoil
    /// (or a paused tokio clock) and real monotonic time otherwise.
    pub fn new() -> Recorder {
        let start = tokio::time::Instant::now();
        Self::with_clock(Arc::new(move || {
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }))
    }

    /// A recorder reading time from `clock` (ns since run start, non-decreasing).
    pub fn with_clock(clock: Clock) -> Recorder {
        Recorder {
            state: Arc::new(Mutex::new(RecorderState {
                events: Vec::new(),
                pending: HashMap::new(),
                next_id: 0,
            })),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        // A panicking client must not hide the history of the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `process` sent `op` on `key`; returns the id to complete it with.
    pub fn invoke(&self, process: u64, key: &str, op: Op) -> OpId {
        let mut s = self.lock();
        let time_ns = (self.clock)();
        let id = s.next_id;
        s.next_id += 1;
        let f = op.kind();
        let (value, expected) = match op {
            Op::Read | Op::Delete => (None, None),
            Op::Write(v) => (Some(v), None),
            Op::Cas { expected, new } => (new, expected),
        };
        let index = s.events.len();
        s.pending.insert(id, index);
        s.events.push(Event {
            id,
            kind: EventType::Invoke,
            process,
            key: key.to_string(),
            f,
            value,
            expected,
            version: None,
            timestamp: None,
            mismatch: false,
            time_ns,
        });
        id
    }

    /// Records that operation `id` took effect; `read` is the value an ok read returned.
    pub fn ok(&self, id: OpId, read: Option<String>, version: Option<u64>, timestamp: Option<Hlc>) {
        self.complete(id, EventType::Ok, read, version, timestamp);
    }

    /// Records that operation `id` definitely did not take effect.
    pub fn fail(&self, id: OpId) {
        self.complete(id, EventType::Fail, None, None, None);
    }

    /// Records that cas `id` did not apply because the key held another value than expected
    /// (a failure that is also an observation of the key).
    pub fn mismatch(&self, id: OpId) {
        self.complete_with(id, EventType::Fail, None, None, None, true);
    }

    /// Records that operation `id` has an unknown outcome.
    pub fn info(&self, id: OpId) {
        self.complete(id, EventType::Info, None, None, None);
    }

    fn complete(
        &self,
        id: OpId,
        kind: EventType,
        read: Option<String>,
        version: Option<u64>,
        timestamp: Option<Hlc>,
    ) {
        self.complete_with(id, kind, read, version, timestamp, false);
    }

    fn complete_with(
        &self,
        id: OpId,
        kind: EventType,
        read: Option<String>,
        version: Option<u64>,
        timestamp: Option<Hlc>,
        mismatch: bool,
    ) {
        let mut s = self.lock();
        let time_ns = (self.clock)();
        let Some(index) = s.pending.remove(&id) else {
            debug_assert!(false, "operation {id} completed twice or never invoked");
            return;
        };
        let invoke = &s.events[index];
        let value = if invoke.f == OpKind::Read {
            if kind == EventType::Ok {
                read
            } else {
                None
            }
        } else {
            invoke.value.clone()
        };
        let event = Event {
            id,
            kind,
            process: invoke.process,
            key: invoke.key.clone(),
            f: invoke.f,
            value,
            expected: invoke.expected.clone(),
            version,
            timestamp,
            mismatch: mismatch && invoke.f == OpKind::Cas,
            time_ns,
        };
        s.events.push(event);
    }

    /// A snapshot of everything recorded so far.
    pub fn history(&self) -> History {
        History {
            events: self.lock().events.clone(),
        }
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
