//! The engines' seams on a `MemNet`: the CP `RaftTransport`, the AP `ApTransport` and
//! `Liveness`, and `ApService`, the AP replica side as the network calls it. Each turns a
//! `Failure` into the error its engine expects.

use super::{Endpoints, Failure, MemNet, MessageKind};
use futures::future::BoxFuture;
use futures::FutureExt;
use kv_server::ap::{ApEngine, ApRecord, ApTransport, Liveness, RangePage};
use kv_server::cp::network::{RaftKind, RaftTransport, TransportError as RaftError};
use kv_server::types::NodeId;
use std::sync::Arc;

/// The AP replica side as the network sees it (implemented by `ApEngine`).
pub trait ApService: Send + Sync + 'static {
    /// Stores a replica (or a hint for `hint_for`).
    fn write(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<(), String>;
    /// Reads this node's replica of `key`.
    fn read(&self, keyspace_id: u32, key: &[u8]) -> Result<Option<ApRecord>, String>;
    /// This node's Merkle leaf hashes of one partition.
    fn merkle_leaves(&self, keyspace_id: u32, partition: u32) -> Result<Vec<u64>, String>;
    /// One page of this node's records of one partition in `leaves`, after the key `after`.
    fn merkle_range(
        &self,
        keyspace_id: u32,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
    ) -> Result<RangePage, String>;
}

impl ApService for ApEngine {
    fn write(
        &self,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> Result<(), String> {
        self.apply_replica_blocking(keyspace_id, record, hint_for)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn read(&self, keyspace_id: u32, key: &[u8]) -> Result<Option<ApRecord>, String> {
        self.read_replica(keyspace_id, key)
            .map_err(|e| e.to_string())
    }
    fn merkle_leaves(&self, keyspace_id: u32, partition: u32) -> Result<Vec<u64>, String> {
        ApEngine::merkle_leaves(self, keyspace_id, partition).map_err(|e| e.to_string())
    }
    fn merkle_range(
        &self,
        keyspace_id: u32,
        partition: u32,
        leaves: &[u32],
        after: Option<&[u8]>,
    ) -> Result<RangePage, String> {
        ApEngine::merkle_range(self, keyspace_id, partition, leaves, after)
            .map_err(|e| e.to_string())
    }
}

/// One node's `RaftTransport` on a `MemNet`.
pub(super) struct MemRaftTransport {
    pub(super) from: NodeId,
    pub(super) net: Arc<MemNet>,
}

impl RaftTransport for MemRaftTransport {
    fn send(
        &self,
        to: NodeId,
        group: u64,
        kind: RaftKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, RaftError>> {
        let (from, net) = (self.from, self.net.clone());
        async move {
            let serve = |e: Endpoints| {
                let engine = e.cp?.upgrade()?;
                Some(
                    async move {
                        engine
                            .handle_raft(group, kind.code(), &payload)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .boxed(),
                )
            };
            net.carry(from, to, MessageKind::Raft(kind), serve)
                .await
                .map_err(|f| raft_error(to, f))
        }
        .boxed()
    }
}

/// openraft backs off from an unreachable peer and retries a network error at once.
fn raft_error(to: NodeId, failure: Failure) -> RaftError {
    match failure {
        Failure::Dropped => RaftError::Unreachable {
            to,
            reason: "partitioned".into(),
        },
        Failure::Down => RaftError::Unreachable {
            to,
            reason: "down".into(),
        },
        Failure::Refused(reason) => RaftError::Network { to, reason },
        Failure::AnswerLost => RaftError::Network {
            to,
            reason: "answer dropped".into(),
        },
    }
}

/// One node's `ApTransport` on a `MemNet`.
pub(super) struct MemApTransport {
    pub(super) from: NodeId,
    pub(super) net: Arc<MemNet>,
}

type ApResult<T> = BoxFuture<'static, Result<T, kv_server::ap::TransportError>>;

impl MemApTransport {
    fn call<T: Send + 'static>(
        &self,
        to: NodeId,
        kind: MessageKind,
        serve: impl FnOnce(Arc<dyn ApService>) -> Result<T, String> + Send + 'static,
    ) -> ApResult<T> {
        use kv_server::ap::TransportError as E;
        let (from, net) = (self.from, self.net.clone());
        async move {
            let r = net
                .carry(from, to, kind, |e| {
                    let ap = e.ap?;
                    Some(futures::future::ready(serve(ap)).boxed())
                })
                .await;
            match r {
                Ok(v) => Ok(v),
                Err(Failure::Dropped) => Err(E::Unreachable {
                    node: to,
                    reason: "link cut by the test".into(),
                }),
                Err(Failure::Down) => Err(E::Unreachable {
                    node: to,
                    reason: "node down or not on the network".into(),
                }),
                Err(Failure::Refused(message)) => Err(E::Remote { node: to, message }),
                // A real caller notices a lost answer only by its own timeout.
                Err(Failure::AnswerLost) => futures::future::pending().await,
            }
        }
        .boxed()
    }
}

impl ApTransport for MemApTransport {
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> ApResult<()> {
        self.call(to, MessageKind::ApWrite, move |ap| {
            ap.write(keyspace_id, record, hint_for)
        })
    }

    fn read(&self, to: NodeId, keyspace_id: u32, key: Vec<u8>) -> ApResult<Option<ApRecord>> {
        self.call(to, MessageKind::ApRead, move |ap| {
            ap.read(keyspace_id, &key)
        })
    }

    fn merkle_leaves(&self, to: NodeId, keyspace_id: u32, partition: u32) -> ApResult<Vec<u64>> {
        self.call(to, MessageKind::MerkleLeaves, move |ap| {
            ap.merkle_leaves(keyspace_id, partition)
        })
    }

    fn merkle_range(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
    ) -> ApResult<RangePage> {
        let net = self.net.clone();
        let answer = self.call(to, MessageKind::MerkleRange, move |ap| {
            ap.merkle_range(keyspace_id, partition, &leaves, after.as_deref())
        });
        async move {
            let page = answer.await?;
            net.lock().merkle_range_records += page.records.len() as u64;
            Ok(page)
        }
        .boxed()
    }
}

/// A perfect failure detector from one node's point of view.
pub(super) struct NetLiveness {
    pub(super) from: NodeId,
    pub(super) net: Arc<MemNet>,
}

impl Liveness for NetLiveness {
    fn is_alive(&self, node: NodeId) -> bool {
        node == self.from
            || (self.net.reachable(self.from, node) && !self.net.lock().suspected.contains(&node))
    }
}
