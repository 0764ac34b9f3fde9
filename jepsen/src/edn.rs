//! Reading Jepsen's EDN histories of register workloads into a [`History`]: a small EDN reader
//! (the subset Jepsen writes: maps, vectors, lists, sets, strings, numbers, keywords, symbols,
//! tagged records, comments) and the mapping of `:read` / `:write` / `:cas` operations.
//!
//! Mapping, in Jepsen's terms: operations pair by `:process` (one operation in flight per
//! process); ops of a non-integer process (the nemesis) are skipped; `:value` is either the
//! register's value (`3`, `[3 4]` for a cas) or an independent-key tuple (`[k 3]`, `[k [3 4]]`),
//! decided once per file; a write of `nil` is a delete; a `:fail` cas with `:error :mismatch` is
//! a mismatch observation (other failed ops did not take effect); `:revision N` on a completion is
//! its revision. Values become strings: strings as they are, anything else as printed EDN (so the
//! string `"3"` and the number `3` are the same value). Without `:time` the event's position
//! stands in for time.

use std::collections::HashMap;

use crate::history::{Event, EventType, History, HistoryError, OpId, OpKind};

/// Deepest nesting of collections accepted: bounds the reader's recursion.
pub const MAX_DEPTH: usize = 64;

/// One EDN value.
#[derive(Clone, Debug, PartialEq)]
pub enum Edn {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// Any other number, as written.
    Number(String),
    /// A string.
    Str(String),
    /// A keyword, without its colon.
    Keyword(String),
    /// A symbol.
    Symbol(String),
    /// A character literal, as written after the backslash.
    Char(String),
    /// `( ... )`.
    List(Vec<Edn>),
    /// `[ ... ]`.
    Vector(Vec<Edn>),
    /// `{ ... }`, in order.
    Map(Vec<(Edn, Edn)>),
    /// `#{ ... }`.
    Set(Vec<Edn>),
}

impl Edn {
    /// The value under keyword `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Edn> {
        match self {
            Edn::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Edn::Keyword(name) if name == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Printed back as EDN (canonical spacing).
    pub fn print(&self) -> String {
        let seq = |items: &[Edn]| items.iter().map(Edn::print).collect::<Vec<_>>().join(" ");
        match self {
            Edn::Nil => "nil".into(),
            Edn::Bool(b) => b.to_string(),
            Edn::Int(i) => i.to_string(),
            Edn::Number(n) => n.clone(),
            Edn::Str(s) => crate::history::edn_str(s),
            Edn::Keyword(k) => format!(":{k}"),
            Edn::Symbol(s) => s.clone(),
            Edn::Char(c) => format!("\\{c}"),
            Edn::List(items) => format!("({})", seq(items)),
            Edn::Vector(items) => format!("[{}]", seq(items)),
            Edn::Set(items) => format!("#{{{}}}", seq(items)),
            Edn::Map(entries) => {
                let parts: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{} {}", k.print(), v.print()))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }
}

/// A reading error: the 1-based line and what is wrong.
fn err(line: usize, reason: impl Into<String>) -> HistoryError {
    HistoryError::Invalid {
        line,
        reason: reason.into(),
    }
}

struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || b",()[]{}\";".contains(&b)
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    /// Skips whitespace, commas and comments.
    fn skip(&mut self) {
        while let Some(b) = self.peek() {
            if b.is_ascii_whitespace() || b == b',' {
                self.bump();
            } else if b == b';' {
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    /// Reads a token up to the next delimiter.
    fn token(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|b| !is_delimiter(b)) {
            self.bump();
        }
        String::from_utf8_lossy(&self.text[start..self.pos]).into_owned()
    }

    /// Reads forms until `close`.
    fn seq(&mut self, close: u8, depth: usize) -> Result<Vec<Edn>, HistoryError> {
        let start = self.line;
        let mut items = Vec::new();
        loop {
            self.skip();
            match self.peek() {
                None => {
                    return Err(err(
                        start,
                        format!("unclosed collection (no `{}`)", close as char),
                    ))
                }
                Some(b) if b == close => {
                    self.bump();
                    return Ok(items);
                }
                Some(_) => {
                    if let Some(form) = self.form(depth + 1)? {
                        items.push(form);
                    }
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, HistoryError> {
        let start = self.line;
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None => return Err(err(start, "unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    let escaped = match self.bump() {
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        Some(b'r') => b'\r',
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'u') => {
                            let hex: String =
                                (0..4).filter_map(|_| self.bump()).map(char::from).collect();
                            let c = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| err(self.line, format!("bad \\u escape {hex:?}")))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        other => {
                            return Err(err(
                                self.line,
                                format!(
                                    "unknown string escape \\{}",
                                    other.map_or('?', char::from)
                                ),
                            ))
                        }
                    };
                    out.push(escaped);
                }
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| err(start, "string is not UTF-8"))
    }

    /// Reads one form; None for a discarded one (`#_ form`).
    fn form(&mut self, depth: usize) -> Result<Option<Edn>, HistoryError> {
        if depth > MAX_DEPTH {
            return Err(err(self.line, format!("nested deeper than {MAX_DEPTH}")));
        }
        self.skip();
        let line = self.line;
        let Some(b) = self.peek() else {
            return Err(err(line, "unexpected end of input"));
        };
        let form = match b {
            b'(' | b'[' | b'{' => {
                self.bump();
                let close = match b {
                    b'(' => b')',
                    b'[' => b']',
                    _ => b'}',
                };
                let items = self.seq(close, depth)?;
                match b {
                    b'(' => Edn::List(items),
                    b'[' => Edn::Vector(items),
                    _ => {
                        if items.len() % 2 != 0 {
                            return Err(err(line, "map with an odd number of forms"));
                        }
                        let mut entries = Vec::with_capacity(items.len() / 2);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            entries.push((k, v));
                        }
                        Edn::Map(entries)
                    }
                }
            }
            b')' | b']' | b'}' => {
                return Err(err(line, format!("unexpected `{}`", b as char)));
            }
            b'"' => {
                self.bump();
                Edn::Str(self.string()?)
            }
            b'\\' => {
                self.bump();
                let mut c = String::new();
                if let Some(first) = self.bump() {
                    c.push(char::from(first));
                }
                c.push_str(&self.token());
                Edn::Char(c)
            }
            b'#' => {
                self.bump();
                match self.peek() {
                    Some(b'{') => {
                        self.bump();
                        Edn::Set(self.seq(b'}', depth)?)
                    }
                    Some(b'_') => {
                        self.bump();
                        self.form(depth + 1)?;
                        return Ok(None);
                    }
                    _ => {
                        // A tagged element (`#jepsen.history.Op{...}`, `#inst "..."`): the tag
                        // names a type; the form after it carries the data.
                        let tag = self.token();
                        if tag.is_empty() {
                            return Err(err(line, "`#` without a tag"));
                        }
                        return self.form(depth + 1);
                    }
                }
            }
            b':' => {
                self.bump();
                let name = self.token();
                if name.is_empty() {
                    return Err(err(line, "empty keyword"));
                }
                Edn::Keyword(name)
            }
            _ => {
                let token = self.token();
                if token.is_empty() {
                    return Err(err(line, format!("unexpected character {:?}", b as char)));
                }
                atom(token)
            }
        };
        Ok(Some(form))
    }
}

fn atom(token: String) -> Edn {
    match token.as_str() {
        "nil" => return Edn::Nil,
        "true" => return Edn::Bool(true),
        "false" => return Edn::Bool(false),
        _ => {}
    }
    let bytes = token.as_bytes();
    let numeric = bytes[0].is_ascii_digit()
        || (bytes.len() > 1 && (bytes[0] == b'-' || bytes[0] == b'+') && bytes[1].is_ascii_digit());
    if !numeric {
        return Edn::Symbol(token);
    }
    match token.trim_end_matches('N').parse::<i64>() {
        Ok(i) => Edn::Int(i),
        Err(_) => Edn::Number(token),
    }
}

/// Parses every top-level form of `text`, each with the line it starts on.
pub fn parse_all(text: &str) -> Result<Vec<(usize, Edn)>, HistoryError> {
    let mut reader = Reader {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut forms = Vec::new();
    loop {
        reader.skip();
        if reader.peek().is_none() {
            return Ok(forms);
        }
        let line = reader.line;
        if let Some(form) = reader.form(0)? {
            forms.push((line, form));
        }
    }
}

/// The register value an EDN value stands for: strings as they are, `nil` absent, anything
/// else printed.
fn value_text(v: &Edn) -> Option<String> {
    match v {
        Edn::Nil => None,
        Edn::Str(s) => Some(s.clone()),
        other => Some(other.print()),
    }
}

fn key_text(k: &Edn) -> String {
    match k {
        Edn::Str(s) => s.clone(),
        other => other.print(),
    }
}

/// Key used for histories of a single register (no independent-key tuples).
pub const SINGLE_REGISTER_KEY: &str = "register";

/// Whether `:value`s are `[key value]` tuples: decided from the first write or cas (a write's
/// value is a 2-vector; a cas's second element is itself a 2-vector), else from reads.
fn independent(ops: &[(usize, &Edn)]) -> bool {
    let pair = |v: Option<&Edn>| match v {
        Some(Edn::Vector(items)) if items.len() == 2 => Some(items.clone()),
        _ => None,
    };
    for (_, op) in ops {
        match op.get("f") {
            Some(Edn::Keyword(f)) if f == "write" => return pair(op.get("value")).is_some(),
            Some(Edn::Keyword(f)) if f == "cas" => {
                return pair(op.get("value")).is_some_and(|items| pair(items.get(1)).is_some())
            }
            _ => {}
        }
    }
    ops.iter()
        .filter(|(_, op)| matches!(op.get("f"), Some(Edn::Keyword(f)) if f == "read"))
        .all(|(_, op)| pair(op.get("value")).is_some())
}

/// Reads a Jepsen EDN history (one op map per line, or one vector of op maps).
pub fn read_history(text: &str) -> Result<History, HistoryError> {
    let forms = parse_all(text)?;
    let mut ops: Vec<(usize, &Edn)> = Vec::new();
    for (line, form) in &forms {
        match form {
            Edn::Vector(items) | Edn::List(items) if forms.len() == 1 => {
                // One collection of ops: their own lines are not tracked past the first.
                for op in items {
                    if !matches!(op, Edn::Map(_)) {
                        return Err(err(
                            *line,
                            format!("expected an operation map, found {}", short(op)),
                        ));
                    }
                    ops.push((*line, op));
                }
            }
            Edn::Map(_) => ops.push((*line, form)),
            other => {
                return Err(err(
                    *line,
                    format!("expected an operation map, found {}", short(other)),
                ))
            }
        }
    }
    let independent = independent(&ops);
    let timed = ops
        .iter()
        .all(|(_, op)| matches!(op.get("time"), Some(Edn::Int(t)) if *t >= 0));
    let mut events = Vec::new();
    // Per process: the pending invoke's event index and line.
    let mut pending: HashMap<i64, (usize, usize)> = HashMap::new();
    let mut next_id: OpId = 0;
    for (position, &(line, op)) in ops.iter().enumerate() {
        let process = match op.get("process") {
            Some(Edn::Int(p)) => *p,
            // The nemesis and other non-client processes.
            Some(_) => continue,
            None => return Err(err(line, "operation without :process")),
        };
        let Ok(process_id) = u64::try_from(process) else {
            return Err(err(line, format!("negative :process {process}")));
        };
        let kind = match op.get("type") {
            Some(Edn::Keyword(t)) => match t.as_str() {
                "invoke" => EventType::Invoke,
                "ok" => EventType::Ok,
                "fail" => EventType::Fail,
                "info" => EventType::Info,
                other => return Err(err(line, format!("unknown :type :{other}"))),
            },
            _ => return Err(err(line, "operation without a keyword :type")),
        };
        let f = match op.get("f") {
            Some(Edn::Keyword(f)) => match f.as_str() {
                "read" => OpKind::Read,
                "write" => OpKind::Write,
                "cas" => OpKind::Cas,
                other => {
                    return Err(err(
                        line,
                        format!("unsupported :f :{other} (kv check reads register histories: :read, :write, :cas)"),
                    ))
                }
            },
            _ => return Err(err(line, "operation without a keyword :f")),
        };
        let raw = op.get("value").unwrap_or(&Edn::Nil);
        let (key, inner) = if independent {
            match raw {
                Edn::Vector(items) if items.len() == 2 => (key_text(&items[0]), &items[1]),
                other => {
                    return Err(err(
                        line,
                        format!(
                            "expected an independent-key tuple [key value] as :value, found {}",
                            short(other)
                        ),
                    ))
                }
            }
        } else {
            (SINGLE_REGISTER_KEY.to_string(), raw)
        };
        let (mut value, mut expected) = match f {
            OpKind::Cas => match inner {
                Edn::Vector(pair) if pair.len() == 2 => {
                    (value_text(&pair[1]), value_text(&pair[0]))
                }
                other => {
                    return Err(err(
                        line,
                        format!(
                            "a cas :value must be [expected new], found {}",
                            short(other)
                        ),
                    ))
                }
            },
            _ => (value_text(inner), None),
        };
        // A write of nil is a delete (that is how `History::to_edn` exports deletes).
        let f = if f == OpKind::Write && value.is_none() {
            OpKind::Delete
        } else {
            f
        };
        let time_ns = if timed {
            match op.get("time") {
                Some(Edn::Int(t)) => *t as u64,
                _ => position as u64,
            }
        } else {
            position as u64
        };
        let mismatch = kind == EventType::Fail
            && f == OpKind::Cas
            && matches!(op.get("error"), Some(Edn::Keyword(e)) if e == "mismatch");
        let version = match op.get("revision") {
            Some(Edn::Int(r)) if *r >= 0 && kind == EventType::Ok => Some(*r as u64),
            _ => None,
        };
        let (id, f) = if kind == EventType::Invoke {
            if let Some(&(_, earlier)) = pending.get(&process) {
                return Err(err(
                    line,
                    format!("process {process} invoked again while its operation from line {earlier} was still in flight"),
                ));
            }
            pending.insert(process, (events.len(), line));
            next_id += 1;
            (next_id - 1, f)
        } else {
            let Some((index, invoke_line)) = pending.remove(&process) else {
                return Err(err(
                    line,
                    format!("completion for process {process}, which has no operation in flight"),
                ));
            };
            let invoke: &Event = &events[index];
            // A delete's completion may print as a write of its value (nil or not).
            let same_f = invoke.f == f
                || matches!(
                    (invoke.f, f),
                    (OpKind::Delete, OpKind::Write) | (OpKind::Write, OpKind::Delete)
                );
            if !same_f || invoke.key != key {
                return Err(err(
                    line,
                    format!(
                        "completion does not match its invoke on line {} (:f or key differ)",
                        invoke_line
                    ),
                ));
            }
            if time_ns < invoke.time_ns {
                return Err(err(line, "completion earlier than its invoke"));
            }
            // Writes complete with the invoke's value; only a read's completion says more.
            if f != OpKind::Read {
                value = invoke.value.clone();
                expected = invoke.expected.clone();
            }
            (invoke.id, invoke.f)
        };
        if kind != EventType::Ok && f == OpKind::Read {
            value = None;
        }
        events.push(Event {
            id,
            kind,
            process: process_id,
            key,
            f,
            value,
            expected,
            version,
            timestamp: None,
            mismatch,
            time_ns,
        });
    }
    Ok(History { events })
}

/// A form shortened for an error message.
fn short(form: &Edn) -> String {
    let printed = form.print();
    if printed.chars().count() > 60 {
        format!("{}…", printed.chars().take(60).collect::<String>())
    } else {
        printed
    }
}

#[cfg(test)]
#[path = "edn_tests.rs"]
mod tests;
