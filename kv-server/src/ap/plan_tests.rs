//! Table-driven tests of `plan`: each case is data (preference list, who is down, N/R/W, the
//! answers that arrive) and the plan or outcome it must produce.

use super::config::Consistency;
use super::error::ApError;
use super::lww::ApRecord;
use super::plan::*;
use crate::types::{Hlc, KeyspaceDef, NodeId};
use std::collections::VecDeque;

/// A write target in short form: `(node, hint_for)`.
type T = (NodeId, Option<NodeId>);

fn target((node, hint_for): T) -> WriteTarget {
    WriteTarget { node, hint_for }
}

fn targets(ts: &[T]) -> Vec<WriteTarget> {
    ts.iter().copied().map(target).collect()
}

/// A record of `key` at physical time `t` (`None` is a tombstone).
fn rec(key: &str, t: u64, value: Option<&str>) -> ApRecord {
    ApRecord {
        key: key.as_bytes().to_vec(),
        hlc: Hlc {
            physical_ms: t,
            logical: 0,
            node_id: 1,
        },
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

struct WritePlanCase {
    name: &'static str,
    preference: &'static [NodeId],
    n: usize,
    coordinator: NodeId,
    down: &'static [NodeId],
    targets: &'static [T],
    fallbacks: &'static [NodeId],
}

#[test]
fn write_plans() {
    let cases = [
        WritePlanCase {
            name: "all alive: the N replicas, the rest are fallbacks",
            preference: &[1, 2, 3, 4, 5],
            n: 3,
            coordinator: 1,
            down: &[],
            targets: &[(1, None), (2, None), (3, None)],
            fallbacks: &[4, 5],
        },
        WritePlanCase {
            name: "down replicas are replaced by the next live fallbacks, in order",
            preference: &[1, 2, 3, 4, 5, 6],
            n: 3,
            coordinator: 1,
            down: &[2, 4],
            targets: &[(1, None), (5, Some(2)), (3, None)],
            fallbacks: &[6],
        },
        WritePlanCase {
            name: "no fallback left (a 3-node cluster): the coordinator keeps the hint",
            preference: &[1, 2, 3],
            n: 3,
            coordinator: 1,
            down: &[3],
            targets: &[(1, None), (2, None), (1, Some(3))],
            fallbacks: &[],
        },
        WritePlanCase {
            name: "the coordinator is a target even when the failure detector calls it down",
            preference: &[1, 2, 3],
            n: 3,
            coordinator: 1,
            down: &[1],
            targets: &[(1, None), (2, None), (3, None)],
            fallbacks: &[],
        },
        WritePlanCase {
            name: "a coordinator outside the list holds hints once the fallbacks run out",
            preference: &[2, 3, 4, 5],
            n: 3,
            coordinator: 1,
            down: &[3, 4],
            targets: &[(2, None), (5, Some(3)), (1, Some(4))],
            fallbacks: &[],
        },
        WritePlanCase {
            name: "down fallbacks are skipped",
            preference: &[1, 2, 3, 4, 5],
            n: 3,
            coordinator: 1,
            down: &[3, 4],
            targets: &[(1, None), (2, None), (5, Some(3))],
            fallbacks: &[],
        },
        WritePlanCase {
            name: "a preference list shorter than N: every node is a replica",
            preference: &[1, 2],
            n: 3,
            coordinator: 2,
            down: &[],
            targets: &[(1, None), (2, None)],
            fallbacks: &[],
        },
    ];
    for c in cases {
        let (got, rest) = plan_write(c.preference, c.n, c.coordinator, |n| !c.down.contains(&n));
        assert_eq!(got, targets(c.targets), "{}", c.name);
        assert_eq!(rest, VecDeque::from(c.fallbacks.to_vec()), "{}", c.name);
    }
}

/// What happens to a write in flight.
#[derive(Clone, Copy)]
enum WriteEvent {
    /// The node acked; the expected result of `ack`.
    Ack(NodeId, Option<usize>),
    /// The send to this target failed; the expected replacement.
    Fail(T, Option<T>),
}

struct WriteQuorumCase {
    name: &'static str,
    coordinator: NodeId,
    w: usize,
    fallbacks: &'static [NodeId],
    events: &'static [WriteEvent],
    acks: usize,
}

#[test]
fn write_quorums() {
    use WriteEvent::{Ack, Fail};
    let cases = [
        WriteQuorumCase {
            name: "W is reached once, by the W-th distinct ack",
            coordinator: 1,
            w: 2,
            fallbacks: &[],
            events: &[Ack(1, None), Ack(2, Some(2)), Ack(3, None)],
            acks: 3,
        },
        WriteQuorumCase {
            name: "a node that acks twice (a replica and a hint on the coordinator) counts once",
            coordinator: 1,
            w: 2,
            fallbacks: &[],
            events: &[Ack(1, None), Ack(1, None), Ack(2, Some(2))],
            acks: 2,
        },
        WriteQuorumCase {
            name: "W = 1 is reached by the first ack",
            coordinator: 1,
            w: 1,
            fallbacks: &[],
            events: &[Ack(3, Some(1)), Ack(1, None)],
            acks: 2,
        },
        WriteQuorumCase {
            name: "failures take the fallbacks in order, then the coordinator, keeping the owner",
            coordinator: 1,
            w: 3,
            fallbacks: &[5, 6],
            events: &[
                Fail((2, None), Some((5, Some(2)))),
                Fail((5, Some(2)), Some((6, Some(2)))),
                Fail((6, Some(2)), Some((1, Some(2)))),
                Fail((1, Some(2)), None),
                Ack(1, None),
                Ack(3, None),
            ],
            acks: 2,
        },
        WriteQuorumCase {
            name: "the coordinator holds one hint per failed owner when no fallback is left",
            coordinator: 1,
            w: 3,
            fallbacks: &[],
            events: &[
                Fail((2, None), Some((1, Some(2)))),
                Fail((3, None), Some((1, Some(3)))),
                Ack(1, None),
            ],
            acks: 1,
        },
        WriteQuorumCase {
            name: "a failure of the coordinator's own store is not retried on itself",
            coordinator: 1,
            w: 2,
            fallbacks: &[],
            events: &[Fail((1, None), None), Ack(2, None), Ack(3, Some(2))],
            acks: 2,
        },
        WriteQuorumCase {
            name: "a failed coordinator store still moves to a live fallback",
            coordinator: 1,
            w: 2,
            fallbacks: &[4],
            events: &[
                Fail((1, None), Some((4, Some(1)))),
                Ack(4, None),
                Ack(2, Some(2)),
            ],
            acks: 2,
        },
    ];
    for c in cases {
        let mut q = WriteQuorum::new(c.coordinator, c.w, VecDeque::from(c.fallbacks.to_vec()));
        for (i, e) in c.events.iter().enumerate() {
            match *e {
                Ack(node, expected) => assert_eq!(q.ack(node), expected, "{} (event {i})", c.name),
                Fail(failed, expected) => assert_eq!(
                    q.fail(target(failed)),
                    expected.map(target),
                    "{} (event {i})",
                    c.name
                ),
            }
        }
        assert_eq!(q.acks(), c.acks, "{}", c.name);
    }
}

struct QuorumLevelCase {
    name: &'static str,
    replicas: u32,
    /// The keyspace's default R and W (0 = majority).
    defaults: (u32, u32),
    consistency: Option<Consistency>,
    /// `Ok((r, w))`, or `Err(text the error must contain)`.
    expected: Result<(usize, usize), &'static str>,
}

#[test]
fn quorums_resolve_from_levels_and_keyspace_defaults() {
    let explicit = |r, w| Some(Consistency::Explicit { r, w });
    let cases = [
        QuorumLevelCase {
            name: "keyspace defaults of 0 mean a majority",
            replicas: 3,
            defaults: (0, 0),
            consistency: None,
            expected: Ok((2, 2)),
        },
        QuorumLevelCase {
            name: "one",
            replicas: 3,
            defaults: (0, 0),
            consistency: Some(Consistency::One),
            expected: Ok((1, 1)),
        },
        QuorumLevelCase {
            name: "all",
            replicas: 3,
            defaults: (0, 0),
            consistency: Some(Consistency::All),
            expected: Ok((3, 3)),
        },
        QuorumLevelCase {
            name: "quorum of 5",
            replicas: 5,
            defaults: (0, 0),
            consistency: Some(Consistency::Quorum),
            expected: Ok((3, 3)),
        },
        QuorumLevelCase {
            name: "explicit",
            replicas: 3,
            defaults: (0, 0),
            consistency: explicit(1, 3),
            expected: Ok((1, 3)),
        },
        QuorumLevelCase {
            name: "explicit R beyond N",
            replicas: 3,
            defaults: (0, 0),
            consistency: explicit(4, 1),
            expected: Err("N=3"),
        },
        QuorumLevelCase {
            name: "explicit W of zero",
            replicas: 3,
            defaults: (0, 0),
            consistency: explicit(1, 0),
            expected: Err("W=0"),
        },
        QuorumLevelCase {
            name: "the keyspace's own R and W",
            replicas: 3,
            defaults: (1, 3),
            consistency: None,
            expected: Ok((1, 3)),
        },
        QuorumLevelCase {
            name: "an explicit level overrides the keyspace's R and W",
            replicas: 3,
            defaults: (1, 3),
            consistency: Some(Consistency::Quorum),
            expected: Ok((2, 2)),
        },
        QuorumLevelCase {
            name: "a keyspace default beyond N",
            replicas: 3,
            defaults: (0, 4),
            consistency: None,
            expected: Err("W=4"),
        },
    ];
    for c in cases {
        let mut ks = KeyspaceDef::builtin().remove(1);
        ks.replicas = c.replicas;
        (ks.read_replicas, ks.write_replicas) = c.defaults;
        let got = resolve_quorums(&ks, c.consistency);
        match (got, c.expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{}", c.name),
            (Err(ApError::InvalidArgument(msg)), Err(needle)) => {
                assert!(msg.contains(needle), "{}: {msg}", c.name)
            }
            (got, expected) => panic!("{}: got {got:?}, expected {expected:?}", c.name),
        }
    }
    let cp = KeyspaceDef::builtin().remove(0);
    assert!(matches!(
        resolve_quorums(&cp, None),
        Err(ApError::InvalidArgument(_))
    ));
}

struct ReadCase {
    name: &'static str,
    preference: &'static [NodeId],
    n: usize,
    r: usize,
    coordinator: NodeId,
    down: &'static [NodeId],
    /// The replicas asked first.
    first: &'static [NodeId],
    /// The replicas asked after each failure, in order, until none is left.
    then: &'static [NodeId],
}

#[test]
fn read_plans() {
    let cases = [
        ReadCase {
            name: "the coordinator's own replica first, then preference order",
            preference: &[2, 1, 3, 4],
            n: 3,
            r: 2,
            coordinator: 1,
            down: &[],
            first: &[1, 2],
            then: &[3],
        },
        ReadCase {
            name: "a coordinator without a replica asks the replicas in order",
            preference: &[2, 3, 4, 1],
            n: 3,
            r: 2,
            coordinator: 1,
            down: &[],
            first: &[2, 3],
            then: &[4],
        },
        ReadCase {
            name: "down replicas are never asked; nodes beyond N never answer reads",
            preference: &[1, 2, 3, 4, 5],
            n: 3,
            r: 2,
            coordinator: 1,
            down: &[2],
            first: &[1, 3],
            then: &[],
        },
        ReadCase {
            name: "the coordinator asks itself even when the failure detector calls it down",
            preference: &[1, 2, 3],
            n: 3,
            r: 1,
            coordinator: 1,
            down: &[1],
            first: &[1],
            then: &[2, 3],
        },
        ReadCase {
            name: "fewer live replicas than R: all of them are asked",
            preference: &[1, 2, 3],
            n: 3,
            r: 3,
            coordinator: 1,
            down: &[2, 3],
            first: &[1],
            then: &[],
        },
    ];
    for c in cases {
        let candidates =
            read_candidates(c.preference, c.n, c.coordinator, |n| !c.down.contains(&n));
        let (mut q, first) = ReadQuorum::start(candidates, c.r);
        assert_eq!(first, c.first, "{}", c.name);
        let then: Vec<NodeId> = std::iter::from_fn(|| q.fail()).collect();
        assert_eq!(then, c.then, "{}", c.name);
    }
}

struct ReadOutcomeCase {
    name: &'static str,
    r: usize,
    answers: Vec<(NodeId, Option<ApRecord>)>,
    expected: ReadOutcome,
}

#[test]
fn read_outcomes() {
    let cases = [
        ReadOutcomeCase {
            name: "fewer than R answers is unavailable",
            r: 3,
            answers: vec![(1, Some(rec("k", 5, Some("v")))), (2, None)],
            expected: ReadOutcome::Unavailable { answered: 2 },
        },
        ReadOutcomeCase {
            name: "no replica holds the key: nothing to repair",
            r: 2,
            answers: vec![(1, None), (2, None)],
            expected: ReadOutcome::Resolved {
                newest: None,
                stale: vec![],
            },
        },
        ReadOutcomeCase {
            name: "replicas that agree need no repair",
            r: 2,
            answers: vec![
                (1, Some(rec("k", 5, Some("v")))),
                (2, Some(rec("k", 5, Some("v")))),
            ],
            expected: ReadOutcome::Resolved {
                newest: Some(rec("k", 5, Some("v"))),
                stale: vec![],
            },
        },
        ReadOutcomeCase {
            name: "the newest wins; older and missing copies are repaired",
            r: 3,
            answers: vec![
                (1, Some(rec("k", 5, Some("old")))),
                (2, Some(rec("k", 9, Some("new")))),
                (3, None),
            ],
            expected: ReadOutcome::Resolved {
                newest: Some(rec("k", 9, Some("new"))),
                stale: vec![1, 3],
            },
        },
        ReadOutcomeCase {
            name: "a newer tombstone wins over a value and is written back",
            r: 2,
            answers: vec![
                (3, Some(rec("k", 9, None))),
                (1, Some(rec("k", 5, Some("v")))),
            ],
            expected: ReadOutcome::Resolved {
                newest: Some(rec("k", 9, None)),
                stale: vec![1],
            },
        },
    ];
    for c in cases {
        let (mut q, _) = ReadQuorum::start(c.answers.iter().map(|(n, _)| *n).collect(), c.r);
        for (node, record) in c.answers {
            q.answer(node, record);
        }
        assert_eq!(q.finish(), c.expected, "{}", c.name);
    }
}

#[test]
fn hint_actions() {
    // (owner alive, hint written at, now, max age) → action.
    let cases = [
        ((true, 100, 150, 100), HintAction::Deliver),
        ((false, 100, 150, 100), HintAction::Wait),
        ((true, 100, 200, 100), HintAction::Deliver),
        ((true, 100, 201, 100), HintAction::Expire),
        ((false, 100, 201, 100), HintAction::Expire),
        ((true, u64::MAX - 1, u64::MAX, 100), HintAction::Deliver),
    ];
    for ((alive, hint_ms, now_ms, max_age_ms), expected) in cases {
        assert_eq!(
            hint_action(alive, hint_ms, now_ms, max_age_ms),
            expected,
            "alive={alive} hint_ms={hint_ms} now_ms={now_ms} max_age_ms={max_age_ms}"
        );
    }
}

#[test]
fn anti_entropy_peers() {
    // (preference, n, me, round, down) → peer.
    type Case = (&'static [NodeId], usize, NodeId, usize, &'static [NodeId]);
    let cases: [(Case, Option<NodeId>); 6] = [
        ((&[1, 2, 3, 4], 3, 1, 0, &[]), Some(2)),
        ((&[1, 2, 3, 4], 3, 1, 1, &[]), Some(3)),
        ((&[1, 2, 3, 4], 3, 1, 2, &[]), Some(2)),
        ((&[1, 2, 3, 4], 3, 1, 1, &[2]), Some(3)),
        ((&[1, 2, 3, 4], 3, 4, 0, &[]), None),
        ((&[1, 2, 3], 3, 2, 0, &[1, 3]), None),
    ];
    for ((preference, n, me, round, down), expected) in cases {
        assert_eq!(
            anti_entropy_peer(preference, n, me, round, |p| !down.contains(&p)),
            expected,
            "preference {preference:?} n={n} me={me} round={round} down={down:?}"
        );
    }
}

#[test]
fn anti_entropy_pushes_what_the_peer_lacks_or_holds_older() {
    let ours = vec![
        rec("a", 5, Some("same")),
        rec("b", 9, Some("ours newer")),
        rec("c", 3, Some("theirs newer")),
        rec("d", 4, None),
    ];
    let theirs = [
        rec("a", 5, Some("same")),
        rec("b", 2, Some("old")),
        rec("c", 7, Some("new")),
    ];
    let pushed: Vec<Vec<u8>> = records_to_push(ours, &theirs)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(pushed, vec![b"b".to_vec(), b"d".to_vec()]);
}

/// A local stamp at physical time `t`.
fn stamp(t: u64) -> Hlc {
    Hlc {
        physical_ms: t,
        logical: 0,
        node_id: 1,
    }
}

#[test]
fn purge_horizons() {
    // (preference, n, me, synced co-replicas with their exchange start) → horizon.
    type Case = (&'static [NodeId], usize, NodeId, &'static [(NodeId, u64)]);
    let cases: [(Case, Option<Hlc>); 6] = [
        // Every co-replica synced: the earliest exchange bounds the horizon.
        ((&[1, 2, 3, 4], 3, 1, &[(2, 50), (3, 40)]), Some(stamp(40))),
        // Only the first N count: node 4 is a fallback, not a replica.
        (
            (&[1, 2, 3, 4], 3, 1, &[(2, 50), (3, 40), (4, 10)]),
            Some(stamp(40)),
        ),
        // One co-replica never synced (e.g. down since before the restart): no purge at all.
        ((&[1, 2, 3, 4], 3, 1, &[(2, 50)]), None),
        ((&[1, 2, 3], 3, 2, &[]), None),
        // No other replica: nothing to wait for.
        ((&[5, 1, 2], 1, 5, &[]), Some(super::hlc::LATEST)),
        // A node that is not a replica waits for all N.
        (
            (&[1, 2, 3, 4], 3, 4, &[(1, 9), (2, 8), (3, 7)]),
            Some(stamp(7)),
        ),
    ];
    for ((preference, n, me, synced), expected) in cases {
        let got = purge_horizon(preference, n, me, |peer| {
            synced
                .iter()
                .find(|(p, _)| *p == peer)
                .map(|&(_, t)| stamp(t))
        });
        assert_eq!(
            got, expected,
            "preference {preference:?} n={n} me={me} synced={synced:?}"
        );
    }
}

#[test]
fn tombstones_purgeable() {
    const GRACE: u64 = 1_000;
    // (written_ms, arrival, now_ms, horizon) → purgeable.
    type Case = (u64, u64, u64, Option<u64>);
    let cases: [(Case, bool); 7] = [
        ((100, 150, 1_101, Some(200)), true),
        // Not yet past the grace period (at the edge is not past it).
        ((100, 150, 1_100, Some(200)), false),
        ((100, 150, 500, Some(200)), false),
        // Arrived after the exchange that bounds the horizon started: that exchange may not have
        // carried it (a delete received late from a third replica).
        ((100, 250, 5_000, Some(200)), false),
        ((100, 200, 5_000, Some(200)), false),
        // Some co-replica has not completed an exchange since: it may still hold the old value.
        ((100, 150, 5_000, None), false),
        // A grace period reaching past the end of time never ends.
        ((u64::MAX - 10, 150, u64::MAX, Some(200)), false),
    ];
    for ((written, arrival, now, horizon), expected) in cases {
        assert_eq!(
            tombstone_purgeable(written, stamp(arrival), now, GRACE, horizon.map(stamp)),
            expected,
            "written {written} arrival {arrival} now {now} horizon {horizon:?}"
        );
    }
}

/// One answer of a read in `corrupt_answers`: a good record (or none), a corrupt copy, or a
/// failed ask.
enum Answer {
    Good(Option<ApRecord>),
    Corrupt,
    Failed,
}

#[test]
fn corrupt_answers() {
    use Answer::{Corrupt, Failed, Good};
    let v = || Some(rec("k", 5, Some("v")));
    // (name, r, n, answers from nodes 1, 2, 3 in order) → outcome.
    let cases: Vec<(&str, usize, Vec<Answer>, ReadOutcome)> = vec![
        (
            "R=1: a corrupt own copy is not the answer; the next replica's is, and it is repaired",
            1,
            vec![Corrupt, Good(v())],
            ReadOutcome::Resolved {
                newest: v(),
                stale: vec![1],
            },
        ),
        (
            "R=2 with one corrupt and one failed: not enough good answers",
            2,
            vec![Corrupt, Good(v()), Failed],
            ReadOutcome::Unavailable { answered: 1 },
        ),
        (
            "R=3: all N answered, one corrupt: the good ones decide",
            3,
            vec![Good(v()), Corrupt, Good(None)],
            ReadOutcome::Resolved {
                newest: v(),
                stale: vec![3, 2],
            },
        ),
        (
            "all N corrupt: lost",
            2,
            vec![Corrupt, Corrupt, Corrupt],
            ReadOutcome::Lost {
                corrupt: vec![1, 2, 3],
            },
        ),
        (
            "corrupt and unreachable: unavailable, not lost (the unreachable one may hold it)",
            1,
            vec![Corrupt, Failed, Corrupt],
            ReadOutcome::Unavailable { answered: 0 },
        ),
    ];
    for (name, r, answers, expected) in cases {
        let (q, _) = ReadQuorum::start(VecDeque::from(vec![1, 2, 3]), r);
        let mut q = q.with_replicas(3);
        for (i, a) in answers.into_iter().enumerate() {
            let node = i as NodeId + 1;
            match a {
                Good(r) => q.answer(node, r),
                Corrupt => {
                    q.corrupt(node);
                }
                Failed => {
                    q.fail();
                }
            }
        }
        assert_eq!(q.finish(), expected, "{name}");
    }
}
