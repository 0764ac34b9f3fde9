//! Pure planning of the AP engine, the "engine" half of an engine/runtime split: which nodes a
//! write goes to and which of them hold hints (`plan_write`), when a write has its W acks and
//! where a failed send's hint goes (`WriteQuorum`), which replicas a read asks, when it has its R
//! answers, what it returns and whom it repairs (`ReadQuorum`), what replay does with a hint
//! (`hint_action`), which peer and records an anti-entropy exchange uses, and which tombstones
//! may be purged (`purge_horizon`, `tombstone_purgeable`).
//!
//! No I/O, no clock, no locks, no async: `coordinator.rs` and `background.rs` feed these what they
//! observed and carry out what they return, and `plan_tests.rs` drives them from tables.

use super::config::Consistency;
use super::error::ApError;
use super::hlc::LATEST;
use super::lww::{self, ApRecord};
use crate::types::{Hlc, KeyspaceDef, Mode, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Resolves `(r, w)` for a request on an AP keyspace, checking they fit in N.
pub fn resolve_quorums(
    ks: &KeyspaceDef,
    consistency: Option<Consistency>,
) -> Result<(usize, usize), ApError> {
    if ks.mode != Mode::Ap {
        return Err(ApError::InvalidArgument(format!(
            "keyspace {} is not an AP keyspace",
            ks.name
        )));
    }
    let n = ks.replicas as usize;
    let majority = n / 2 + 1;
    let or_majority = |x: u32| if x == 0 { majority } else { x as usize };
    let (r, w) = match consistency {
        None => (
            or_majority(ks.read_replicas),
            or_majority(ks.write_replicas),
        ),
        Some(Consistency::One) => (1, 1),
        Some(Consistency::Quorum) => (majority, majority),
        Some(Consistency::All) => (n, n),
        Some(Consistency::Explicit { r, w }) => (r as usize, w as usize),
    };
    if n == 0 || !(1..=n).contains(&r) || !(1..=n).contains(&w) {
        return Err(ApError::InvalidArgument(format!(
            "R={r} and W={w} must each be between 1 and the keyspace's replication factor N={n} (keyspace {})",
            ks.name
        )));
    }
    Ok((r, w))
}

/// One node a write is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTarget {
    /// Where the write goes.
    pub node: NodeId,
    /// The intended owner when `node` stores it as a hint.
    pub hint_for: Option<NodeId>,
}

/// The write plan: the N replicas, with each one that is down replaced by the next live node
/// beyond N as a hint holder; returns the targets and the unused live fallbacks, in order.
pub fn plan_write(
    preference: &[NodeId],
    n: usize,
    coordinator: NodeId,
    is_alive: impl Fn(NodeId) -> bool,
) -> (Vec<WriteTarget>, VecDeque<NodeId>) {
    let n = n.min(preference.len());
    let mut fallbacks: VecDeque<NodeId> = preference[n..]
        .iter()
        .copied()
        .filter(|&f| is_alive(f))
        .collect();
    let mut targets = Vec::with_capacity(n);
    for &owner in &preference[..n] {
        if is_alive(owner) || owner == coordinator {
            targets.push(WriteTarget {
                node: owner,
                hint_for: None,
            });
        } else {
            // The next live node past the replicas holds the hint; with none left (a cluster
            // of N nodes) the coordinator keeps it, as Cassandra's coordinators do.
            targets.push(WriteTarget {
                node: fallbacks.pop_front().unwrap_or(coordinator),
                hint_for: Some(owner),
            });
        }
    }
    (targets, fallbacks)
}

/// The quorum of one write as its answers arrive: counts distinct acking nodes against W and
/// chooses the node that holds a hint in place of a send that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteQuorum {
    coordinator: NodeId,
    w: usize,
    fallbacks: VecDeque<NodeId>,
    acked: BTreeSet<NodeId>,
    reached: bool,
}

impl WriteQuorum {
    /// A write that needs `w` acks, with the live fallbacks that `plan_write` left unused.
    pub fn new(coordinator: NodeId, w: usize, fallbacks: VecDeque<NodeId>) -> Self {
        Self {
            coordinator,
            w,
            fallbacks,
            acked: BTreeSet::new(),
            reached: false,
        }
    }

    /// Records an ack from `node`; returns the number of acks the first time they reach W (the
    /// moment the caller is answered), `None` otherwise.
    pub fn ack(&mut self, node: NodeId) -> Option<usize> {
        // W counts distinct nodes: a coordinator that stores a replica and a hint acks once.
        self.acked.insert(node);
        if !self.reached && self.acked.len() >= self.w {
            self.reached = true;
            return Some(self.acked.len());
        }
        None
    }

    /// Records that the send to `failed` did not succeed; returns the hint write that replaces
    /// it, or `None` when no node is left to hold it.
    pub fn fail(&mut self, failed: WriteTarget) -> Option<WriteTarget> {
        let owner = failed.hint_for.unwrap_or(failed.node);
        // Each fallback is used at most once, and the coordinator is chosen only for a send that
        // was not its own, which bounds the sends of one write. A failure of the coordinator's
        // own store is not retried.
        let node = match self.fallbacks.pop_front() {
            Some(f) => f,
            None if failed.node != self.coordinator => self.coordinator,
            None => return None,
        };
        Some(WriteTarget {
            node,
            hint_for: Some(owner),
        })
    }

    /// Distinct nodes that acked so far.
    pub fn acks(&self) -> usize {
        self.acked.len()
    }
}

/// The replicas a read may ask, in order: the coordinator's own replica first when it has one
/// (it answers without the network), then the other live replicas in preference order.
pub fn read_candidates(
    preference: &[NodeId],
    n: usize,
    coordinator: NodeId,
    is_alive: impl Fn(NodeId) -> bool,
) -> VecDeque<NodeId> {
    let replicas = &preference[..n.min(preference.len())];
    replicas
        .iter()
        .copied()
        .filter(|&node| node == coordinator)
        .chain(
            replicas
                .iter()
                .copied()
                .filter(|&node| node != coordinator && is_alive(node)),
        )
        .collect()
}

/// The quorum of one read as its answers arrive: at most R asks are outstanding, and each
/// failed ask is replaced by the next candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuorum {
    r: usize,
    candidates: VecDeque<NodeId>,
    answers: Vec<(NodeId, Option<ApRecord>)>,
    /// Replicas that answered with a corrupt copy (no usable record).
    corrupt: Vec<NodeId>,
    /// Asks that failed (no answer at all).
    failed: usize,
    /// The keyspace's replication factor N, when known (see `with_replicas`).
    replicas: Option<usize>,
}

/// How a read ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Fewer than R replicas answered.
    Unavailable {
        /// How many did.
        answered: usize,
    },
    /// Every replica answered, and every answer was a corrupt copy: no good copy is left.
    Lost {
        /// The replicas whose copies are corrupt.
        corrupt: Vec<NodeId>,
    },
    /// R replicas answered.
    Resolved {
        /// The newest record among the answers (`None` when no replica holds the key).
        newest: Option<ApRecord>,
        /// Answering replicas whose copy `newest` supersedes, that have none, or whose copy is
        /// corrupt: read repair writes `newest` back to them.
        stale: Vec<NodeId>,
    },
}

impl ReadQuorum {
    /// A read that needs `r` answers from `candidates` (see `read_candidates`); returns it with
    /// the replicas to ask first.
    pub fn start(mut candidates: VecDeque<NodeId>, r: usize) -> (Self, Vec<NodeId>) {
        let first = candidates.drain(..r.min(candidates.len())).collect();
        let quorum = Self {
            r,
            candidates,
            answers: Vec::with_capacity(r),
            corrupt: Vec::new(),
            failed: 0,
            replicas: None,
        };
        (quorum, first)
    }

    /// Tells the quorum the keyspace's replication factor N: when all N replicas answered and
    /// some copies were corrupt, the good answers decide the read (see `finish`).
    pub fn with_replicas(mut self, n: usize) -> Self {
        self.replicas = Some(n);
        self
    }

    /// Records that `node` answered with a corrupt copy; returns the next replica to ask, if
    /// one is left. A corrupt answer is not one of the R answers: the R good ones still have to
    /// overlap every write quorum.
    pub fn corrupt(&mut self, node: NodeId) -> Option<NodeId> {
        self.corrupt.push(node);
        self.candidates.pop_front()
    }

    /// Records `node`'s answer (`None`: it holds no record of the key).
    pub fn answer(&mut self, node: NodeId, record: Option<ApRecord>) {
        self.answers.push((node, record));
    }

    /// Records that one ask failed; returns the next replica to ask, if one is left.
    pub fn fail(&mut self) -> Option<NodeId> {
        self.failed += 1;
        self.candidates.pop_front()
    }

    /// The outcome once every ask has finished.
    ///
    /// R good answers resolve the read. Fewer resolve it too when every one of the N replicas
    /// answered (good or corrupt) and at least one was good: every surviving copy was
    /// consulted, so what a corrupt copy held beyond them is lost whatever the read does. When
    /// all N answered and all were corrupt the outcome is `Lost`.
    pub fn finish(self) -> ReadOutcome {
        let good = self.answers.len();
        let all_answered = self
            .replicas
            .is_some_and(|n| self.failed == 0 && good + self.corrupt.len() >= n);
        if good == 0 && all_answered && !self.corrupt.is_empty() {
            return ReadOutcome::Lost {
                corrupt: self.corrupt,
            };
        }
        if good < self.r && !(good > 0 && all_answered) {
            return ReadOutcome::Unavailable { answered: good };
        }
        let newest = self
            .answers
            .iter()
            .filter_map(|(_, rec)| rec.as_ref())
            .fold(None, |acc: Option<ApRecord>, rec| {
                Some(lww::merge_opt(acc.as_ref(), rec))
            });
        let stale = match &newest {
            None => Vec::new(),
            Some(newest) => self
                .answers
                .iter()
                .filter(|(_, rec)| rec.as_ref().is_none_or(|r| lww::supersedes(newest, r)))
                .map(|(node, _)| *node)
                .chain(self.corrupt.iter().copied())
                .collect(),
        };
        ReadOutcome::Resolved { newest, stale }
    }
}

/// What replay does with one hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintAction {
    /// Send it to its owner.
    Deliver,
    /// Older than the hint window: drop it, anti-entropy repairs the owner.
    Expire,
    /// The owner is down: keep it.
    Wait,
}

/// Decides what to do with a hint written at `hint_ms` (HLC physical time).
pub fn hint_action(owner_alive: bool, hint_ms: u64, now_ms: u64, max_age_ms: u64) -> HintAction {
    if hint_ms.saturating_add(max_age_ms) < now_ms {
        HintAction::Expire
    } else if owner_alive {
        HintAction::Deliver
    } else {
        HintAction::Wait
    }
}

/// The co-replica this node exchanges a partition with in anti-entropy round `round`: `None`
/// when this node is not among the partition's first `n` nodes or none of the others is alive;
/// otherwise the live co-replicas taken in turn, so rounds rotate through them.
pub fn anti_entropy_peer(
    preference: &[NodeId],
    n: usize,
    me: NodeId,
    round: usize,
    is_alive: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let replicas = &preference[..n.min(preference.len())];
    if !replicas.contains(&me) {
        return None;
    }
    let peers: Vec<NodeId> = replicas
        .iter()
        .copied()
        .filter(|&p| p != me && is_alive(p))
        .collect();
    if peers.is_empty() {
        return None;
    }
    Some(peers[round % peers.len()])
}

/// Of our records in some Merkle leaves, those a peer lacks or holds an older copy of, given
/// the peer's records in the same leaves.
pub fn records_to_push(ours: Vec<ApRecord>, theirs: &[ApRecord]) -> Vec<ApRecord> {
    let their_by_key: BTreeMap<&[u8], &ApRecord> =
        theirs.iter().map(|r| (r.key.as_slice(), r)).collect();
    ours.into_iter()
        .filter(|r| {
            their_by_key
                .get(r.key.as_slice())
                .is_none_or(|t| lww::supersedes(r, t))
        })
        .collect()
}

/// The purge horizon of a partition at this node: the earliest of the start stamps of the
/// latest complete anti-entropy exchange with each other replica of the partition (`synced`),
/// or `None` while some other replica has had none. With no other replica nothing constrains
/// purging (`LATEST`).
pub fn purge_horizon(
    preference: &[NodeId],
    n: usize,
    me: NodeId,
    synced: impl Fn(NodeId) -> Option<Hlc>,
) -> Option<Hlc> {
    preference[..n.min(preference.len())]
        .iter()
        .filter(|&&peer| peer != me)
        .try_fold(LATEST, |horizon, &peer| {
            synced(peer).map(|s| horizon.min(s))
        })
}

/// Whether a tombstone written at `written_ms` (HLC physical time) and stored here at `arrival`
/// may be purged at `now_ms`: it is past the grace period, and it was stored before every
/// exchange that makes up `horizon` started, so every other replica holds it, something newer,
/// or nothing for its key (docs/cap-modes.md, "A delete never comes back").
pub fn tombstone_purgeable(
    written_ms: u64,
    arrival: Hlc,
    now_ms: u64,
    grace_ms: u64,
    horizon: Option<Hlc>,
) -> bool {
    written_ms.saturating_add(grace_ms) < now_ms && horizon.is_some_and(|h| arrival < h)
}
