//! What a violation report says: the smallest window of operations that cannot be linearized
//! on its own, where its search got stuck, the write each stuck operation expected, and one
//! sentence of why.
//!
//! A window is the time range `[from, to]`: operations inside it are kept as they are,
//! operations that cross an edge are uncertain (a write may or may not take effect inside the
//! window, a read or failed cas says nothing), and the register may hold any value at `from`
//! (at the start of the history: absent). If the history has a linearization, so does every
//! window (cut the linearization at `from` and `to`), so a window that has none is a witness.
//! The search for it shrinks `to` first (the shortest failing prefix), then `from`, by bisection,
//! within [`WINDOW_SEARCH_STATES`] search states in all.

use std::collections::HashMap;

use super::problem::{Problem, Step, ANON, NIL, WILD};
use super::search::{KeyResult, State};
use super::{Violation, MAX_WINDOW_OPS};
use crate::history::{Op, Operation, Outcome};

/// Search states spent in all on shrinking one violation's window; past it the smallest window
/// found so far is reported (at worst the key's whole history, which is known to fail).
pub const WINDOW_SEARCH_STATES: u64 = 2_000_000;

/// Search states per window checked while reaching back from where a search got stuck.
const AROUND_CHECK_STATES: u64 = 200_000;

/// Operations listed at most in a window (the closest to the first stuck one).
const MAX_LISTED: usize = 4 * MAX_WINDOW_OPS;

/// A window's operations: kept, or made uncertain because they cross an edge.
pub(super) struct Sub {
    ops: Vec<Operation>,
    /// Index of each into the key's operations.
    orig: Vec<usize>,
    /// Acknowledged writes that may have taken effect before the window began.
    keeps_wild: Vec<bool>,
    /// The completed write with the highest revision before the window (index into the key's
    /// operations), when every write completed before it carries a revision.
    floor: Option<usize>,
}

/// A window whose search failed.
pub(super) struct Found {
    sub: Sub,
    problem: Problem,
    deepest: State,
    from: Option<u64>,
    to: u64,
}

pub(super) fn window(ops: &[&Operation], from: Option<u64>, to: u64) -> Sub {
    let mut sub = Sub {
        ops: Vec::new(),
        orig: Vec::new(),
        keeps_wild: Vec::new(),
        floor: None,
    };
    let writes = |op: &Operation| op.op != Op::Read && op.outcome != Outcome::Fail;
    // The register's value at `from` is the last write before it. An acknowledged write that
    // crosses `from` and has a higher revision than every write completed before `from`
    // leaves its own value even if it took effect before the window.
    // An operation with an unknown outcome may take effect at any later time: never "done".
    let completed = |op: &Operation| match op.outcome {
        Outcome::Info => None,
        _ => op.complete_ns,
    };
    let done_before =
        |op: &&&Operation| writes(op) && from.is_some_and(|f| completed(op).is_some_and(|c| c < f));
    let excluded_revision = ops
        .iter()
        .filter(done_before)
        .map(|op| op.version)
        .try_fold(0u64, |max, r| r.map(|r| max.max(r)));
    sub.floor = excluded_revision.filter(|&r| r > 0).and_then(|r| {
        ops.iter()
            .position(|op| op.version == Some(r) && writes(op) && done_before(&op))
    });
    for (i, &op) in ops.iter().enumerate() {
        let done = completed(op);
        let before = from.is_some_and(|f| done.is_some_and(|c| c < f));
        if op.invoke_ns > to || before {
            continue;
        }
        let starts_before = from.is_some_and(|f| op.invoke_ns < f);
        let ends_after = done.is_none_or(|c| c > to);
        let mut keeps_wild = false;
        if starts_before && !ends_after && op.outcome == Outcome::Ok && writes(op) {
            // It took effect by its completion, inside the window or before it.
            sub.ops.push(op.clone());
            keeps_wild = match (op.version, excluded_revision) {
                (Some(r), Some(max)) => r <= max,
                _ => true,
            };
        } else if starts_before || ends_after {
            if !writes(op) {
                continue;
            }
            // Its revision stays: if it takes effect inside the window, it does so in order.
            let mut uncertain = op.clone();
            uncertain.outcome = Outcome::Info;
            sub.ops.push(uncertain);
            // Invoked before the window, it may have taken effect before it, even where the
            // search must place it (its value observed, so it applied: reduction 3).
            keeps_wild = starts_before;
        } else {
            sub.ops.push(op.clone());
        }
        sub.orig.push(i);
        sub.keeps_wild.push(keeps_wild);
    }
    sub
}

/// Checks one window with at most `cap` states; Some if it cannot be linearized. Spends from
/// `budget`.
pub(super) fn fails(
    ops: &[&Operation],
    from: Option<u64>,
    to: u64,
    cap: u64,
    budget: &mut u64,
) -> Option<Found> {
    if *budget == 0 {
        return None;
    }
    let sub = window(ops, from, to);
    let refs: Vec<&Operation> = sub.ops.iter().collect();
    let floor = sub.floor.and_then(|i| ops[i].version);
    let problem = Problem::build_window(&refs, &sub.keeps_wild, floor);
    let initial = if from.is_some() { WILD } else { NIL };
    let (result, states) = problem.search(cap.min(*budget), initial);
    *budget = budget.saturating_sub(states);
    match result {
        KeyResult::Stuck(deepest) => Some(Found {
            sub,
            problem,
            deepest,
            from,
            to,
        }),
        KeyResult::Ok | KeyResult::Unknown(_) => None,
    }
}

/// Invoke times of definite operations up to `to`, sorted, distinct: where windows may start.
fn starts(ops: &[&Operation], to: u64) -> Vec<u64> {
    let mut starts: Vec<u64> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok || o.mismatch)
        .map(|o| o.invoke_ns)
        .filter(|&t| t <= to)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The latest start from which the window up to `to` fails, given that `starts[lo]` fails
/// (with `found`) and `starts[hi]` passes (`hi == len`: the empty window), by bisection.
fn latest_start(
    ops: &[&Operation],
    starts: &[u64],
    to: u64,
    (mut lo, mut hi): (usize, usize),
    mut found: Found,
    cap: u64,
    budget: &mut u64,
) -> Found {
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        match fails(ops, Some(starts[mid]), to, cap, budget) {
            Some(f) => {
                found = f;
                lo = mid;
            }
            None => hi = mid,
        }
    }
    found
}

/// A failing window ending where the search of `problem` got stuck at `deepest`: windows
/// reaching back 1, 2, 4, ... starts until one fails, then bisection. Cheap when the
/// violation is local, whatever the length of the history.
fn around(
    ops: &[&Operation],
    problem: &Problem,
    deepest: &State,
    budget: &mut u64,
) -> Option<Found> {
    let (candidates, _) = problem.candidates(deepest);
    let blocked = |j: &&u32| {
        let d = &problem.defs[**j as usize];
        d.step.apply(deepest.value).is_none()
            || !problem.chain_ready(deepest, **j)
            || problem.below_floor(d)
    };
    let to = candidates
        .iter()
        .filter(blocked)
        .map(|&j| problem.defs[j as usize].complete)
        .min()?;
    let starts = starts(ops, to);
    let cap = AROUND_CHECK_STATES;
    let mut passes = starts.len();
    let mut back = 1;
    loop {
        let at = starts.len().checked_sub(back)?;
        if let Some(found) = fails(ops, Some(starts[at]), to, cap, budget) {
            return Some(latest_start(
                ops,
                &starts,
                to,
                (at, passes),
                found,
                cap,
                budget,
            ));
        }
        if at == 0 || *budget == 0 {
            return None;
        }
        passes = at;
        back = (back * 2).min(starts.len());
    }
}

/// The smallest failing window by prefix bisection (see the module doc); `cap` bounds each
/// check.
fn smallest(ops: &[&Operation], cap: u64, budget: &mut u64) -> Option<Found> {
    let definite = |o: &&&Operation| o.outcome == Outcome::Ok || o.mismatch;
    let mut ends: Vec<u64> = ops
        .iter()
        .filter(definite)
        .filter_map(|o| o.complete_ns)
        .collect();
    ends.sort_unstable();
    ends.dedup();
    // `ends[hi]` fails (hi == len: the whole history); `ends[lo]` passes (lo == -1: nothing).
    let mut best = fails(ops, None, u64::MAX, cap, budget)?;
    let (mut lo, mut hi) = (-1i64, ends.len() as i64);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        match fails(ops, None, ends[mid as usize], cap, budget) {
            Some(found) => {
                best = found;
                hi = mid;
            }
            None => lo = mid,
        }
    }
    let to = best.to;
    let starts = starts(ops, to);
    // From the start of the history it fails (lo == -1); `starts[hi]` passes (hi == len).
    let (mut lo, mut hi) = (-1i64, starts.len() as i64);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        match fails(ops, Some(starts[mid as usize]), to, cap, budget) {
            Some(found) => {
                best = found;
                lo = mid;
            }
            None => hi = mid,
        }
    }
    Some(best)
}

/// The register value `v` of `problem` as a history value (placeholders for the special ones).
fn value_of(problem: &Problem, v: u32) -> Option<String> {
    match v {
        NIL => None,
        ANON => Some("<a value nothing read>".into()),
        WILD => Some("<unknown>".into()),
        _ => problem.values[v as usize].clone(),
    }
}

fn show(v: Option<&str>) -> String {
    v.map_or_else(|| "nil".to_string(), |s| format!("{s:?}"))
}

/// The value an operation writes, if it writes.
fn written(op: &Operation) -> Option<Option<&str>> {
    match (&op.op, op.outcome) {
        (_, Outcome::Fail) => None,
        (Op::Write(v), _) => Some(Some(v.as_str())),
        (Op::Delete, _) => Some(None),
        (Op::Cas { new, .. }, _) => Some(new.as_deref()),
        (Op::Read, _) => None,
    }
}

/// Writes of the key by value, to name the write an operation expected.
struct Writers<'a> {
    by_value: HashMap<Option<&'a str>, Vec<&'a Operation>>,
}

impl<'a> Writers<'a> {
    fn new(ops: &[&'a Operation]) -> Writers<'a> {
        let mut by_value: HashMap<Option<&str>, Vec<&Operation>> = HashMap::new();
        for &op in ops {
            if let Some(v) = written(op) {
                by_value.entry(v).or_default().push(op);
            }
        }
        Writers { by_value }
    }

    /// The write of `value`: the one with `revision` when given, else the only one.
    fn of(&self, value: Option<&str>, revision: Option<u64>) -> Option<&'a Operation> {
        let all = self.by_value.get(&value)?;
        if let Some(r) = revision {
            if let Some(w) = all.iter().find(|w| w.version == Some(r)) {
                return Some(w);
            }
        }
        match all.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// The write whose value `op` expected: for a read the value it returned, for a cas the
    /// value it expected.
    fn expected_by(&self, op: &Operation) -> Option<&'a Operation> {
        match &op.op {
            Op::Read => self.of(op.read.as_deref(), op.version),
            Op::Cas { expected, .. } => self.of(expected.as_deref(), None),
            _ => None,
        }
    }
}

fn id_of(op: Option<&Operation>) -> String {
    op.map_or_else(|| "?".to_string(), |o| format!("#{}", o.id))
}

/// One sentence: why the first stuck operation cannot be placed.
fn reason(
    f: &Found,
    ops: &[&Operation],
    writers: &Writers,
    first: Option<u32>,
    expected: Option<&Operation>,
) -> String {
    let Some(j) = first else {
        return "no operation of the window can be linearized first".into();
    };
    let d = f.problem.defs[j as usize];
    let op = ops[f.sub.orig[d.orig]];
    let state = value_of(&f.problem, f.deepest.value);
    // The write that set the value: the last one in revision order, else the only writer.
    let last = f
        .problem
        .defs
        .iter()
        .enumerate()
        .filter(|(j, d)| d.rev.is_some() && f.deepest.is_linearized(*j as u32))
        .max_by_key(|(_, d)| d.rev)
        .map(|(_, d)| ops[f.sub.orig[d.orig]])
        .filter(|w| written(w) == Some(state.as_deref()));
    let holder = last.or_else(|| writers.of(state.as_deref(), None));
    let since = |w: &Operation| {
        if w.complete_ns.is_some_and(|c| c < op.invoke_ns) {
            ", which completed before it began"
        } else {
            ""
        }
    };
    let held = match (state.as_deref(), holder) {
        (None, Some(w)) => format!("the key was absent (deleted by #{}{})", w.id, since(w)),
        (None, None) => "the key was absent".to_string(),
        (Some(v), Some(w)) => format!(
            "the register held {} (written by #{}{})",
            show(Some(v)),
            w.id,
            since(w)
        ),
        (Some(v), None) => format!("the register held {}", show(Some(v))),
    };
    if let Some(note) = f.problem.notes.get(&op.id) {
        return note.clone();
    }
    // A read older than the window's start can only have been satisfied before it.
    if let (true, Some(w), Some(r)) = (
        f.problem.below_floor(&d),
        f.sub.floor.map(|i| ops[i]),
        d.seen,
    ) {
        return format!(
            "read #{} returned {} at revision {r} (the value of {}), but #{} (revision {}) had completed before it began",
            op.id,
            show(op.read.as_deref()),
            id_of(expected),
            w.id,
            w.version.unwrap_or(0)
        );
    }
    if !f.problem.chain_ready(&f.deepest, j) {
        let pred = d
            .pred
            .map(|p| ops[f.sub.orig[f.problem.defs[p as usize].orig]]);
        let rev = |o: Option<&Operation>| {
            o.and_then(|o| o.version)
                .map_or("?".into(), |r| r.to_string())
        };
        let late = pred.is_some_and(|p| op.complete_ns.is_some_and(|c| c < p.invoke_ns));
        return format!(
            "write #{} got revision {}, after {} (revision {}), yet {}: the revision order contradicts real time",
            op.id,
            rev(Some(op)),
            id_of(pred),
            rev(pred),
            if late {
                format!("{} began only after #{} had completed", id_of(pred), op.id)
            } else {
                format!("{} cannot take effect before #{} must", id_of(pred), op.id)
            }
        );
    }
    match (&op.op, d.step) {
        (Op::Read, _) => match expected {
            Some(w) => format!(
                "read #{} returned {} (the value of #{}), but {held}",
                op.id,
                show(op.read.as_deref()),
                w.id
            ),
            None if op.read.is_none() => {
                format!("read #{} returned nil, but {held}", op.id)
            }
            None => format!(
                "read #{} returned {}, which no write (that did not fail) wrote",
                op.id,
                show(op.read.as_deref())
            ),
        },
        (Op::Cas { expected: e, .. }, Step::Mismatch(_)) => format!(
            "cas #{} failed on a mismatch, but {} ({}) was the register's value for all of it",
            op.id,
            show(e.as_deref()),
            expected.map_or("the initial value".into(), |w| format!(
                "written by #{}",
                w.id
            ))
        ),
        (Op::Cas { expected: e, .. }, _) => format!(
            "cas #{} expected {}{}, but {held}",
            op.id,
            show(e.as_deref()),
            expected.map_or(String::new(), |w| format!(" (the value of #{})", w.id))
        ),
        _ => format!(
            "#{} cannot be linearized here ({held}) and no other order of the window works",
            op.id
        ),
    }
}

/// The violation report for a key whose search got stuck at `deepest` of `full`, after
/// exploring `states` states.
pub(super) fn violation(
    key: &str,
    ops: &[&Operation],
    full: Problem,
    deepest: State,
    states: u64,
) -> Violation {
    let mut budget = WINDOW_SEARCH_STATES;
    let found = around(ops, &full, &deepest, &mut budget)
        .or_else(|| smallest(ops, states.max(AROUND_CHECK_STATES), &mut budget));
    let f = found.unwrap_or_else(|| Found {
        sub: window(ops, None, u64::MAX),
        problem: full,
        deepest,
        from: None,
        to: u64::MAX,
    });
    describe(key, ops, f)
}

/// A violation found from where a search cut off by its bound got stuck: a failing window
/// ending there, within `max_states` (at most [`WINDOW_SEARCH_STATES`]), or None.
pub(super) fn local(
    key: &str,
    ops: &[&Operation],
    problem: &Problem,
    deepest: &State,
    max_states: u64,
) -> Option<Violation> {
    let mut budget = WINDOW_SEARCH_STATES.min(max_states);
    around(ops, problem, deepest, &mut budget).map(|f| describe(key, ops, f))
}

fn describe(key: &str, ops: &[&Operation], f: Found) -> Violation {
    let writers = Writers::new(ops);
    let original = |orig: usize| ops[f.sub.orig[orig]];
    let (mut candidates, _) = f.problem.candidates(&f.deepest);
    // Ops that cannot go next first: they are the likely culprits; then by completion, as the
    // earliest to complete is the most constrained.
    candidates.sort_by_key(|&j| {
        let d = &f.problem.defs[j as usize];
        let blocked = d.step.apply(f.deepest.value).is_none()
            || !f.problem.chain_ready(&f.deepest, j)
            || f.problem.below_floor(d);
        (!blocked, d.complete)
    });
    candidates.truncate(MAX_WINDOW_OPS);
    let expected_of = |j: u32| -> Option<Operation> {
        let d = &f.problem.defs[j as usize];
        let op = original(d.orig);
        if !f.problem.chain_ready(&f.deepest, j) {
            return d
                .pred
                .map(|p| original(f.problem.defs[p as usize].orig).clone());
        }
        if op.mismatch {
            if let Op::Cas { expected, .. } = &op.op {
                return writers.of(expected.as_deref(), None).cloned();
            }
        }
        writers.expected_by(op).cloned()
    };
    let stuck: Vec<Operation> = candidates
        .iter()
        .map(|&j| original(f.problem.defs[j as usize].orig).clone())
        .collect();
    let expected: Vec<Option<Operation>> = candidates.iter().map(|&j| expected_of(j)).collect();
    let first = candidates.first().copied();
    let why = reason(
        &f,
        ops,
        &writers,
        first,
        expected.first().and_then(Option::as_ref),
    );

    // Linearized ops overlapping the first stuck op show what it raced with.
    let state = value_of(&f.problem, f.deepest.value);
    let mut context: Vec<&Operation> = Vec::new();
    if let Some(first) = first.map(|j| f.problem.defs[j as usize]) {
        let overlapping = f.problem.defs.iter().enumerate().filter(|(j, d)| {
            f.deepest.is_linearized(*j as u32)
                && d.complete >= first.invoke
                && d.invoke <= first.complete
        });
        context.extend(overlapping.map(|(_, d)| original(d.orig)));
    }
    // The closest overlapping ops (latest invoked) matter most.
    context.sort_by_key(|o| o.invoke_ns);
    let keep_from = context.len().saturating_sub(MAX_WINDOW_OPS);
    context.drain(..keep_from);
    let floor = f.sub.floor.map(|i| ops[i]);
    let writer = writers.of(state.as_deref(), None).or(floor);
    if let Some(w) = writer {
        if !context.iter().any(|o| o.id == w.id) {
            context.insert(0, w);
        }
    }

    // The window: the ops that must take effect in it, and those that may or may not.
    let focus = stuck.first().map_or(0, |o| o.invoke_ns);
    let mut window_ops: Vec<&Operation> = Vec::new();
    let mut uncertain: Vec<&Operation> = Vec::new();
    // Acknowledged writes crossing the start may have taken effect before the window.
    for d in &f.problem.defs {
        let op = original(d.orig);
        if f.from.is_some_and(|t| op.invoke_ns < t) {
            uncertain.push(op);
        } else {
            window_ops.push(op);
        }
    }
    uncertain.extend(f.problem.info.iter().map(|i| original(i.orig)));
    let window_total = window_ops.len();
    for list in [&mut window_ops, &mut uncertain] {
        if list.len() > MAX_LISTED {
            list.sort_by_key(|o| o.invoke_ns.abs_diff(focus));
            list.truncate(MAX_LISTED);
        }
        list.sort_by_key(|o| (o.invoke_ns, o.id));
    }
    Violation {
        key: key.to_string(),
        reason: why,
        linearized: f.deepest.linearized(),
        total: f.problem.defs.len(),
        state,
        stuck,
        expected,
        context: context.into_iter().cloned().collect(),
        window: window_ops.into_iter().cloned().collect(),
        window_total,
        window_uncertain: uncertain.into_iter().cloned().collect(),
        window_from_ns: f.from,
        window_floor: floor.cloned(),
        window_to_ns: f.to,
    }
}
