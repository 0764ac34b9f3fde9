//! The depth-first search over one key's [`Problem`]: states, the moves allowed from each (the
//! reductions that act during the search, and the revision order), and the memo of failed
//! states.

use std::collections::HashMap;

use super::problem::{DefOp, Problem, Step, Val, WILD};

/// A search state. `prefix`: definite ops `0..prefix` are all linearized; `above`: the other
/// linearized definite ops (sorted); `info`: the applied info ops (sorted; few, so a list
/// rather than a bitset); `value`: register; `observe`: the last step applied an info op, so
/// the next step must depend on its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct State {
    pub(super) prefix: u32,
    pub(super) above: Vec<u32>,
    pub(super) info: Vec<u32>,
    pub(super) value: Val,
    pub(super) observe: bool,
}

impl State {
    pub(super) fn linearized(&self) -> usize {
        self.prefix as usize + self.above.len()
    }

    pub(super) fn is_linearized(&self, j: u32) -> bool {
        j < self.prefix || self.above.binary_search(&j).is_ok()
    }

    fn info_applied(&self, i: usize) -> bool {
        self.info.binary_search(&(i as u32)).is_ok()
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
        if let Err(pos) = next.info.binary_search(&(i as u32)) {
            next.info.insert(pos, i as u32);
        }
        next
    }
}

/// A state without its info set, packed: `[prefix, value, observe, above...]` (failed states
/// are most of the checker's memory).
type MemoKey = Box<[u32]>;

fn memo_key(s: &State) -> MemoKey {
    let mut key = Vec::with_capacity(3 + s.above.len());
    key.extend([s.prefix, s.value, u32::from(s.observe)]);
    key.extend_from_slice(&s.above);
    key.into_boxed_slice()
}

/// Failed states: the info sets each failed with; None = with none applied, which subsumes
/// every info set.
type Failed = HashMap<MemoKey, Option<Vec<Box<[u32]>>>>;

#[derive(Clone, Copy, Debug)]
enum Move {
    Def(u32, Val),
    Info(usize, Val),
}

/// How one key's search ended.
pub(super) enum KeyResult {
    Ok,
    /// Cut off by the state bound: the deepest state it had backtracked from.
    Unknown(State),
    /// No linearization: the deepest state reached.
    Stuck(State),
}

struct Frame {
    state: State,
    moves: Vec<Move>,
    next: usize,
}

/// Whether sorted `small` is a subset of sorted `big`.
fn is_subset(small: &[u32], big: &[u32]) -> bool {
    let mut rest = big.iter();
    small.iter().all(|s| rest.any(|b| b == s))
}

impl Problem {
    /// Definite ops that may be linearized next as far as real time goes (unlinearized, not
    /// preceded in real time by an unlinearized op), and the earliest completion among
    /// unlinearized definite ops.
    pub(super) fn candidates(&self, s: &State) -> (Vec<u32>, u64) {
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

    /// A read of a revision older than any the window can start at.
    pub(super) fn below_floor(&self, d: &DefOp) -> bool {
        matches!((d.seen, self.floor), (Some(r), Some(f)) if r < f)
    }

    /// A write ordered by revision waits for the write with the previous revision.
    pub(super) fn chain_ready(&self, s: &State, j: u32) -> bool {
        self.defs[j as usize]
            .pred
            .is_none_or(|p| s.is_linearized(p))
    }

    fn moves(&self, s: &State) -> Vec<Move> {
        let (candidates, min_complete) = self.candidates(s);
        // Reduction 9: an observation (read, failed cas) that may go next and is legal now
        // goes next, with no alternatives: moving it to the front of any valid continuation
        // keeps it valid (it changes nothing, and nothing unlinearized must precede a
        // candidate). Not from an unknown value, where an observation reveals the value.
        if s.value != WILD {
            let legal = candidates.iter().find(|&&j| {
                let step = self.defs[j as usize].step;
                step.is_observation() && step.apply(s.value).is_some()
            });
            if let Some(&j) = legal {
                return vec![Move::Def(j, s.value)];
            }
        }
        // Reduction 6: right after an info op, only a step depending on its value may follow.
        let allowed = |step: Step| !s.observe || step.follows_info(s.value);
        let ready: Vec<u32> = candidates
            .into_iter()
            .filter(|&j| self.chain_ready(s, j))
            .collect();
        let mut moves: Vec<Move> = ready
            .iter()
            .filter(|&&j| allowed(self.defs[j as usize].step))
            .filter_map(|&j| {
                let d = &self.defs[j as usize];
                if s.value == WILD {
                    if d.keeps_wild {
                        return Some(Move::Def(j, WILD));
                    }
                    if self.below_floor(d) {
                        return None;
                    }
                }
                d.step.apply(s.value).map(|v| Move::Def(j, v))
            })
            .collect();
        let in_order = |i: usize| {
            let op = &self.info[i];
            op.after.is_none_or(|a| s.is_linearized(a))
                && op.before.is_none_or(|b| !s.is_linearized(b))
        };
        for (step, members) in &self.classes {
            if !allowed(*step) {
                continue;
            }
            // Reduction 4: applying an op that leaves the value unchanged only adds a
            // superset state, which reduction 5 would prune anyway.
            let Some(v) = step.apply(s.value).filter(|&v| v != s.value) else {
                continue;
            };
            // Reduction 6 again: the candidates stay the same after an info op, so it is
            // worth applying only if one of them (or an info cas) depends on its value.
            let followed = ready
                .iter()
                .any(|&j| self.defs[j as usize].step.follows_info(v))
                || self.info_expects.contains(&v);
            if !followed {
                continue;
            }
            // Reduction 7: available info ops with the same step are interchangeable from here
            // on, so only the earliest one is tried.
            let earliest = members
                .iter()
                .take_while(|&&i| self.info[i].invoke <= min_complete)
                .find(|&&i| !s.info_applied(i) && in_order(i));
            if let Some(&i) = earliest {
                moves.push(Move::Info(i, v));
            }
        }
        moves
    }

    /// Searches for a linearization from register value `initial`, exploring at most
    /// `max_states` states; returns the result and the states explored.
    pub(super) fn search(&self, max_states: u64, initial: Val) -> (KeyResult, u64) {
        let start = State {
            prefix: 0,
            above: Vec::new(),
            info: Vec::new(),
            value: initial,
            observe: false,
        };
        if self.defs.is_empty() {
            return (KeyResult::Ok, 0);
        }
        let mut failed: Failed = HashMap::new();
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
                    let sets = failed.entry(memo_key(&s)).or_insert(Some(Vec::new()));
                    match (sets, s.info.is_empty()) {
                        (sets, true) => *sets = None,
                        (Some(list), false) => list.push(s.info.into_boxed_slice()),
                        (None, false) => {}
                    }
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
            let subsumed = match failed.get(&memo_key(&next)) {
                None => false,
                Some(None) => true,
                Some(Some(sets)) => sets.iter().any(|f| is_subset(f, &next.info)),
            };
            if subsumed {
                continue;
            }
            states += 1;
            if states > max_states {
                return (KeyResult::Unknown(deepest), states);
            }
            stack.push(Frame {
                moves: self.moves(&next),
                state: next,
                next: 0,
            });
        }
        (KeyResult::Stuck(deepest), states)
    }
}
