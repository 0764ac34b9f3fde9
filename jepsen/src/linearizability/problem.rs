//! One key's search problem: its operations as steps on a register of interned values, after
//! the exact reductions (see the module doc of `linearizability`) and with the revision order.
//!
//! Revisions: a definite write that carries one is ordered by it (the chain); a read that carries
//! one names the write it saw. A read naming a revision whose write wrote another value, or a
//! second write claiming a taken revision, becomes a step that can never be placed (with a note
//! saying why); a read naming a revision no definite write returned gives that revision to the
//! timed-out write of its value.

use std::collections::{HashMap, HashSet};

use crate::history::{Op, OpId, Operation, Outcome};

/// Value id: [`NIL`], [`ANON`], [`WILD`], or an index into `Problem::values`.
pub(super) type Val = u32;
/// The key is absent.
pub(super) const NIL: Val = 0;
/// A value no operation reads or expects: what a timed-out write becomes when it matters only
/// as "something else" for a failed cas.
pub(super) const ANON: Val = 1;
/// The register's unknown value at the start of a window: the first observation reveals it.
pub(super) const WILD: Val = 2;
const RESERVED: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Read(Val),
    Write(Val),
    Cas(Val, Val),
    /// A cas that failed because the register held another value than this one.
    Mismatch(Val),
    /// Placed nowhere: its revision contradicts the history.
    Never,
}

impl Step {
    /// The register after this step from `state`, or None if the step is illegal there.
    pub(super) fn apply(self, state: Val) -> Option<Val> {
        if state == WILD {
            // Any value may be there: an observation reveals it.
            return match self {
                Step::Read(v) => Some(v),
                Step::Write(v) | Step::Cas(_, v) => Some(v),
                Step::Mismatch(_) => Some(WILD),
                Step::Never => None,
            };
        }
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas(expected, new) => (expected == state).then_some(new),
            Step::Mismatch(expected) => (expected != state).then_some(state),
            Step::Never => None,
        }
    }

    /// The value this step requires the register to hold exactly, if any.
    pub(super) fn observes(self) -> Option<Val> {
        match self {
            Step::Read(v) | Step::Cas(v, _) => Some(v),
            _ => None,
        }
    }

    pub(super) fn writes(self) -> Option<Val> {
        match self {
            Step::Write(v) | Step::Cas(_, v) => Some(v),
            _ => None,
        }
    }

    /// Leaves the register as it is when legal.
    pub(super) fn is_observation(self) -> bool {
        matches!(self, Step::Read(_) | Step::Mismatch(_))
    }

    /// May come right after an info op that set `value`: its legality depends on that value.
    pub(super) fn follows_info(self, value: Val) -> bool {
        match self {
            Step::Read(v) | Step::Cas(v, _) => v == value,
            Step::Mismatch(expected) => expected != value,
            _ => false,
        }
    }
}

/// A definite operation: must be linearized between invoke and complete.
#[derive(Clone, Copy, Debug)]
pub(super) struct DefOp {
    pub(super) invoke: u64,
    pub(super) complete: u64,
    pub(super) step: Step,
    /// Index into the key's operation list.
    pub(super) orig: usize,
    /// Revision of a write ordered by revision.
    pub(super) rev: Option<u64>,
    /// The def (index into `defs`) with the next lower revision: linearized before this one.
    pub(super) pred: Option<u32>,
    /// A write that may have taken effect before its window began: applied while the register
    /// is still unknown, it leaves it unknown.
    pub(super) keeps_wild: bool,
    /// Revision an ok read returned.
    pub(super) seen: Option<u64>,
}

/// An info operation still unresolved: may apply any time after invoke, or never.
#[derive(Clone, Copy, Debug)]
pub(super) struct InfoOp {
    pub(super) invoke: u64,
    pub(super) step: Step,
    pub(super) orig: usize,
    /// For an info op with a revision (a write crossing a window's edge): the defs with the
    /// next lower and next higher revisions, between which it must take effect if it does.
    pub(super) after: Option<u32>,
    pub(super) before: Option<u32>,
}

/// One key's search problem after the reductions.
pub(super) struct Problem {
    /// Sorted by invoke time.
    pub(super) defs: Vec<DefOp>,
    /// Sorted by invoke time.
    pub(super) info: Vec<InfoOp>,
    /// Info ops grouped by step (each group in invoke order), for reduction 7.
    pub(super) classes: Vec<(Step, Vec<usize>)>,
    /// Values some info cas expects.
    pub(super) info_expects: Vec<Val>,
    /// In a window: the lowest revision the key can be at when it starts (the highest of the
    /// writes completed before it), so a read of an older revision cannot reveal its value.
    pub(super) floor: Option<u64>,
    pub(super) values: Vec<Option<String>>,
    /// Why an op (by id) became a step that can never be placed.
    pub(super) notes: HashMap<OpId, String>,
    pub(super) info_dropped: usize,
    pub(super) info_resolved: usize,
    /// Definite writes ordered by revision.
    pub(super) ordered_writes: usize,
    /// Definite writes without a revision (ordered by the search).
    pub(super) unordered_writes: usize,
}

/// Completion of an op for ordering purposes (never completed = never).
fn completion(op: &Operation) -> u64 {
    op.complete_ns.unwrap_or(u64::MAX)
}

impl Problem {
    pub(super) fn build(ops: &[&Operation]) -> Problem {
        Problem::build_window(ops, &[], None)
    }

    /// Builds the problem of a window; `keeps_wild[i]` marks the writes of `ops` that may have
    /// taken effect before it began (see `DefOp::keeps_wild`); `floor` is `Problem::floor`.
    pub(super) fn build_window(
        ops: &[&Operation],
        keeps_wild: &[bool],
        floor: Option<u64>,
    ) -> Problem {
        let mut values: Vec<Option<String>> = vec![None; RESERVED];
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
        // (index, step, definite): definite = must be linearized (ok, or a failed cas that
        // observed a mismatch).
        let mut relevant: Vec<(usize, Step, bool)> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let step = match (&op.op, op.outcome) {
                (Op::Cas { expected, .. }, Outcome::Fail) if op.mismatch => {
                    Step::Mismatch(intern(expected.as_ref()))
                }
                // Reduction 1: these constrain nothing.
                (_, Outcome::Fail) | (Op::Read, Outcome::Info) => continue,
                (Op::Read, _) => Step::Read(intern(op.read.as_ref())),
                (Op::Write(v), _) => Step::Write(intern(Some(v))),
                (Op::Delete, _) => Step::Write(NIL),
                (Op::Cas { expected, new }, _) => {
                    Step::Cas(intern(expected.as_ref()), intern(new.as_ref()))
                }
            };
            let definite = op.outcome == Outcome::Ok || op.outcome == Outcome::Fail;
            relevant.push((index, step, definite));
        }
        // Who writes each value, and when each value is first observed by a definite op.
        let mut write_count: HashMap<Val, usize> = HashMap::new();
        let mut writer: HashMap<Val, usize> = HashMap::new();
        let mut first_observed: HashMap<Val, u64> = HashMap::new();
        let mut mismatch_expected: HashSet<Val> = HashSet::new();
        for &(index, step, definite) in &relevant {
            if let Some(v) = step.writes() {
                *write_count.entry(v).or_default() += 1;
                writer.insert(v, index);
            }
            if let Step::Mismatch(e) = step {
                mismatch_expected.insert(e);
            }
            if let (Some(v), true) = (step.observes(), definite) {
                let complete = completion(ops[index]);
                let entry = first_observed.entry(v).or_insert(complete);
                *entry = (*entry).min(complete);
            }
        }
        writer.retain(|v, _| write_count.get(v) == Some(&1));

        let (rev_of, never, notes) = revisions(ops, &relevant, &writer, &values);

        // Reduction 3 to a fixed point: a resolved info cas observes its expected value, which
        // may resolve the info write that produced it.
        let unique_write = |step: Step| {
            step.writes()
                .filter(|&v| v != NIL && write_count.get(&v) == Some(&1))
        };
        let mut resolved: HashMap<usize, u64> = HashMap::new();
        loop {
            let mut changed = false;
            for &(index, step, definite) in &relevant {
                let Some(v) = unique_write(step).filter(|_| !definite) else {
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
        for &(index, step, definite) in &relevant {
            let Some(v) = step.observes() else { continue };
            let complete = if definite {
                completion(ops[index])
            } else {
                resolved.get(&index).copied().unwrap_or(u64::MAX)
            };
            let entry = last_observed.entry(v).or_insert(complete);
            *entry = (*entry).max(complete);
        }
        let observable = |step: Step, invoke: u64| {
            step.writes()
                .and_then(|v| last_observed.get(&v))
                .is_some_and(|&last| last >= invoke)
        };
        // A failed cas observed "not its expected value": a timed-out write of any other value
        // may be what it saw. The latest mismatch per expected value decides (two suffice).
        let mut latest: [(u64, Option<Val>); 2] = [(0, None); 2];
        for &(index, step, _) in &relevant {
            let Step::Mismatch(e) = step else { continue };
            let c = completion(ops[index]);
            if latest[0].1 == Some(e) {
                latest[0].0 = latest[0].0.max(c);
            } else if latest[0].1.is_none() || c > latest[0].0 {
                latest[1] = latest[0];
                latest[0] = (c, Some(e));
            } else if latest[1].1.is_none() || c > latest[1].0 {
                latest[1] = (c, Some(e));
            }
        }
        let helps_mismatch = |x: Val, invoke: u64| {
            latest
                .iter()
                .any(|&(c, e)| e.is_some_and(|e| e != x) && c >= invoke)
        };

        let mut defs = Vec::new();
        let mut info = Vec::new();
        let (mut info_dropped, mut info_resolved) = (0, 0);
        for &(index, step, definite) in &relevant {
            let op = ops[index];
            let invoke = op.invoke_ns;
            let step = if never.contains(&index) {
                Step::Never
            } else {
                step
            };
            let complete = if definite {
                Some(completion(op))
            } else if let Some(&c) = resolved.get(&index) {
                info_resolved += 1;
                Some(c)
            } else {
                None
            };
            if let Some(complete) = complete {
                defs.push(DefOp {
                    invoke,
                    complete,
                    step,
                    orig: index,
                    rev: rev_of.get(&index).copied(),
                    pred: None,
                    keeps_wild: keeps_wild.get(index).copied().unwrap_or(false),
                    seen: op.version.filter(|_| matches!(step, Step::Read(_))),
                });
            } else if observable(step, invoke) {
                info.push(InfoOp {
                    invoke,
                    step,
                    orig: index,
                    after: None,
                    before: None,
                });
            } else if let Some(x) = step.writes().filter(|&x| helps_mismatch(x, invoke)) {
                // Kept only for failed cas: its value matters only as "not what they expected",
                // so timed-out writes nobody read become one interchangeable value
                // (reduction 7 then tries one of them, not each).
                let anon = if x == NIL || mismatch_expected.contains(&x) {
                    x
                } else {
                    ANON
                };
                let step = match step {
                    Step::Cas(e, _) => Step::Cas(e, anon),
                    _ => Step::Write(anon),
                };
                info.push(InfoOp {
                    invoke,
                    step,
                    orig: index,
                    after: None,
                    before: None,
                });
            } else {
                // Reductions 2 and 8: nothing observed its value after it was invoked. (A unique
                // value observed only by an unresolved info cas stays: that cas may need it.)
                info_dropped += 1;
            }
        }
        defs.sort_by_key(|d| (d.invoke, d.complete));
        // The chain: each write with a revision follows the one with the next lower revision.
        let mut chain: Vec<(u64, u32)> = defs
            .iter()
            .enumerate()
            .filter_map(|(j, d)| d.rev.map(|r| (r, j as u32)))
            .collect();
        chain.sort_unstable();
        for pair in chain.windows(2) {
            defs[pair[1].1 as usize].pred = Some(pair[0].1);
        }
        // Info ops with a revision take effect, if at all, between their chain neighbours.
        for op in &mut info {
            let Some(&r) = rev_of.get(&op.orig) else {
                continue;
            };
            let at = chain.partition_point(|&(q, _)| q < r);
            op.after = at.checked_sub(1).map(|k| chain[k].1);
            op.before = chain.get(at).map(|&(_, j)| j);
        }
        let ordered_writes = chain.len();
        let unordered_writes = defs
            .iter()
            .filter(|d| d.rev.is_none() && d.step.writes().is_some())
            .count();
        // Reduction 7 picks the lowest index among identical info ops; in invoke order that
        // keeps every applied set a prefix of its class, so the subset memo catches repeats.
        info.sort_by_key(|i| i.invoke);
        let mut classes: Vec<(Step, Vec<usize>)> = Vec::new();
        let mut class_of: HashMap<Step, usize> = HashMap::new();
        for (i, op) in info.iter().enumerate() {
            let c = *class_of.entry(op.step).or_insert_with(|| {
                classes.push((op.step, Vec::new()));
                classes.len() - 1
            });
            classes[c].1.push(i);
        }
        let mut info_expects: Vec<Val> = info
            .iter()
            .filter_map(|op| match op.step {
                Step::Cas(e, _) => Some(e),
                _ => None,
            })
            .collect();
        info_expects.sort_unstable();
        info_expects.dedup();
        Problem {
            defs,
            info,
            classes,
            info_expects,
            floor,
            values,
            notes,
            info_dropped,
            info_resolved,
            ordered_writes,
            unordered_writes,
        }
    }
}

/// Revisions of writes (by index into the key's ops), the ops that can never be placed, and why.
type Revisions = (HashMap<usize, u64>, HashSet<usize>, HashMap<OpId, String>);

/// Reads the revision order: which write has which revision, and which ops contradict it.
fn revisions(
    ops: &[&Operation],
    relevant: &[(usize, Step, bool)],
    writer: &HashMap<Val, usize>,
    values: &[Option<String>],
) -> Revisions {
    let show = |v: Val| match v {
        NIL => "nil".to_string(),
        _ => format!("{:?}", values[v as usize].as_deref().unwrap_or("")),
    };
    let mut rev_of: HashMap<usize, u64> = HashMap::new();
    let mut by_rev: HashMap<u64, (usize, Val)> = HashMap::new();
    let mut never: HashSet<usize> = HashSet::new();
    let mut notes: HashMap<OpId, String> = HashMap::new();
    for &(index, step, definite) in relevant {
        let (Some(v), Some(r)) = (step.writes(), ops[index].version) else {
            continue;
        };
        match by_rev.get(&r) {
            // An uncertain write with a revision (crossing a window's edge) orders itself only
            // where nothing else claims the revision.
            Some(_) if !definite => {}
            None if !definite => {
                by_rev.insert(r, (index, v));
                rev_of.insert(index, r);
            }
            Some(&(other, _)) => {
                never.insert(index);
                notes.insert(
                    ops[index].id,
                    format!(
                        "two writes returned revision {r}: #{} and #{}",
                        ops[other].id, ops[index].id
                    ),
                );
            }
            None => {
                by_rev.insert(r, (index, v));
                rev_of.insert(index, r);
            }
        }
    }
    for &(index, step, definite) in relevant {
        let (Step::Read(v), Some(r), true) = (step, ops[index].version, definite) else {
            continue;
        };
        let id = ops[index].id;
        match by_rev.get(&r) {
            Some(&(w, wrote)) if wrote != v => {
                never.insert(index);
                notes.insert(
                    id,
                    format!(
                        "read #{id} returned {} at revision {r}, but revision {r} is #{}, which wrote {}",
                        show(v),
                        ops[w].id,
                        show(wrote)
                    ),
                );
            }
            Some(_) => {}
            None => {
                let Some(&w) = writer.get(&v) else { continue };
                match rev_of.get(&w) {
                    Some(&other) => {
                        never.insert(index);
                        notes.insert(
                            id,
                            format!(
                                "read #{id} returned {} at revision {r}, but #{}, which wrote it, got revision {other}",
                                show(v),
                                ops[w].id
                            ),
                        );
                    }
                    None => {
                        // The timed-out (or unversioned) write of the value: now ordered too.
                        rev_of.insert(w, r);
                        by_rev.insert(r, (w, v));
                    }
                }
            }
        }
    }
    (rev_of, never, notes)
}
