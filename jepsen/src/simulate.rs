//! Histories from a correct, sequential in-memory register driven by simulated concurrent
//! clients: real overlap, failed cas, and unknown outcomes whose effect happens (possibly after
//! the client gave up) or never. Every such history is linearizable by construction, so it
//! tests the checker's soundness and measures its speed. Optionally the register hands out
//! revisions as a CP keyspace does (one counter, like a Raft log), records failed cas as
//! mismatches, and lets some cas delete. The `inject_*` functions then break a history in one
//! known way each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Event, EventType, History, Op, OpId, OpKind, Recorder};

/// Shape of a simulated history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Ok writes carry their revision and ok reads the revision of the value they returned
    /// (none for absent), as CP keyspaces answer.
    pub revisions: bool,
    /// A cas that did not match is recorded as a mismatch (else as a plain failure).
    pub mismatches: bool,
    /// One cas in four sets the key to absent.
    pub cas_deletes: bool,
}

/// The register of one key: value and the revision of the write that set it.
#[derive(Clone, Debug, Default)]
struct Register {
    value: Option<String>,
    revision: Option<u64>,
}

/// What applying an operation did.
#[derive(Clone, Debug)]
enum Effect {
    /// A read: the value and its revision.
    Read(Option<String>, Option<u64>),
    /// A write, delete or matching cas, at this revision.
    Wrote(u64),
    /// A cas that did not match.
    Mismatch,
}

struct InFlight {
    id: OpId,
    key: usize,
    op: Op,
    info: bool,
    applied: Option<Effect>,
}

/// Applies `op` to the register; `next_revision` is the log index a write takes.
fn apply(register: &mut Register, op: &Op, next_revision: &mut u64) -> Effect {
    let mut write = |register: &mut Register, value: Option<String>| {
        *next_revision += 1;
        register.value = value;
        register.revision = Some(*next_revision);
        Effect::Wrote(*next_revision)
    };
    match op {
        Op::Read => Effect::Read(
            register.value.clone(),
            register.value.as_ref().and(register.revision),
        ),
        Op::Write(v) => write(register, Some(v.clone())),
        Op::Delete => write(register, None),
        Op::Cas { expected, new } if register.value == *expected => write(register, new.clone()),
        Op::Cas { .. } => Effect::Mismatch,
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
    let mut registers: Vec<Register> = vec![Register::default(); keys];
    let mut revision = 0u64;
    let mut flights: Vec<Option<InFlight>> = (0..processes).map(|_| None).collect();
    let mut process_ids: Vec<u64> = (0..processes as u64).collect();
    // Unknown-outcome writes the client gave up on that may still land later.
    let mut ghosts: Vec<(usize, Op)> = Vec::new();
    let mut invoked = 0;
    let mut seq = 0u64;
    let mut observed: HashMap<usize, Vec<Option<String>>> = HashMap::new();
    let version = |r: Option<u64>| r.filter(|_| config.revisions);
    while invoked < config.ops || flights.iter().any(Option::is_some) {
        now.fetch_add(rng.gen_range(1..10), Ordering::SeqCst);
        if !ghosts.is_empty() && rng.gen_ratio(1, 20) {
            let (key, op) = ghosts.swap_remove(rng.gen_range(0..ghosts.len()));
            apply(&mut registers[key], &op, &mut revision);
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
                            registers[key].value.clone()
                        } else {
                            seen[rng.gen_range(0..seen.len())].clone()
                        };
                        let deletes = config.cas_deletes && rng.gen_ratio(1, 4);
                        Op::Cas {
                            expected,
                            new: (!deletes).then_some(value),
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
                let effect = apply(&mut registers[f.key], &f.op, &mut revision);
                if let Effect::Read(Some(v), _) = &effect {
                    observed.entry(f.key).or_default().push(Some(v.clone()));
                }
                f.applied = Some(effect);
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
                    Some(Effect::Read(value, r)) => recorder.ok(f.id, value, version(r), None),
                    Some(Effect::Wrote(r)) => recorder.ok(f.id, None, version(Some(r)), None),
                    Some(Effect::Mismatch) if config.mismatches => recorder.mismatch(f.id),
                    _ => recorder.fail(f.id),
                }
            }
        }
    }
    recorder.history()
}

fn is_ok(e: &Event, f: OpKind) -> bool {
    e.kind == EventType::Ok && e.f == f
}

/// Makes the first ok read in the last quarter of `h` return the first value acknowledged on
/// its key (and that write's revision, when it has one): a stale read in any history long
/// enough to overwrite it. Returns the read's id.
pub fn inject_stale_read(h: &mut History) -> Option<OpId> {
    let late = h.events.len() * 3 / 4;
    let (index, key) = h.events[late..]
        .iter()
        .enumerate()
        .find(|(_, e)| is_ok(e, OpKind::Read))
        .map(|(i, e)| (late + i, e.key.clone()))?;
    let first = h
        .events
        .iter()
        .find(|e| is_ok(e, OpKind::Write) && e.key == key)?;
    let (value, version) = (first.value.clone(), first.version);
    h.events[index].value = value;
    h.events[index].version = version;
    Some(h.events[index].id)
}

/// The ok writes (write, delete, applied cas) of `key` by revision: (revision, event index).
fn writes_by_revision(h: &History, key: &str) -> Vec<(u64, usize)> {
    let mut writes: Vec<(u64, usize)> = h
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EventType::Ok && e.f != OpKind::Read && e.key == key)
        .filter_map(|(i, e)| e.version.map(|r| (r, i)))
        .collect();
    writes.sort_unstable();
    writes
}

/// Invoke time of each operation.
fn invoke_times(h: &History) -> HashMap<OpId, u64> {
    h.events
        .iter()
        .filter(|e| e.kind == EventType::Invoke)
        .map(|e| (e.id, e.time_ns))
        .collect()
}

/// A lost write, in a history with revisions: picks an acknowledged write that some read
/// invoked after it completed returned, and makes every read of it return the write before it
/// (value and revision) instead, as if the write had vanished. Returns the write's id.
pub fn inject_lost_write(h: &mut History) -> Option<OpId> {
    let invoked = invoke_times(h);
    let keys: std::collections::BTreeSet<String> = h.events.iter().map(|e| e.key.clone()).collect();
    for key in keys {
        let writes = writes_by_revision(h, &key);
        for pair in writes.windows(2).skip(writes.len() / 2) {
            let (before, lost) = (&h.events[pair[0].1], &h.events[pair[1].1]);
            if lost.f != OpKind::Write {
                continue;
            }
            let (value, revision, done) = (lost.value.clone(), lost.version, lost.time_ns);
            let reads: Vec<usize> = h
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    is_ok(e, OpKind::Read)
                        && e.key == key
                        && e.version == revision
                        && e.value == value
                })
                .map(|(i, _)| i)
                .collect();
            let late = reads
                .iter()
                .any(|&i| invoked.get(&h.events[i].id).is_some_and(|&t| t > done));
            if !late {
                continue;
            }
            // Deletes (and cas to absent) carry no value: reads of absent carry no revision.
            let old_value = before.value.clone();
            let old_revision = old_value.as_ref().and(before.version);
            let id = lost.id;
            for i in reads {
                h.events[i].value = old_value.clone();
                h.events[i].version = old_revision;
            }
            return Some(id);
        }
    }
    None
}

/// A revision order that contradicts real time, in a history with revisions: two plain
/// writes close in revision order, the lower completed before the higher was invoked, swap
/// their revisions (reads of their values follow). The values alone stay linearizable.
/// Returns the two write ids.
pub fn inject_revision_swap(h: &mut History) -> Option<(OpId, OpId)> {
    let invoked = invoke_times(h);
    let key = h.events.iter().find(|e| e.version.is_some())?.key.clone();
    let writes = writes_by_revision(h, &key);
    let pairs = (writes.len() / 2..writes.len())
        .flat_map(|i| (i + 1..writes.len().min(i + 32)).map(move |j| (i, j)));
    for (i, j) in pairs {
        let (a, b) = (&h.events[writes[i].1], &h.events[writes[j].1]);
        let plain = a.f == OpKind::Write && b.f == OpKind::Write;
        if !plain || invoked.get(&b.id).is_none_or(|&t| t <= a.time_ns) {
            continue;
        }
        let (ra, rb) = (writes[i].0, writes[j].0);
        let ids = (a.id, b.id);
        for e in &mut h.events {
            if e.key == key && e.kind == EventType::Ok {
                if e.version == Some(ra) {
                    e.version = Some(rb);
                } else if e.version == Some(rb) {
                    e.version = Some(ra);
                }
            }
        }
        return Some(ids);
    }
    None
}

/// A failed cas whose expected value was current: appends, after everything else, a cas on
/// the key of the first write that fails on a mismatch although it expected the key's last
/// written value (by revision). Sound only when no timed-out write could still land. Returns
/// the cas's id.
pub fn inject_failed_current_cas(h: &mut History) -> Option<OpId> {
    let key = h.events.iter().find(|e| e.version.is_some())?.key.clone();
    let &(_, last) = writes_by_revision(h, &key).last()?;
    let last = &h.events[last];
    let expected = last.value.clone();
    let id = h.events.iter().map(|e| e.id).max()? + 1;
    let process = h.events.iter().map(|e| e.process).max()? + 1;
    let end = h.events.iter().map(|e| e.time_ns).max()?;
    let invoke = Event {
        id,
        kind: EventType::Invoke,
        process,
        key,
        f: OpKind::Cas,
        value: Some("never-applied".into()),
        expected,
        version: None,
        timestamp: None,
        mismatch: false,
        time_ns: end + 1,
    };
    let mut failed = invoke.clone();
    failed.kind = EventType::Fail;
    failed.mismatch = true;
    failed.time_ns = end + 2;
    h.events.push(invoke);
    h.events.push(failed);
    Some(id)
}

/// The history without revisions (what a checker that ignores them sees).
pub fn strip_revisions(h: &History) -> History {
    let mut out = h.clone();
    for e in &mut out.events {
        e.version = None;
    }
    out
}
