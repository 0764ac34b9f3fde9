//! The filters of `MemNet`: what a message is (`MessageKind`), which messages a filter matches
//! (senders, receivers, kinds, legs) and what happens to them (`Fault`), and how an undelivered
//! message fails before each seam turns that into its own error type (`Failure`).

use kv_server::cp::network::RaftKind;
use kv_server::types::NodeId;
use std::collections::BTreeSet;
use std::time::Duration;

/// What a message carries, for filters and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// A Raft message (append, vote or snapshot chunk).
    Raft(RaftKind),
    /// An AP replica write (coordinator, hint, repair, replay, anti-entropy push).
    ApWrite,
    /// An AP replica read.
    ApRead,
    /// AP anti-entropy: a partition's Merkle leaves.
    MerkleLeaves,
    /// AP anti-entropy: a partition's records in some leaves.
    MerkleRange,
}

/// Which messages a filter matches by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kinds {
    /// Every message.
    Any,
    /// Raft messages only.
    Raft,
    /// AP messages only.
    Ap,
    /// One kind only.
    Only(MessageKind),
}

impl Kinds {
    pub(super) fn matches(self, kind: MessageKind) -> bool {
        match self {
            Kinds::Any => true,
            Kinds::Raft => matches!(kind, MessageKind::Raft(_)),
            Kinds::Ap => !matches!(kind, MessageKind::Raft(_)),
            Kinds::Only(k) => k == kind,
        }
    }
}

/// Nodes a filter matches: all of them, or a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// Any node.
    All,
    /// These nodes.
    Set(BTreeSet<NodeId>),
}

impl Nodes {
    /// The nodes in `ids`.
    pub fn of(ids: &[NodeId]) -> Nodes {
        Nodes::Set(ids.iter().copied().collect())
    }

    pub(super) fn contains(&self, id: NodeId) -> bool {
        match self {
            Nodes::All => true,
            Nodes::Set(s) => s.contains(&id),
        }
    }
}

/// What happens to a matching message leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Lost: a request is never delivered, an answer never arrives; the sender learns at once
    /// (as with a reset connection).
    Drop,
    /// Lost without a trace: the sender waits until its own timeout.
    Hang,
    /// Delivered late.
    Delay(Duration),
    /// Delivered to a node that answers with this error without acting on the request (on the
    /// answer leg it replaces the answer: the request was applied).
    Refuse(String),
}

/// Which legs of a message a filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legs {
    /// Requests and answers.
    Both,
    /// Requests only.
    Requests,
    /// Answers only.
    Answers,
}

/// One filter: `legs` sent from `from` to `to` of messages of `kinds` suffer `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Senders of the leg.
    pub from: Nodes,
    /// Receivers of the leg.
    pub to: Nodes,
    /// Message kinds.
    pub kinds: Kinds,
    /// Requests, answers or both.
    pub legs: Legs,
    /// What happens.
    pub fault: Fault,
}

impl Filter {
    /// Every leg of every kind from `from` to `to` suffers `fault`.
    pub fn between(from: Nodes, to: Nodes, fault: Fault) -> Filter {
        Filter {
            from,
            to,
            kinds: Kinds::Any,
            legs: Legs::Both,
            fault,
        }
    }

    pub(super) fn matches(
        &self,
        from: NodeId,
        to: NodeId,
        kind: MessageKind,
        request: bool,
    ) -> bool {
        let leg = match self.legs {
            Legs::Both => true,
            Legs::Requests => request,
            Legs::Answers => !request,
        };
        leg && from != to
            && self.from.contains(from)
            && self.to.contains(to)
            && self.kinds.matches(kind)
    }
}

/// Handle of an installed filter, for `MemNet::remove_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FilterId(pub(super) u64);

/// Why a message got no answer, before each seam turns it into its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request was dropped by a filter: not delivered.
    Dropped,
    /// The receiver is not on the network (removed, down, or never added).
    Down,
    /// The receiver answered with an error (its own, or a `Refuse` filter's).
    Refused(String),
    /// The request was delivered and carried out; its answer was dropped.
    AnswerLost,
}
