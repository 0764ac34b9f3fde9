//! `CpEngine::read_index`: the leader read index behind every linearizable CP read. Leadership
//! is confirmed by rounds shared among the reads waiting on them (`cp::read_index::ReadRounds`,
//! whose module doc holds the linearizability argument); each read then waits until the round's
//! index is applied here and, after a restart, until the boot-time log is applied.

use super::{CpEngine, CpError, Group, MAX_LEADER_WAITS};
use crate::cp::read_index::{ReadRounds, RoundFn};
use crate::cp::types::Raft;
use crate::types::NodeId;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Read-index rounds a group runs at once. One would make a read that arrives mid-round wait
/// for that round and then its own (measured: 0.91x the unshared rate at 64 clients over 32
/// groups, about two reads per group in flight); two lets it start at once in that case, and
/// reads share rounds only when more than two are waiting.
const READ_ROUNDS_IN_FLIGHT: usize = 2;

/// What one read-index round of a group found; every read of the round gets a copy.
#[derive(Debug, Clone)]
pub(super) enum Confirmation {
    /// A quorum confirmed this node's leadership after the round started: reads may answer
    /// once `read_index` is applied (`applied` was already applied when the round started).
    Leader {
        /// The log index reads must see applied.
        read_index: Option<u64>,
        /// Applied when the round started.
        applied: Option<u64>,
    },
    /// This node does not lead the group (openraft's `ForwardToLeader`).
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Too few followers answered the heartbeats.
    QuorumNotEnough(String),
    /// Raft stopped or failed.
    Fatal(String),
    /// The round took longer than a whole request may.
    TimedOut,
}

/// The read-index rounds of a group served by `raft`; a round gives up after `round_timeout`
/// (then the next one starts) so a stuck core cannot hold later reads forever.
pub(super) fn rounds(raft: Raft, round_timeout: Duration) -> ReadRounds<Confirmation> {
    let round: RoundFn<Confirmation> = Box::new(move || {
        let raft = raft.clone();
        Box::pin(async move {
            match tokio::time::timeout(round_timeout, raft.get_read_log_id()).await {
                Err(_) => Confirmation::TimedOut,
                Ok(Ok((read, applied))) => Confirmation::Leader {
                    read_index: read.map(|l| l.index),
                    applied: applied.map(|l| l.index),
                },
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Confirmation::NotLeader {
                        leader: f.leader_id,
                    }
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    Confirmation::QuorumNotEnough(q.to_string())
                }
                Ok(Err(RaftError::Fatal(e))) => Confirmation::Fatal(e.to_string()),
            }
        })
    });
    ReadRounds::new(round, READ_ROUNDS_IN_FLIGHT)
}

impl CpEngine {
    /// Read-index rounds a group has started on this node (diagnostics and tests: with many
    /// reads waiting, far fewer than the reads served).
    pub fn read_rounds(&self, group: u64) -> Option<u64> {
        self.groups.get(&group).map(|g| g.reads.rounds_started())
    }

    /// Confirms leadership with a quorum (in a round that started after this call, shared with
    /// the other reads waiting for it) and waits until the read index is applied.
    pub(super) async fn read_index(&self, group: &Group, deadline: Instant) -> Result<(), CpError> {
        let partition = group.spec.partition;
        let budget = deadline.saturating_duration_since(Instant::now());
        for _ in 0..=MAX_LEADER_WAITS {
            let res = tokio::time::timeout_at(deadline, group.reads.next_round()).await;
            match res {
                Err(_) | Ok(Some(Confirmation::TimedOut)) => {
                    return Err(self.expired(
                        group,
                        budget,
                        "no quorum confirmed the read index before the deadline",
                    ))
                }
                Ok(None) => {
                    return Err(CpError::Raft {
                        partition,
                        message: "the read-index round stopped (node shutting down)".into(),
                    })
                }
                Ok(Some(Confirmation::Leader {
                    read_index,
                    applied,
                })) => {
                    if read_index > applied {
                        self.applied_at_least(group, read_index, deadline, budget)
                            .await?;
                    }
                    return self.caught_up_since_boot(group, deadline, budget).await;
                }
                Ok(Some(Confirmation::NotLeader { leader })) => {
                    self.not_leader_or_wait(group, leader, deadline, budget)
                        .await?;
                }
                Ok(Some(Confirmation::QuorumNotEnough(q))) => {
                    return Err(self.unavailable(group, &q));
                }
                Ok(Some(Confirmation::Fatal(message))) => {
                    return Err(CpError::Raft { partition, message })
                }
            }
        }
        Err(self.unavailable(group, "leadership kept changing"))
    }

    /// Waits (by `deadline`) until `index` is applied to this node's state machine.
    async fn applied_at_least(
        &self,
        group: &Group,
        index: Option<u64>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), CpError> {
        self.wait_for_metrics(
            group,
            deadline,
            budget,
            "the read index was not applied before the deadline",
            |m| m.last_applied.map(|l| l.index) >= index,
        )
        .await
    }

    /// Waits (by `deadline`) until `done` holds for the group's Raft metrics; `missed` says
    /// what did not happen when the deadline passes.
    async fn wait_for_metrics(
        &self,
        group: &Group,
        deadline: Instant,
        budget: Duration,
        missed: &str,
        done: impl Fn(&openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> bool,
    ) -> Result<(), CpError> {
        let mut rx = group.raft.metrics();
        let reached = tokio::time::timeout_at(deadline, async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(CpError::Raft {
                partition: group.spec.partition,
                message: "raft stopped".into(),
            }),
            Err(_) => Err(self.expired(group, budget, missed)),
        }
    }

    /// Waits (by `deadline`) until the log this node had at start-up is applied.
    ///
    /// Why: applies and the committed index are not flushed (the log is, and replays them), so
    /// a restarted node's state machine and `committed` can be behind writes it acknowledged.
    /// A leader restored at start-up in its old term (openraft does this when its vote was
    /// committed) takes max(its first entry of that term, committed) as the read index, which
    /// can then lie below acknowledged writes: the read would miss them (found as a write lost
    /// "at the snapshot index" by the all-nodes restart test, where the snapshot is what the
    /// state machine falls back to). Every acknowledged write is in a leader's log, so once a
    /// leader applied its whole boot-time log a read index covers them. openraft's
    /// `save_committed` documents this duty: "do not serve reads until a new commit".
    async fn caught_up_since_boot(
        &self,
        group: &Group,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), CpError> {
        let Some(boot) = group.boot_last_log else {
            return Ok(());
        };
        if group.caught_up.load(Ordering::Acquire) {
            return Ok(());
        }
        // Elected after start-up: a log entry the boot-time log may hold that never committed
        // can be gone, so the index alone could wait for a later write.
        self.wait_for_metrics(
            group,
            deadline,
            budget,
            "the log this node had at start-up was not applied before the deadline",
            |m| m.last_applied.map(|l| l.index) >= Some(boot) || m.current_term > group.boot_term,
        )
        .await?;
        group.caught_up.store(true, Ordering::Release);
        Ok(())
    }
}
