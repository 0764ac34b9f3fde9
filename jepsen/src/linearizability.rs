//! Linearizability checker for per-key registers (read, write, cas, delete).
//!
//! Exact search in the style of Wing & Gong with Lowe's memoisation, split per key
//! (P-compositionality, as in Porcupine). Operations with an unknown outcome (`info`) may take
//! effect at any point after their invoke, or never. Before searching, exact reductions shrink
//! the problem (they rely on a value being written at most once per key, which is checked, not
//! assumed):
//! 1. a failed operation, or a read with unknown outcome, constrains nothing and is dropped;
//! 2. an info write/cas whose value nothing observed (no ok read returned it, no ok or info cas
//!    expected it) is dropped: never applying it is always at least as permissive;
//! 3. an info write/cas whose value was observed must have applied, before its first observer
//!    returned: it becomes a definite operation completing then;
//! 4. an info operation is applied only if it changes the register's value;
//! 5. a failed search state rules out every state that differs only by having more info
//!    operations applied (they could have been left unapplied);
//! 6. an info operation is placed only right before a step that observes its value (any
//!    linearization can drop info operations whose value the next step ignores);
//! 7. of several available info operations with the same effect, only the earliest is tried;
//! 8. an info operation whose value no operation could observe after its invoke is dropped;
//! 9. a read that may be linearized next and is legal now is linearized next, without
//!    branching (partial-order reduction: reads commute with everything at the front).
//!
//! The search is bounded by [`MAX_SEARCH_STATES`] per key; past it the key's verdict is
//! unknown rather than running forever.

use std::collections::HashMap;
use std::fmt;

use crate::history::{History, HistoryError, Op, Operation, Outcome};

/// Search states explored per key before giving up with an unknown verdict. Failed states are
/// remembered, at roughly 200–400 bytes each, so this also bounds memory.
pub const MAX_SEARCH_STATES: u64 = 1_000_000;

/// Operations shown at most in a violation's window.
pub const MAX_WINDOW_OPS: usize = 24;

/// Result of checking a whole history.
#[derive(Clone, Debug, Default)]
pub struct LinReport {
    /// Keys checked.
    pub keys: usize,
    /// Keys found not linearizable, with where the search got stuck.
    pub violations: Vec<Violation>,
    /// Keys whose search hit [`MAX_SEARCH_STATES`] without a verdict.
    pub unknown: Vec<String>,
    /// Search states explored over all keys.
    pub states: u64,
    /// Info operations dropped because nothing observed them (reduction 2).
    pub info_dropped: usize,
    /// Info operations made definite because their value was observed (reduction 3).
    pub info_resolved: usize,
    /// Info operations left for the search to place.
    pub info_searched: usize,
}

/// Overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not.
    NotLinearizable,
    /// No violation found, but some key's search was cut off.
    Unknown,
}

impl LinReport {
    /// The overall verdict: a violation anywhere wins over unknown keys.
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::NotLinearizable
        } else if !self.unknown.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }

    /// True when every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }
}

/// A key that is not linearizable, and the smallest window that shows why.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Definite operations linearized at the deepest point the search reached.
    pub linearized: usize,
    /// Definite operations on the key (after reductions).
    pub total: usize,
    /// Register value at that point (None = absent).
    pub state: Option<String>,
    /// Operations that could be linearized next at that point, none leading to a solution;
    /// those illegal in `state` first (the likely culprits).
    pub stuck: Vec<Operation>,
    /// The operation that wrote `state`, then already linearized operations overlapping the
    /// first stuck one, by invoke time.
    pub context: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?} not linearizable: stuck after {} of {} operations with value {}",
            self.key,
            self.linearized,
            self.total,
            self.state.as_deref().unwrap_or("nil")
        )?;
        writeln!(f, "  could not linearize next:")?;
        for op in &self.stuck {
            writeln!(f, "    {op}")?;
        }
        writeln!(
            f,
            "  after (writer of the value, then overlapping operations):"
        )?;
        for op in &self.context {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// Checks a history; errors only if the history is malformed.
pub fn check(history: &History) -> Result<LinReport, HistoryError> {
    Ok(check_operations(&history.operations()?, MAX_SEARCH_STATES))
}

/// Checks paired operations with a bound of `max_states` search states per key.
pub fn check_operations(ops: &[Operation], max_states: u64) -> LinReport {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    let mut report = LinReport {
        keys: keys.len(),
        ..LinReport::default()
    };
    for key in keys {
        let problem = Problem::build(&by_key[key]);
        report.info_dropped += problem.info_dropped;
        report.info_resolved += problem.info_resolved;
        report.info_searched += problem.info.len();
        let (result, states) = problem.search(max_states);
        report.states += states;
        match result {
            KeyResult::Ok => {}
            KeyResult::Unknown => report.unknown.push(key.to_string()),
            KeyResult::Stuck(stuck) => {
                report
                    .violations
                    .push(problem.violation(key, &by_key[key], &stuck))
            }
        }
    }
    report
}

/// Value id: 0 is "absent"; others index `Problem::values`.
type Val = u32;
const NIL: Val = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Read(Val),
    Write(Val),
    Cas(Val, Val),
}

impl Step {
    fn apply(self, state: Val) -> Option<Val> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas(expected, new) => (expected == state).then_some(new),
        }
    }

    /// The value this step requires the register to hold, if it depends on the state.
    fn observes(self) -> Option<Val> {
        match self {
            Step::Read(v) | Step::Cas(v, _) => Some(v),
            Step::Write(_) => None,
        }
    }

    fn writes(self) -> Option<Val> {
        match self {
            Step::Read(_) => None,
            Step::Write(v) | Step::Cas(_, v) => Some(v),
        }
    }
}

/// A definite operation: must be linearized between invoke and complete.
#[derive(Clone, Copy, Debug)]
struct DefOp {
    invoke: u64,
    complete: u64,
    step: Step,
    /// Index into the key's operation list, for reporting.
    orig: usize,
}

/// An info operation still unresolved: may apply any time after invoke, or never.
#[derive(Clone, Copy, Debug)]
struct InfoOp {
    invoke: u64,
    step: Step,
}

/// One key's search problem after the reductions.
struct Problem {
    /// Sorted by invoke time.
    defs: Vec<DefOp>,
    info: Vec<InfoOp>,
    values: Vec<Option<String>>,
    /// For each value id, the original op index that wrote it (if written by one op).
    writer: HashMap<Val, usize>,
    info_dropped: usize,
    info_resolved: usize,
}

/// A search state. `prefix`: definite ops `0..prefix` are all linearized; `above`: the other
/// linearized definite ops (sorted); `info`: bitset of applied info ops; `value`: register;
/// `observe`: the last step applied an info op, so the next step must observe its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    prefix: u32,
    above: Vec<u32>,
    info: Vec<u64>,
    value: Val,
    observe: bool,
}

impl State {
    fn linearized(&self) -> usize {
        self.prefix as usize + self.above.len()
    }

    fn with_def(&self, j: u32, value: Val) -> State {
        let mut next = self.clone();
        next.value = value;
        next.observe = false;
        if j == next.prefix {
            next.prefix += 1;
            // Absorb ops linearized ahead of the prefix, keeping `above` minimal.
            let absorbed = next
                .above
                .iter()
                .enumerate()
                .take_while(|(k, &a)| a == self.prefix + 1 + *k as u32)
                .count();
            next.prefix += absorbed as u32;
            next.above.drain(..absorbed);
        } else if let Err(pos) = next.above.binary_search(&j) {
            next.above.insert(pos, j);
        }
        next
    }

    fn with_info(&self, i: usize, value: Val) -> State {
        let mut next = self.clone();
        next.value = value;
        next.observe = true;
        next.info[i / 64] |= 1 << (i % 64);
        next
    }
}

/// A state without its info bitset: `(prefix, above, value, observe)`.
type MemoKey = (u32, Vec<u32>, Val, bool);

#[derive(Clone, Copy, Debug)]
enum Move {
    Def(u32, Val),
    Info(usize, Val),
}

enum KeyResult {
    Ok,
    Unknown,
    Stuck(State),
}

struct Frame {
    state: State,
    moves: Vec<Move>,
    next: usize,
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

impl Problem {
    fn build(ops: &[&Operation]) -> Problem {
        let mut values: Vec<Option<String>> = vec![None];
        let mut ids: HashMap<String, Val> = HashMap::new();
        let mut intern = |v: Option<&String>| -> Val {
            match v {
                None => NIL,
                Some(s) => *ids.entry(s.clone()).or_insert_with(|| {
                    values.push(Some(s.clone()));
                    (values.len() - 1) as Val
                }),
            }
        };
        let mut relevant: Vec<(usize, Step, Outcome)> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let step = match (&op.op, op.outcome) {
                // Reduction 1: these constrain nothing.
                (_, Outcome::Fail) | (Op::Read, Outcome::Info) => continue,
                (Op::Read, _) => Step::Read(intern(op.read.as_ref())),
                (Op::Write(v), _) => Step::Write(intern(Some(v))),
                (Op::Delete, _) => Step::Write(NIL),
                (Op::Cas { expected, new }, _) => {
                    Step::Cas(intern(expected.as_ref()), intern(Some(new)))
                }
            };
            relevant.push((index, step, op.outcome));
        }
        // Who writes each value, and when each value is first observed by a definite op.
        let mut write_count: HashMap<Val, usize> = HashMap::new();
        let mut writer: HashMap<Val, usize> = HashMap::new();
        let mut first_observed: HashMap<Val, u64> = HashMap::new();
        for &(index, step, outcome) in &relevant {
            if let Some(v) = step.writes() {
                *write_count.entry(v).or_default() += 1;
                writer.insert(v, index);
            }
            let observed = match step {
                Step::Read(v) | Step::Cas(v, _) => v,
                Step::Write(_) => continue,
            };
            if outcome == Outcome::Ok {
                let complete = ops[index].complete_ns.unwrap_or(u64::MAX);
                let entry = first_observed.entry(observed).or_insert(complete);
                *entry = (*entry).min(complete);
            }
        }
        writer.retain(|v, _| write_count.get(v) == Some(&1));

        // Reduction 3 to a fixed point: a resolved info cas observes its expected value, which
        // may resolve the info write that produced it.
        let unique_write = |step: Step| {
            step.writes()
                .filter(|&v| v != NIL && write_count.get(&v) == Some(&1))
        };
        let mut resolved: HashMap<usize, u64> = HashMap::new();
        loop {
            let mut changed = false;
            for &(index, step, outcome) in &relevant {
                let Some(v) = unique_write(step).filter(|_| outcome != Outcome::Ok) else {
                    continue;
                };
                let Some(&first) = first_observed.get(&v) else {
                    continue;
                };
                // Clamped so complete >= invoke: an observer that returned before this invoke
                // still precedes it in real time, and the search refutes that.
                let complete = first.max(ops[index].invoke_ns);
                if resolved.get(&index).is_some_and(|&c| c <= complete) {
                    continue;
                }
                resolved.insert(index, complete);
                changed = true;
                if let Step::Cas(expected, _) = step {
                    let entry = first_observed.entry(expected).or_insert(complete);
                    *entry = (*entry).min(complete);
                }
            }
            if !changed {
                break;
            }
        }

        // Latest completion of a possible observer of each value; an unresolved info cas may
        // observe at any time.
        let mut last_observed: HashMap<Val, u64> = HashMap::new();
        for &(index, step, outcome) in &relevant {
            let Some(v) = step.observes() else { continue };
            let complete = match outcome {
                Outcome::Ok => ops[index].complete_ns.unwrap_or(u64::MAX),
                _ => resolved.get(&index).copied().unwrap_or(u64::MAX),
            };
            let entry = last_observed.entry(v).or_insert(complete);
            *entry = (*entry).max(complete);
        }
        let observable = |step: Step, invoke: u64| {
            step.writes()
                .and_then(|v| last_observed.get(&v))
                .is_some_and(|&last| last >= invoke)
        };

        let mut defs = Vec::new();
        let mut info = Vec::new();
        let (mut info_dropped, mut info_resolved) = (0, 0);
        for &(index, step, outcome) in &relevant {
            let op = ops[index];
            let invoke = op.invoke_ns;
            if outcome == Outcome::Ok {
                let complete = op.complete_ns.unwrap_or(u64::MAX);
                defs.push(DefOp {
                    invoke,
                    complete,
                    step,
                    orig: index,
                });
            } else if let Some(&complete) = resolved.get(&index) {
                info_resolved += 1;
                defs.push(DefOp {
                    invoke,
                    complete,
                    step,
                    orig: index,
                });
            } else if !observable(step, invoke) {
                // Reductions 2 and 8: nothing observed its value after it was invoked. (A unique
                // value observed only by an unresolved info cas stays: that cas may need it.)
                info_dropped += 1;
            } else {
                info.push(InfoOp { invoke, step });
            }
        }
        defs.sort_by_key(|d| (d.invoke, d.complete));
        // Reduction 7 picks the lowest index among identical info ops; in invoke order that
        // keeps every applied set a prefix of its class, so the subset memo catches repeats.
        info.sort_by_key(|i| i.invoke);
        Problem {
            defs,
            info,
            values,
            writer,
            info_dropped,
            info_resolved,
        }
    }

    /// Definite ops that may be linearized next (unlinearized, not preceded in real time by an
    /// unlinearized op), and the earliest completion among unlinearized definite ops.
    fn candidates(&self, s: &State) -> (Vec<u32>, u64) {
        let mut out = Vec::new();
        let mut min_complete = u64::MAX;
        let mut above = s.above.iter().peekable();
        for j in s.prefix as usize..self.defs.len() {
            if above.peek().is_some_and(|&&a| a as usize == j) {
                above.next();
                continue;
            }
            let d = &self.defs[j];
            // Ops are sorted by invoke and complete >= invoke, so once one op is preceded in
            // real time by an unlinearized op, every later one is too.
            if min_complete < d.invoke {
                break;
            }
            out.push(j as u32);
            min_complete = min_complete.min(d.complete);
        }
        (out, min_complete)
    }

    fn moves(&self, s: &State) -> Vec<Move> {
        let (candidates, min_complete) = self.candidates(s);
        // Reduction 9: a read that may go next and is legal now goes next, with no
        // alternatives: moving a read to the front of any valid continuation keeps it valid
        // (reads change nothing, and nothing unlinearized must precede a candidate).
        let legal_read = candidates
            .iter()
            .find(|&&j| matches!(self.defs[j as usize].step, Step::Read(v) if v == s.value));
        if let Some(&j) = legal_read {
            return vec![Move::Def(j, s.value)];
        }
        // Reduction 6: right after an info op, only a step observing its value may follow.
        let allowed = |step: Step| !s.observe || step.observes() == Some(s.value);
        let mut moves: Vec<Move> = candidates
            .into_iter()
            .filter(|&j| allowed(self.defs[j as usize].step))
            .filter_map(|j| {
                self.defs[j as usize]
                    .step
                    .apply(s.value)
                    .map(|v| Move::Def(j, v))
            })
            .collect();
        let mut offered: Vec<Step> = Vec::new();
        for (i, op) in self.info.iter().enumerate() {
            let applied = s.info[i / 64] & (1 << (i % 64)) != 0;
            if applied || op.invoke > min_complete || !allowed(op.step) {
                continue;
            }
            // Reduction 7: available info ops with the same step are interchangeable from here
            // on, so only the earliest one is tried.
            if offered.contains(&op.step) {
                continue;
            }
            // Reduction 4: applying an op that leaves the value unchanged only adds a
            // superset state, which reduction 5 would prune anyway.
            if let Some(v) = op.step.apply(s.value).filter(|&v| v != s.value) {
                offered.push(op.step);
                moves.push(Move::Info(i, v));
            }
        }
        moves
    }

    fn search(&self, max_states: u64) -> (KeyResult, u64) {
        let start = State {
            prefix: 0,
            above: Vec::new(),
            info: vec![0; self.info.len().div_ceil(64)],
            value: NIL,
            observe: false,
        };
        if self.defs.is_empty() {
            return (KeyResult::Ok, 0);
        }
        // Failed states, keyed without the info bitset; the value lists the failed info sets.
        let mut failed: HashMap<MemoKey, Vec<Vec<u64>>> = HashMap::new();
        let mut deepest = start.clone();
        let mut states: u64 = 1;
        let mut stack = vec![Frame {
            moves: self.moves(&start),
            state: start,
            next: 0,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(&mv) = frame.moves.get(frame.next) else {
                let done = stack.pop().map(|f| f.state);
                if let Some(s) = done {
                    if s.linearized() > deepest.linearized() {
                        deepest = s.clone();
                    }
                    failed
                        .entry((s.prefix, s.above, s.value, s.observe))
                        .or_default()
                        .push(s.info);
                }
                continue;
            };
            frame.next += 1;
            let next = match mv {
                Move::Def(j, v) => frame.state.with_def(j, v),
                Move::Info(i, v) => frame.state.with_info(i, v),
            };
            if next.prefix as usize == self.defs.len() {
                return (KeyResult::Ok, states);
            }
            // Reduction 5: a failed state with a subset of info ops applied subsumes this one.
            let subsumed = failed
                .get(&(next.prefix, next.above.clone(), next.value, next.observe))
                .is_some_and(|sets| sets.iter().any(|f| is_subset(f, &next.info)));
            if subsumed {
                continue;
            }
            states += 1;
            if states > max_states {
                return (KeyResult::Unknown, states);
            }
            stack.push(Frame {
                moves: self.moves(&next),
                state: next,
                next: 0,
            });
        }
        (KeyResult::Stuck(deepest), states)
    }

    fn violation(&self, key: &str, ops: &[&Operation], deepest: &State) -> Violation {
        let (mut candidates, _) = self.candidates(deepest);
        // Ops illegal in this state first: they are the likely culprits; then by completion,
        // as the earliest to complete is the most constrained.
        candidates.sort_by_key(|&j| {
            let d = &self.defs[j as usize];
            (d.step.apply(deepest.value).is_some(), d.complete)
        });
        candidates.truncate(MAX_WINDOW_OPS);
        let stuck: Vec<Operation> = candidates
            .iter()
            .map(|&j| ops[self.defs[j as usize].orig].clone())
            .collect();
        // Linearized ops overlapping the first stuck op show what it raced with.
        let mut context: Vec<usize> = Vec::new();
        if let Some(first) = candidates.first().map(|&j| self.defs[j as usize]) {
            let overlapping = self.defs.iter().enumerate().filter(|(j, d)| {
                let linearized =
                    *j < deepest.prefix as usize || deepest.above.contains(&(*j as u32));
                linearized && d.complete >= first.invoke && d.invoke <= first.complete
            });
            context.extend(overlapping.map(|(_, d)| d.orig));
        }
        // The closest overlapping ops (latest invoked) matter most.
        context.sort_by_key(|&i| ops[i].invoke_ns);
        let keep_from = context.len().saturating_sub(MAX_WINDOW_OPS);
        context.drain(..keep_from);
        if let Some(&w) = self.writer.get(&deepest.value) {
            if !context.contains(&w) {
                context.insert(0, w);
            }
        }
        Violation {
            key: key.to_string(),
            linearized: deepest.linearized(),
            total: self.defs.len(),
            state: self.values[deepest.value as usize].clone(),
            stuck,
            context: context.iter().map(|&i| ops[i].clone()).collect(),
        }
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
