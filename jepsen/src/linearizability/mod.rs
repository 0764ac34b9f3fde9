//! Linearizability checker for per-key registers (read, write, cas, delete).
//!
//! Exact search in the style of Wing & Gong with Lowe's memoisation, split per key
//! (P-compositionality, as in Porcupine). Operations with an unknown outcome (`info`) may take
//! effect at any point after their invoke, or never. A cas that failed on a mismatch is an
//! observation: at some point while it ran, the key did not hold its expected value. A cas may
//! set the key to absent.
//!
//! **Revisions.** CP operations carry revisions: a write's is its Raft log index, a read's is
//! the revision of the write whose value it returned. Where writes carry them, they are ordered
//! by revision (a write waits for the one with the next lower revision), so the search only has
//! to check that this order fits real time and that every read sees the latest write at some
//! point of its interval: with reduction 9 below, a history whose writes all carry revisions is
//! decided in one pass, whatever its concurrency. A read naming a revision that wrote another
//! value, or two writes with one revision, cannot be linearized. Writes without revisions
//! (timed-out ones, histories from elsewhere) are ordered by the search.
//!
//! Before searching, exact reductions shrink the problem (they rely on a value being written at
//! most once per key, which is checked, not assumed):
//! 1. a failed operation (but a mismatched cas), or a read with unknown outcome, constrains
//!    nothing and is dropped;
//! 2. an info write/cas whose value nothing observed (no ok read returned it, no ok or info cas
//!    expected it) is dropped: never applying it is always at least as permissive — unless a
//!    mismatched cas that ended after it was invoked may have seen it, and then all such writes
//!    count as one value nothing reads;
//! 3. an info write/cas whose value was observed must have applied, before its first observer
//!    returned: it becomes a definite operation completing then;
//! 4. an info operation is applied only if it changes the register's value;
//! 5. a failed search state rules out every state that differs only by having more info
//!    operations applied (they could have been left unapplied);
//! 6. an info operation is placed only right before a step whose legality depends on its value
//!    (any linearization can drop info operations whose value the next step ignores);
//! 7. of several available info operations with the same effect, only the earliest is tried;
//! 8. an info operation whose value no operation could observe after its invoke is dropped;
//! 9. an observation (read, mismatched cas) that may be linearized next and is legal now is
//!    linearized next, without branching (partial-order reduction: it commutes with everything
//!    at the front).
//!
//! The search is bounded by [`MAX_SEARCH_STATES`] per key; past it the key's verdict is
//! unknown rather than running forever. A violation is reported with the smallest window of
//! operations found that cannot be linearized on its own (module `explain`).

mod explain;
mod problem;
mod search;

use std::collections::HashMap;
use std::fmt;

use crate::history::{History, HistoryError, Op, Operation};
use problem::{Problem, NIL};
use search::KeyResult;

pub use explain::WINDOW_SEARCH_STATES;

/// Search states explored per key before giving up with an unknown verdict. Failed states are
/// remembered, so this also bounds memory: 250–290 MB peak measured for histories that reach
/// it (one key, 16–64 clients; `jepsen/README.md`).
pub const MAX_SEARCH_STATES: u64 = 1_000_000;

/// The first search of a key explores at most this many states per operation (plus
/// [`QUICK_STATES_MIN`]) before a window around where it got stuck is tried.
pub const QUICK_STATES_PER_OP: u64 = 2;

/// See [`QUICK_STATES_PER_OP`].
pub const QUICK_STATES_MIN: u64 = 10_000;

/// Operations shown at most in a violation's stuck and context lists.
pub const MAX_WINDOW_OPS: usize = 24;

/// Uncertain writes of a window shown in a violation's text (all are in the struct).
const UNCERTAIN_SHOWN: usize = 8;

/// Result of checking a whole history.
#[derive(Clone, Debug, Default)]
pub struct LinReport {
    /// Keys checked.
    pub keys: usize,
    /// Keys found not linearizable, with where the search got stuck.
    pub violations: Vec<Violation>,
    /// Keys whose search hit the state bound without a verdict.
    pub unknown: Vec<String>,
    /// Search states explored over all keys.
    pub states: u64,
    /// Info operations dropped because nothing observed them (reduction 2).
    pub info_dropped: usize,
    /// Info operations made definite because their value was observed (reduction 3).
    pub info_resolved: usize,
    /// Info operations left for the search to place.
    pub info_searched: usize,
    /// Definite writes ordered by their revision.
    pub ordered_writes: usize,
    /// Definite writes without a revision, ordered by the search.
    pub unordered_writes: usize,
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

/// A key that is not linearizable, and the smallest window found that shows why.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// One sentence: which operation cannot be placed, and why.
    pub reason: String,
    /// Definite operations of the window linearized at the deepest point its search reached.
    pub linearized: usize,
    /// Definite operations of the window (after reductions).
    pub total: usize,
    /// Register value at that point (None = absent).
    pub state: Option<String>,
    /// Operations that could be linearized next at that point, none leading to a solution;
    /// those that cannot go next first (the likely culprits).
    pub stuck: Vec<Operation>,
    /// For each stuck operation, the write whose value it expected: for a read the write of
    /// the value it returned, for a cas the write of its expected value, for a write held back
    /// by the revision order the write with the previous revision. None when there is no such
    /// write or it is not unique (absent: the initial state or any delete).
    pub expected: Vec<Option<Operation>>,
    /// The operation that wrote `state`, then already linearized operations overlapping the
    /// first stuck one, by invoke time.
    pub context: Vec<Operation>,
    /// The window: operations within it, which on their own cannot be linearized, by invoke
    /// time (at most 96, the closest to the first stuck one).
    pub window: Vec<Operation>,
    /// Operations in the window before that cap.
    pub window_total: usize,
    /// Writes whose effect in the window is uncertain: timed out, crossing its end, or
    /// acknowledged but crossing its start (they may have taken effect before it).
    pub window_uncertain: Vec<Operation>,
    /// Start of the window (ns); None = the start of the history, where the key is absent.
    /// Otherwise the key may hold any value at the start — any written at `window_floor`'s
    /// revision or later, when that is known.
    pub window_from_ns: Option<u64>,
    /// The write with the highest revision completed before the window began.
    pub window_floor: Option<Operation>,
    /// End of the window (ns); `u64::MAX` = the end of the history.
    pub window_to_ns: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} not linearizable: {}", self.key, self.reason)?;
        let from = match (self.window_from_ns, &self.window_floor) {
            (None, _) => "the start of the history".to_string(),
            (Some(t), None) => format!("{t}ns (any value then)"),
            (Some(t), Some(w)) => format!(
                "{t}ns (then the value of #{}, revision {}, or a later one)",
                w.id,
                w.version.unwrap_or(0)
            ),
        };
        let to = match self.window_to_ns {
            u64::MAX => "the end of the history".to_string(),
            t => format!("{t}ns"),
        };
        writeln!(
            f,
            "  smallest window that cannot be linearized: {} operation{}, from {from} to {to}",
            self.window_total,
            if self.window_total == 1 { "" } else { "s" }
        )?;
        for op in &self.window {
            writeln!(f, "    {op}")?;
        }
        if self.window.len() < self.window_total {
            writeln!(f, "    ({} more)", self.window_total - self.window.len())?;
        }
        if !self.window_uncertain.is_empty() {
            writeln!(
                f,
                "  with writes that may have taken effect before it, in it, or (unacknowledged) not at all:"
            )?;
            // The latest matter most; older ones are timed-out writes that could land any time.
            let skip = self.window_uncertain.len().saturating_sub(UNCERTAIN_SHOWN);
            if skip > 0 {
                writeln!(f, "    ({skip} earlier ones)")?;
            }
            for op in &self.window_uncertain[skip..] {
                writeln!(f, "    {op}")?;
            }
        }
        writeln!(
            f,
            "  stuck after {} of {} operations with value {}; could not linearize next:",
            self.linearized,
            self.total,
            self.state.as_deref().unwrap_or("nil")
        )?;
        for (op, expected) in self.stuck.iter().zip(&self.expected) {
            writeln!(f, "    {op}")?;
            match (expected, &op.op) {
                (Some(w), Op::Write(_) | Op::Delete) => {
                    writeln!(f, "      after the previous revision, {w}")?
                }
                (Some(w), _) => writeln!(f, "      expected the value of {w}")?,
                (None, _) => {}
            }
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
        let key_ops = &by_key[key];
        let problem = Problem::build(key_ops);
        report.info_dropped += problem.info_dropped;
        report.info_resolved += problem.info_resolved;
        report.info_searched += problem.info.len();
        report.ordered_writes += problem.ordered_writes;
        report.unordered_writes += problem.unordered_writes;
        // A short search first: a history ordered by revisions needs about one state per
        // operation. Cut off, it may be a local violation that backtracking over everything
        // before it would take long to refute: a window around where it got stuck decides
        // that cheaply, else the full search runs.
        let quick = QUICK_STATES_PER_OP
            .saturating_mul(key_ops.len() as u64)
            .saturating_add(QUICK_STATES_MIN)
            .min(max_states);
        let (mut result, mut states) = problem.search(quick, NIL);
        if let (KeyResult::Unknown(deepest), true) = (&result, quick < max_states) {
            if let Some(v) = explain::local(key, key_ops, &problem, deepest, max_states) {
                report.states += states;
                report.violations.push(v);
                continue;
            }
            let (full, more) = problem.search(max_states, NIL);
            result = full;
            states += more;
        }
        report.states += states;
        match result {
            KeyResult::Ok => {}
            KeyResult::Unknown(deepest) => {
                match explain::local(key, key_ops, &problem, &deepest, max_states) {
                    Some(v) => report.violations.push(v),
                    None => report.unknown.push(key.to_string()),
                }
            }
            KeyResult::Stuck(deepest) => report
                .violations
                .push(explain::violation(key, key_ops, problem, deepest, states)),
        }
    }
    report
}

#[cfg(test)]
mod revision_tests;
#[cfg(test)]
mod tests;
