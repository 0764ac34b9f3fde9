//! `CpEngine`: the multi-Raft manager of one node. It runs one `openraft::Raft` per CP group this
//! node is a member of, all over one shared storage `Engine`, and serves put/delete/cas and reads
//! on them. Invariants:
//! - every client call finishes by its deadline: a side without a quorum answers `Unavailable`
//!   naming the partition, a follower answers `NotLeader` with the leader it knows;
//! - a write is acknowledged only after openraft reports it committed and applied;
//! - a read is linearizable (leader read index, no log write) unless the caller asks for `stale`;
//! - groups are fixed at construction; the map is never mutated, so lookups take no lock.

use crate::cp::balance;
use crate::cp::codec;
pub use crate::cp::config::{CpConfig, DEFAULT_MAX_PAYLOAD_ENTRIES};
pub use crate::cp::error::CpError;
use crate::cp::group;
pub use crate::cp::group::{
    group_id, GroupSpec, GroupStatus, META_GROUP, META_KEYSPACE, META_PARTITION,
};
use crate::cp::heartbeat;
use crate::cp::keys::KEYSPACE_PREFIX;
use crate::cp::network::{self, NetworkFactory, RaftKind, RaftTransport};
use crate::cp::read_index::ReadRounds;
use crate::cp::runtime::{self, derive_seed};
use crate::cp::state_machine::SmReader;
use crate::cp::store::open_group;
use crate::cp::types::{CasOutcome, Expected, KeyspaceOutcome, Raft, Request, Response};
use crate::storage::Engine;
use crate::types::{KeyspaceDef, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::ServerState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod backup;
mod read;
mod repair;

pub use repair::{CpRepair, RecordFetcher};

/// How many times one call waits for a new leader before giving up (the deadline bounds it too).
pub const MAX_LEADER_WAITS: usize = 3;

struct Group {
    spec: GroupSpec,
    raft: Raft,
    reader: SmReader,
    /// Last log index on this node's disk when the group started. Applies and the committed
    /// index are not flushed, so after a restart they may be behind writes that were
    /// acknowledged; linearizable reads wait until this index is applied (see `read_index`).
    boot_last_log: Option<u64>,
    /// Term of this node's vote when the group started: a leader of a later term was elected
    /// since, and its first entry (which its read index covers) follows every earlier write.
    boot_term: u64,
    /// Set once `boot_last_log` has been applied, so later reads skip the check.
    caught_up: AtomicBool,
    /// Leadership confirmations shared by the linearizable reads waiting on them.
    reads: ReadRounds<read::Confirmation>,
}

/// The multi-Raft manager of one node.
pub struct CpEngine {
    node_id: NodeId,
    config: CpConfig,
    groups: BTreeMap<u64, Group>,
    unsafe_skip_read_index: AtomicBool,
    /// The leader-balance task (`cp::balance`) and the heartbeat tick (`cp::heartbeat`),
    /// stopped at shutdown.
    balancer: tokio::task::AbortHandle,
    /// How a corrupt record is fetched from a peer (`repair.rs`); unset, it stays `DATA_LOSS`.
    fetcher: std::sync::OnceLock<Arc<dyn RecordFetcher>>,
}

impl CpEngine {
    /// Starts every group of `groups` that has this node as a member, over `engine`, and
    /// initializes each with its membership (an already initialized group keeps its state).
    pub async fn start(
        node_id: NodeId,
        engine: Arc<dyn Engine>,
        transport: Arc<dyn RaftTransport>,
        config: CpConfig,
        groups: Vec<GroupSpec>,
    ) -> Result<CpEngine, CpError> {
        let raft_config = config.raft_config()?;
        let mut map = BTreeMap::new();
        for spec in groups {
            if !spec.members.contains(&node_id) {
                continue;
            }
            let group = group_id(spec.keyspace, spec.partition);
            let raft_err = |e: &dyn std::fmt::Display| CpError::Raft {
                partition: spec.partition,
                message: e.to_string(),
            };
            let (log, sm) = open_group(&engine, group).map_err(|e| raft_err(&e))?;
            let reader = sm.reader();
            let mut boot_log = log.clone();
            let boot_last_log = boot_log
                .get_log_state()
                .await
                .map_err(|e| raft_err(&e))?
                .last_log_id
                .map(|l| l.index);
            let boot_term = boot_log
                .read_vote()
                .await
                .map_err(|e| raft_err(&e))?
                .map_or(0, |v| v.leader_id().term);
            let factory = NetworkFactory {
                from: node_id,
                group,
                transport: transport.clone(),
                rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
                unreachable_backoff: Duration::from_millis(config.unreachable_backoff_ms),
                max_append_bytes: config.max_append_bytes,
            };
            let new_raft = Raft::new(node_id, raft_config.clone(), factory, log, sm);
            let raft = match config.rng_seed {
                Some(root) => runtime::with_seed(derive_seed(root, node_id, group), new_raft).await,
                None => new_raft.await,
            }
            .map_err(|e| raft_err(&e))?;
            group::initialize(&raft, &spec, node_id, &config)
                .await
                .map_err(|e| raft_err(&e))?;
            map.insert(
                group,
                Group {
                    spec,
                    reads: read::rounds(raft.clone(), config.request_timeout()),
                    raft,
                    reader,
                    caught_up: AtomicBool::new(boot_last_log.is_none()),
                    boot_last_log,
                    boot_term,
                },
            );
        }
        tracing::info!(node_id, groups = map.len(), "cp engine started");
        let owned = map
            .iter()
            .filter(|(_, g)| g.spec.members.first() == Some(&node_id))
            .map(|(id, g)| (*id, g.raft.clone()))
            .collect();
        let balance = balance::run(node_id, owned, config.election_timeout_max_ms);
        let ticked = (config.shared_heartbeat).then(|| map.values().map(|g| g.raft.clone()));
        let tick_ms = config.heartbeat_interval_ms;
        let with_tick = heartbeat::alongside(balance, ticked.map(Iterator::collect), tick_ms);
        let balancer = tokio::spawn(with_tick);
        Ok(CpEngine {
            node_id,
            config,
            groups: map,
            unsafe_skip_read_index: AtomicBool::new(false),
            balancer: balancer.abort_handle(),
            fetcher: std::sync::OnceLock::new(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &CpConfig {
        &self.config
    }

    /// **Deliberate bug, for tests only:** when set, linearizable reads skip the read index and
    /// read the local state machine of whoever believes it leads — so an isolated old leader
    /// serves stale data. It exists to prove the linearizability checker catches stale reads.
    pub fn set_unsafe_skip_read_index(&self, on: bool) {
        self.unsafe_skip_read_index.store(on, Ordering::Relaxed);
    }

    fn group(&self, keyspace: u32, partition: u32) -> Result<&Group, CpError> {
        self.groups
            .get(&group_id(keyspace, partition))
            .ok_or(CpError::UnknownGroup {
                node: self.node_id,
                keyspace,
                partition,
            })
    }

    /// Sets `key`; returns the write's revision.
    pub async fn put(
        &self,
        keyspace: u32,
        partition: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<u64, CpError> {
        let req = Request::Put {
            keyspace,
            key,
            value,
        };
        written(
            partition,
            self.execute(keyspace, partition, req, self.deadline())
                .await?,
        )
    }

    /// Removes `key`; returns the delete's revision.
    pub async fn delete(
        &self,
        keyspace: u32,
        partition: u32,
        key: Vec<u8>,
    ) -> Result<u64, CpError> {
        let req = Request::Delete { keyspace, key };
        written(
            partition,
            self.execute(keyspace, partition, req, self.deadline())
                .await?,
        )
    }

    /// Sets `key` to `new_value` if it matches `expected`.
    pub async fn cas(
        &self,
        keyspace: u32,
        partition: u32,
        key: Vec<u8>,
        expected: Expected,
        new_value: Vec<u8>,
    ) -> Result<CasOutcome, CpError> {
        let req = Request::Cas {
            keyspace,
            key,
            expected,
            new_value,
        };
        match self
            .execute(keyspace, partition, req, self.deadline())
            .await?
        {
            Response::Cas(outcome) => Ok(outcome),
            other => Err(CpError::Raft {
                partition,
                message: format!("state machine answered {other:?} to a cas"),
            }),
        }
    }

    /// Adds a keyspace definition through the metadata group (this node must lead it).
    pub async fn create_keyspace(&self, def: KeyspaceDef) -> Result<KeyspaceOutcome, CpError> {
        let req = Request::CreateKeyspace(def);
        match self
            .execute(META_KEYSPACE, META_PARTITION, req, self.deadline())
            .await?
        {
            Response::Keyspace(outcome) => Ok(outcome),
            other => Err(CpError::Raft {
                partition: META_PARTITION,
                message: format!("state machine answered {other:?} to create_keyspace"),
            }),
        }
    }

    /// Every keyspace definition, in name order: linearizable unless `stale`.
    pub async fn list_keyspaces(&self, stale: bool) -> Result<Vec<KeyspaceDef>, CpError> {
        let group = self.group(META_KEYSPACE, META_PARTITION)?;
        if !stale {
            self.read_index(group, self.deadline()).await?;
        }
        group
            .reader
            .scan_prefix(KEYSPACE_PREFIX)?
            .into_iter()
            .map(|(_, v, _)| Ok(codec::decode("keyspace", &v)?))
            .collect()
    }

    /// Reads `key`: linearizable unless `stale`, which reads this replica as it is.
    pub async fn get(
        &self,
        keyspace: u32,
        partition: u32,
        key: &[u8],
        stale: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, CpError> {
        self.read(keyspace, partition, key, stale, self.deadline())
            .await
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout()
    }

    /// Replicates one request through the group's leader (this node) and returns what the state
    /// machine answered, by `deadline`.
    pub async fn execute(
        &self,
        keyspace: u32,
        partition: u32,
        req: Request,
        deadline: Instant,
    ) -> Result<Response, CpError> {
        let group = self.group(keyspace, partition)?;
        let budget = deadline.saturating_duration_since(Instant::now());
        for _ in 0..=MAX_LEADER_WAITS {
            let proposed = std::time::Instant::now();
            let res = tokio::time::timeout_at(deadline, group.raft.client_write(req.clone())).await;
            if matches!(res, Ok(Ok(_))) {
                crate::metrics::metrics()
                    .raft_commit_seconds
                    .observe(proposed.elapsed().as_secs_f64());
            } else {
                crate::metrics::metrics().raft_proposals_failed.inc();
            }
            match res {
                Err(_) => {
                    return Err(self.expired(
                        group,
                        budget,
                        "the write was not committed by a quorum before the deadline; \
                         it may still apply",
                    ))
                }
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    self.not_leader_or_wait(group, f.leader_id, deadline, budget)
                        .await?;
                }
                Ok(Err(e)) => {
                    return Err(CpError::Raft {
                        partition,
                        message: e.to_string(),
                    })
                }
            }
        }
        Err(self.unavailable(group, "leadership kept changing"))
    }

    /// Reads `key` by `deadline`: through the read index unless `stale`.
    pub async fn read(
        &self,
        keyspace: u32,
        partition: u32,
        key: &[u8],
        stale: bool,
        deadline: Instant,
    ) -> Result<Option<(Vec<u8>, u64)>, CpError> {
        let group = self.group(keyspace, partition)?;
        if !stale {
            if self.unsafe_skip_read_index.load(Ordering::Relaxed) {
                let leader = group.raft.metrics().borrow().current_leader;
                if leader != Some(self.node_id) {
                    return Err(CpError::NotLeader { partition, leader });
                }
            } else {
                self.read_index(group, deadline).await?;
            }
        }
        self.read_or_repair(group, key, deadline).await
    }

    /// A known other leader is a `NotLeader`; no known leader means waiting (until the
    /// deadline) for an election, after which the caller retries.
    async fn not_leader_or_wait(
        &self,
        group: &Group,
        leader: Option<NodeId>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), CpError> {
        let partition = group.spec.partition;
        if let Some(leader) = leader.filter(|l| *l != self.node_id) {
            return Err(CpError::NotLeader {
                partition,
                leader: Some(leader),
            });
        }
        let mut rx = group.raft.metrics();
        let elected = tokio::time::timeout_at(deadline, async {
            loop {
                if let Some(l) = rx.borrow_and_update().current_leader {
                    return Some(l);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match elected {
            Ok(Some(l)) if l == self.node_id => Ok(()),
            Ok(Some(l)) => Err(CpError::NotLeader {
                partition,
                leader: Some(l),
            }),
            Ok(None) => Err(CpError::Raft {
                partition,
                message: "raft stopped".into(),
            }),
            // Only a ForwardToLeader (nothing appended) leads here, so nothing was proposed.
            Err(_) => Err(self.expired_unproposed(
                group,
                budget,
                "no leader was elected before the deadline; nothing was proposed",
            )),
        }
    }

    /// The error of a call whose deadline passed after `budget`. A budget of at least one
    /// election timeout was long enough for a healthy group to elect and commit: the partition
    /// is `Unavailable` from here (the minority side of a partition answers this way). A
    /// shorter one proves nothing about the group: the deadline is what failed.
    fn expired(&self, group: &Group, budget: Duration, what: &str) -> CpError {
        let election = Duration::from_millis(self.config.election_timeout_max_ms);
        if budget >= election {
            return self.unavailable(group, what);
        }
        CpError::DeadlineExceeded {
            partition: group.spec.partition,
            proposed: true,
            reason: format!(
                "{what} ({} ms given; the group needs up to {} ms to elect a leader)",
                budget.as_millis(),
                election.as_millis()
            ),
        }
    }

    /// Like `expired`, for a call that proposed nothing: `NoLeader` rather than `Unavailable`.
    fn expired_unproposed(&self, group: &Group, budget: Duration, what: &str) -> CpError {
        match self.expired(group, budget, what) {
            CpError::Unavailable { partition, reason } => CpError::NoLeader { partition, reason },
            CpError::DeadlineExceeded {
                partition, reason, ..
            } => CpError::DeadlineExceeded {
                partition,
                reason,
                proposed: false,
            },
            other => other,
        }
    }

    fn unavailable(&self, group: &Group, what: &str) -> CpError {
        CpError::Unavailable {
            partition: group.spec.partition,
            reason: format!(
                "{what} (node {} sees no majority of members {:?})",
                self.node_id, group.spec.members
            ),
        }
    }

    /// Handles one Raft message from a peer (called by the internal gRPC service).
    pub async fn handle_raft(
        &self,
        group: u64,
        kind: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, CpError> {
        let kind = RaftKind::from_code(kind).ok_or(CpError::UnknownKind(kind))?;
        let g = self.groups.get(&group).ok_or(CpError::UnknownRaftGroup {
            node: self.node_id,
            group,
        })?;
        Ok(network::serve(&g.raft, kind, payload).await?)
    }

    /// The leader of a group as this node knows it.
    pub fn leader_of(&self, group: u64) -> Option<NodeId> {
        self.groups
            .get(&group)
            .and_then(|g| g.raft.metrics().borrow().current_leader)
    }

    /// Groups this node currently leads.
    pub fn groups_led(&self) -> BTreeSet<u64> {
        self.groups
            .iter()
            .filter(|(_, g)| g.raft.metrics().borrow().current_leader == Some(self.node_id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids of every group this node runs.
    pub fn group_ids(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// A status line per group.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(id, g)| {
                let m = g.raft.metrics().borrow().clone();
                GroupStatus {
                    group: *id,
                    keyspace: g.spec.keyspace,
                    partition: g.spec.partition,
                    members: g.spec.members.clone(),
                    leader: m.current_leader,
                    term: m.current_term,
                    role: match m.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Candidate => "candidate",
                        ServerState::Learner => "learner",
                        ServerState::Shutdown => "shutdown",
                    },
                    last_log_index: m.last_log_index,
                    last_applied_index: m.last_applied.map(|l| l.index),
                    snapshot_index: m.snapshot.map(|l| l.index),
                    purged_index: m.purged.map(|l| l.index),
                }
            })
            .collect()
    }

    /// The openraft handle of a group (tests and diagnostics).
    pub fn raft(&self, group: u64) -> Option<&Raft> {
        self.groups.get(&group).map(|g| &g.raft)
    }

    /// Stops every group; later calls fail with `CpError::Raft`.
    pub async fn shutdown(&self) {
        self.balancer.abort();
        for (id, g) in &self.groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = id, error = %e, "raft shutdown failed");
            }
        }
    }
}

impl Drop for CpEngine {
    fn drop(&mut self) {
        self.balancer.abort();
    }
}

fn written(partition: u32, resp: Response) -> Result<u64, CpError> {
    match resp {
        Response::Written { revision } => Ok(revision),
        other => Err(CpError::Raft {
            partition,
            message: format!("state machine answered {other:?} to a write"),
        }),
    }
}
