//! The placement ring: which nodes hold each of the Q fixed partitions, in preference order.
//!
//! **Architecture invariant:** a `Ring` is a pure function of (membership, T, Q). It never
//! depends on the order members are listed in, on the process, or on Rust's randomized hasher,
//! so every node (and every client) computes the same ring from the same membership.
//!
//! # Construction
//! 1. Members are sorted by name. Each member claims T tokens on the 64-bit ring:
//!    `key_hash(len(name) ‖ name ‖ i)` for i in 0..T (the placement hash of
//!    [`kv_core::placement`]); ties between equal tokens break on name.
//! 2. Partition p covers hashes `[p·2⁶⁴/Q, (p+1)·2⁶⁴/Q)`; its point is the last hash of that
//!    range. Walking clockwise from the point, the distinct members in the order their tokens
//!    appear form p's **token order** (Dynamo's preference list).
//! 3. Tokens alone are a random placement, too uneven with few partitions (20 nodes, 32 × 3
//!    replicas: the busiest node gets 8–10 where the mean is 4.8). So the preference list is
//!    built **one position (layer) at a time**, for positions 1..=[`MAX_BALANCED_REPLICAS`],
//!    under a bounded load: after layer k every member holds at most
//!    `cap(k) = max(ceil(k·Q/n), floor(LOAD_SLACK·k·Q/n))` of the first-k positions
//!    (`LOAD_SLACK` = 1.25: a little slack lets more partitions keep their token order, which
//!    halves movement at 8–15 members). In each layer every partition proposes its
//!    not-yet-chosen members; proposals are granted greedily in one global order (position in
//!    the partition's token order, then a stable hash of (partition, name)); a member at its
//!    cap refuses. A partition left without a member gets one through an augmenting path
//!    (another partition of this layer gives up its member and takes its next choice), which
//!    keeps every cap. Only if no such path exists (never for the tested sizes; reported by
//!    [`Ring::exceeded_load_cap`]) does the partition take its first remaining choice.
//! 4. Positions after [`MAX_BALANCED_REPLICAS`] follow the plain token order: they are the
//!    sloppy-quorum fallbacks, used only while owners are down.
//!
//! # Guarantees
//! - Every preference list holds every member exactly once (so its first N are distinct).
//! - For every N ≤ [`MAX_BALANCED_REPLICAS`], unless `exceeded_load_cap()`, each member holds
//!   at most `cap(N)` of the Q·N replicas, so max/mean ≤ 1.25 whenever Q·N/n ≥ 4 (with the
//!   defaults: all n ≤ 24), and owns (first position, the preferred Raft leader) at most
//!   `cap(1)` partitions.
//! - Movement is measured, not proved (bounded-load consistent hashing trades movement for
//!   balance): adding or removing one of n members copies at most `ceil(Q·N/n) + Q·N/4`
//!   replicas, asserted for 3..=20 members with sequential and random names. Measured worst
//!   with the defaults: at most 1.25x the unavoidable `Q·N/n` up to 6 members, about 1.5x at
//!   7–10, 2–3.5x at 11–20 (at most 17 replicas beyond the unavoidable, of 96).

use crate::types::{Member, NodeId};
use kv_core::placement::{key_hash, partition_for_key};
use std::collections::{BTreeMap, VecDeque};

/// Largest accepted partition count Q.
pub const MAX_PARTITIONS: u32 = 1 << 12;
/// Largest accepted number of tokens per node T.
pub const MAX_TOKENS_PER_NODE: u32 = 1 << 10;
/// Largest accepted membership.
pub const MAX_MEMBERS: usize = 256;
/// Preference-list positions built under the bounded load; replication factors up to this are
/// balanced, later positions (fallbacks) follow the token order.
pub const MAX_BALANCED_REPLICAS: usize = 7;
/// Load cap slack: after layer k a member may hold `max(ceil(k·Q/n), floor(LOAD_SLACK·k·Q/n))`
/// positions. Some slack lets more partitions keep their token order, which is what keeps
/// movement low when membership changes.
const LOAD_SLACK: f64 = 1.25;

/// Why a ring cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Q must be a power of two so a partition is the top bits of the key hash.
    #[error("partition count {0} must be a power of two between 1 and {MAX_PARTITIONS}")]
    BadPartitionCount(u32),
    /// T must be at least 1.
    #[error("tokens per node {0} must be between 1 and {MAX_TOKENS_PER_NODE}")]
    BadTokenCount(u32),
    /// A ring needs at least one member.
    #[error("the ring has no members: give at least one peer")]
    NoMembers,
    /// Too many members.
    #[error("{0} members exceed the limit of {MAX_MEMBERS}")]
    TooManyMembers(usize),
    /// Two members share a name.
    #[error("member name {0:?} appears more than once in the peer list; names must be unique")]
    DuplicateName(String),
    /// Two members share an id.
    #[error("node id {id} is used by both {first:?} and {second:?}; ids must be unique")]
    DuplicateId {
        /// The shared id.
        id: NodeId,
        /// Name of one member with it.
        first: String,
        /// Name of another member with it.
        second: String,
    },
}

/// Load statistics of the ring for one replication factor (what `kv ring` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct RingStats {
    /// Replication factor the figures are for.
    pub replicas: usize,
    /// Partition replicas each member holds.
    pub replicas_per_node: BTreeMap<NodeId, u32>,
    /// Partitions each member is the owner (first position) of.
    pub owned_per_node: BTreeMap<NodeId, u32>,
    /// Mean replicas per member.
    pub mean: f64,
    /// Replicas held by the busiest member.
    pub max: u32,
    /// Replicas held by the least busy member.
    pub min: u32,
    /// max / mean (1.0 is perfect balance).
    pub imbalance: f64,
}

/// The placement of Q partitions on the members; see the module doc for how it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    members: Vec<Member>,
    partitions: u32,
    tokens_per_node: u32,
    preference: Vec<Vec<NodeId>>,
    over_cap: bool,
}

impl Ring {
    /// Builds the ring of `members` with Q = `partitions` and T = `tokens_per_node`.
    pub fn new(
        members: &[Member],
        partitions: u32,
        tokens_per_node: u32,
    ) -> Result<Ring, RingError> {
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::BadPartitionCount(partitions));
        }
        if tokens_per_node == 0 || tokens_per_node > MAX_TOKENS_PER_NODE {
            return Err(RingError::BadTokenCount(tokens_per_node));
        }
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        if members.len() > MAX_MEMBERS {
            return Err(RingError::TooManyMembers(members.len()));
        }
        let mut sorted = members.to_vec();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in sorted.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(RingError::DuplicateName(pair[0].name.clone()));
            }
        }
        let mut by_id: BTreeMap<NodeId, &str> = BTreeMap::new();
        for m in &sorted {
            if let Some(first) = by_id.insert(m.id, &m.name) {
                return Err(RingError::DuplicateId {
                    id: m.id,
                    first: first.to_string(),
                    second: m.name.clone(),
                });
            }
        }

        let token_orders = token_orders(&sorted, partitions, tokens_per_node);
        let (orders, over_cap) = balance(&sorted, &token_orders);
        let preference = orders
            .into_iter()
            .map(|order| order.into_iter().map(|i| sorted[i].id).collect())
            .collect();
        Ok(Ring {
            members: sorted,
            partitions,
            tokens_per_node,
            preference,
            over_cap,
        })
    }

    /// Number of partitions Q.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Tokens per member T.
    pub fn tokens_per_node(&self) -> u32 {
        self.tokens_per_node
    }

    /// Members, sorted by name.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The partition owning `key` (the same function the client routes with).
    pub fn partition_for_key(&self, key: &[u8]) -> u32 {
        partition_for_key(key, self.partitions)
    }

    /// Every member, most preferred first: the first N are the replicas, the rest the
    /// sloppy-quorum fallbacks in order. Panics if `partition` ≥ Q.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        &self.preference[partition as usize]
    }

    /// The first `n` members of the preference list (all members if fewer).
    pub fn replicas(&self, partition: u32, n: usize) -> &[NodeId] {
        let list = self.preference_list(partition);
        &list[..n.min(list.len())]
    }

    /// The most preferred member of the partition (its preferred Raft leader).
    pub fn owner(&self, partition: u32) -> NodeId {
        self.preference_list(partition)[0]
    }

    /// True if some layer could not keep its load cap (balance is then not guaranteed).
    pub fn exceeded_load_cap(&self) -> bool {
        self.over_cap
    }

    /// Load statistics for replication factor `replicas`.
    pub fn stats(&self, replicas: usize) -> RingStats {
        let mut replicas_per_node: BTreeMap<NodeId, u32> =
            self.members.iter().map(|m| (m.id, 0)).collect();
        let mut owned_per_node = replicas_per_node.clone();
        for p in 0..self.partitions {
            for id in self.replicas(p, replicas) {
                *replicas_per_node.entry(*id).or_default() += 1;
            }
            *owned_per_node.entry(self.owner(p)).or_default() += 1;
        }
        let total: u32 = replicas_per_node.values().sum();
        let mean = f64::from(total) / self.members.len() as f64;
        let max = replicas_per_node.values().copied().max().unwrap_or(0);
        let min = replicas_per_node.values().copied().min().unwrap_or(0);
        RingStats {
            replicas,
            replicas_per_node,
            owned_per_node,
            mean,
            max,
            min,
            imbalance: if mean > 0.0 {
                f64::from(max) / mean
            } else {
                1.0
            },
        }
    }
}

/// The hash of token `index` of the member called `name`. The length prefix keeps
/// (name, index) pairs from colliding byte-wise.
fn token(name: &str, index: u32) -> u64 {
    let mut bytes = Vec::with_capacity(8 + name.len());
    bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(&index.to_be_bytes());
    key_hash(&bytes)
}

/// The last hash of partition `p`'s range.
fn partition_point(p: u32, partitions: u32) -> u64 {
    let width = (1u128 << 64) / u128::from(partitions);
    ((u128::from(p) + 1) * width - 1) as u64
}

/// For each partition, member indices (into the name-sorted members) in clockwise token order.
fn token_orders(members: &[Member], partitions: u32, tokens_per_node: u32) -> Vec<Vec<usize>> {
    let mut tokens: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| (0..tokens_per_node).map(move |t| (token(&m.name, t), i)))
        .collect();
    // Members are sorted by name, so the index breaks equal tokens on name.
    tokens.sort_unstable();
    (0..partitions)
        .map(|p| {
            let start = tokens.partition_point(|&(h, _)| h < partition_point(p, partitions));
            let mut seen = vec![false; members.len()];
            let mut order = Vec::with_capacity(members.len());
            for &(_, i) in tokens[start..].iter().chain(&tokens[..start]) {
                if !seen[i] {
                    seen[i] = true;
                    order.push(i);
                    if order.len() == members.len() {
                        break;
                    }
                }
            }
            order
        })
        .collect()
}

/// Builds the preference lists layer by layer under the bounded load (module doc, step 3).
/// Returns the lists and whether any cap had to be exceeded.
fn balance(members: &[Member], token_orders: &[Vec<usize>]) -> (Vec<Vec<usize>>, bool) {
    let n = members.len();
    let q = token_orders.len();
    let layers = n.min(MAX_BALANCED_REPLICAS);
    // Stable per-(partition, member) tie-break: depends on nothing else in the membership.
    let tiebreak: Vec<Vec<u64>> = (0..q)
        .map(|p| {
            members
                .iter()
                .map(|m| {
                    let mut bytes = (p as u32).to_be_bytes().to_vec();
                    bytes.extend_from_slice(m.name.as_bytes());
                    key_hash(&bytes)
                })
                .collect()
        })
        .collect();
    let mut chosen: Vec<Vec<usize>> = vec![Vec::with_capacity(n); q];
    let mut in_list = vec![vec![false; n]; q];
    let mut load = vec![0usize; n];
    let mut over_cap = false;

    for layer in 1..=layers {
        let cap = load_cap(layer, q, n);
        let mut assigned: Vec<Option<usize>> = vec![None; q];
        let remaining = |p: usize, in_list: &[Vec<bool>]| -> Vec<usize> {
            token_orders[p]
                .iter()
                .copied()
                .filter(|&i| !in_list[p][i])
                .collect()
        };
        let mut proposals: Vec<(usize, u64, usize, usize)> = Vec::new();
        for p in 0..q {
            for (rank, &i) in token_orders[p].iter().enumerate() {
                if !in_list[p][i] {
                    proposals.push((rank, tiebreak[p][i], p, i));
                }
            }
        }
        proposals.sort_unstable();
        for &(_, _, p, i) in &proposals {
            if assigned[p].is_none() && load[i] < cap {
                assigned[p] = Some(i);
                load[i] += 1;
            }
        }
        for p in 0..q {
            if assigned[p].is_some() {
                continue;
            }
            if !augment(p, cap, &mut assigned, &mut load, &|p| {
                remaining(p, &in_list)
            }) {
                // No way to keep every cap: take the first choice and report it.
                let i = remaining(p, &in_list)[0];
                assigned[p] = Some(i);
                load[i] += 1;
                over_cap = true;
            }
        }
        for (p, a) in assigned.into_iter().enumerate() {
            let i = a.expect("every partition got a member in this layer");
            chosen[p].push(i);
            in_list[p][i] = true;
        }
    }
    // Fallback positions follow the token order.
    for p in 0..q {
        for &i in &token_orders[p] {
            if !in_list[p][i] {
                chosen[p].push(i);
            }
        }
    }
    (chosen, over_cap)
}

/// The most first-`layer` positions one member may hold (see [`LOAD_SLACK`]).
fn load_cap(layer: usize, partitions: usize, members: usize) -> usize {
    let tight = (layer * partitions).div_ceil(members);
    let slack = (LOAD_SLACK * (layer * partitions) as f64 / members as f64).floor() as usize;
    tight.max(slack)
}

/// Finds a member for unassigned partition `start` by a breadth-first augmenting path: some
/// partition gives its member to the previous one and takes a member below `cap`. Returns false
/// if no path exists. Candidates are tried in token order so the path prefers good choices.
fn augment(
    start: usize,
    cap: usize,
    assigned: &mut [Option<usize>],
    load: &mut [usize],
    candidates: &dyn Fn(usize) -> Vec<usize>,
) -> bool {
    let q = assigned.len();
    // parent[p] = (partition that takes p's current member, that member).
    let mut parent: Vec<Option<(usize, usize)>> = vec![None; q];
    let mut visited = vec![false; q];
    visited[start] = true;
    let mut queue = VecDeque::from([start]);
    while let Some(p) = queue.pop_front() {
        for i in candidates(p) {
            if assigned[p] == Some(i) {
                continue;
            }
            if load[i] < cap {
                load[i] += 1;
                let mut cur = p;
                let mut take = i;
                loop {
                    let old = assigned[cur];
                    assigned[cur] = Some(take);
                    match parent[cur] {
                        None => break,
                        Some((prev, member)) => {
                            debug_assert_eq!(old, Some(member));
                            cur = prev;
                            take = member;
                        }
                    }
                }
                return true;
            }
            for other in 0..q {
                if !visited[other] && assigned[other] == Some(i) {
                    visited[other] = true;
                    parent[other] = Some((p, i));
                    queue.push_back(other);
                }
            }
        }
    }
    false
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
