//! Histories from a correct, sequential in-memory register driven by simulated concurrent
//! clients: real overlap, failed cas, and unknown outcomes whose effect happens (possibly after
//! the client gave up) or never. Every such history is linearizable by construction, so it
//! tests the checker's soundness and measures its speed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{EventType, History, Op, OpId, OpKind, Recorder};

/// Shape of a simulated history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// RNG seed.
    pub seed: u64,
    /// Concurrent client processes.
    pub processes: usize,
    /// Keys the operations spread over.
    pub keys: usize,
    /// Operations invoked in total.
    pub ops: usize,
    /// Percentage of operations that end with an unknown outcome.
    pub info_pct: u32,
}

struct InFlight {
    id: OpId,
    key: usize,
    op: Op,
    info: bool,
    /// The result once applied: Some(read value) for reads, Some(None) for writes,
    /// None for a cas that did not match.
    applied: Option<Option<Option<String>>>,
}

/// Applies `op` to the register; returns the read value (reads), `Some(None)` for an applied
/// write, or `None` for a cas that did not match.
fn apply(register: &mut Option<String>, op: &Op) -> Option<Option<String>> {
    match op {
        Op::Read => Some(register.clone()),
        Op::Write(v) => {
            *register = Some(v.clone());
            Some(None)
        }
        Op::Delete => {
            *register = None;
            Some(None)
        }
        Op::Cas { expected, new } => (register == expected).then(|| {
            *register = Some(new.clone());
            None
        }),
    }
}

/// Generates a linearizable history with the given shape.
pub fn register_history(config: &SimConfig) -> History {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let recorder = Recorder::with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    let processes = config.processes.max(1);
    let keys = config.keys.max(1);
    let mut registers: Vec<Option<String>> = vec![None; keys];
    let mut flights: Vec<Option<InFlight>> = (0..processes).map(|_| None).collect();
    let mut process_ids: Vec<u64> = (0..processes as u64).collect();
    // Unknown-outcome writes the client gave up on that may still land later.
    let mut ghosts: Vec<(usize, Op)> = Vec::new();
    let mut invoked = 0;
    let mut seq = 0u64;
    let mut observed: HashMap<usize, Vec<Option<String>>> = HashMap::new();
    while invoked < config.ops || flights.iter().any(Option::is_some) {
        now.fetch_add(rng.gen_range(1..10), Ordering::SeqCst);
        if !ghosts.is_empty() && rng.gen_ratio(1, 20) {
            let (key, op) = ghosts.swap_remove(rng.gen_range(0..ghosts.len()));
            apply(&mut registers[key], &op);
            continue;
        }
        let p = rng.gen_range(0..processes);
        match flights[p].take() {
            None if invoked < config.ops => {
                invoked += 1;
                seq += 1;
                let key = rng.gen_range(0..keys);
                let value = format!("v{seq}");
                let op = match rng.gen_range(0..10) {
                    0..=4 => Op::Read,
                    5..=6 => Op::Write(value),
                    7..=8 => {
                        // Mostly a value seen before, so that some cas apply and some do not.
                        let seen = observed.entry(key).or_default();
                        let expected = if seen.is_empty() || rng.gen_ratio(1, 2) {
                            registers[key].clone()
                        } else {
                            seen[rng.gen_range(0..seen.len())].clone()
                        };
                        Op::Cas {
                            expected,
                            new: value,
                        }
                    }
                    _ => Op::Delete,
                };
                let id = recorder.invoke(process_ids[p], &format!("k{key}"), op.clone());
                let info = rng.gen_range(0..100) < config.info_pct;
                flights[p] = Some(InFlight {
                    id,
                    key,
                    op,
                    info,
                    applied: None,
                });
            }
            None => {}
            Some(mut f) if f.applied.is_none() && !(f.info && rng.gen_ratio(1, 3)) => {
                // The linearization point.
                let result = apply(&mut registers[f.key], &f.op);
                if let Some(Some(v)) = &result {
                    observed.entry(f.key).or_default().push(Some(v.clone()));
                }
                f.applied = Some(result);
                flights[p] = Some(f);
            }
            Some(f) => {
                if f.info {
                    recorder.info(f.id);
                    process_ids[p] += processes as u64;
                    if f.applied.is_none() && f.op != Op::Read && rng.gen_ratio(1, 2) {
                        ghosts.push((f.key, f.op));
                    }
                    continue;
                }
                match f.applied {
                    Some(Some(read)) if f.op == Op::Read => recorder.ok(f.id, read, None, None),
                    Some(Some(_)) => recorder.ok(f.id, None, None, None),
                    _ => recorder.fail(f.id),
                }
            }
        }
    }
    recorder.history()
}

/// Makes the first ok read in the last quarter of `h` return the first value acknowledged on
/// its key: a stale read in any history long enough to overwrite it. Returns the read's id.
pub fn inject_stale_read(h: &mut History) -> Option<OpId> {
    let late = h.events.len() * 3 / 4;
    let (index, key) = h.events[late..]
        .iter()
        .enumerate()
        .find(|(_, e)| e.kind == EventType::Ok && e.f == OpKind::Read)
        .map(|(i, e)| (late + i, e.key.clone()))?;
    let first = h
        .events
        .iter()
        .find(|e| e.kind == EventType::Ok && e.f == OpKind::Write && e.key == key)?
        .value
        .clone();
    h.events[index].value = first;
    Some(h.events[index].id)
}
