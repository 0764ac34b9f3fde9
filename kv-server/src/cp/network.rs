//! The Raft transport seam and openraft's network on top of it. `RaftTransport` carries one
//! opaque, codec-encoded Raft message for one group to one node and returns the encoded answer;
//! the gRPC layer implements it with `Internal.Raft`, tests with an in-memory router that can
//! drop traffic between chosen nodes. Invariants: every outgoing call has a timeout (a partitioned
//! peer never blocks replication), and transport failures reach openraft as `Unreachable`
//! (back off) or `NetworkError` (retry), never as a panic.

use crate::cp::codec::{self, CodecError};
use crate::cp::types::{Raft, TypeConfig};
use crate::types::NodeId;
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Which Raft RPC a message carries (the `kind` field of `Internal.Raft`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftKind {
    /// AppendEntries (also heartbeats).
    Append,
    /// RequestVote.
    Vote,
    /// One chunk of InstallSnapshot.
    Snapshot,
}

impl RaftKind {
    /// The wire code: 1 = append, 2 = vote, 3 = snapshot.
    pub fn code(self) -> u32 {
        match self {
            RaftKind::Append => 1,
            RaftKind::Vote => 2,
            RaftKind::Snapshot => 3,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u32) -> Option<RaftKind> {
        match code {
            1 => Some(RaftKind::Append),
            2 => Some(RaftKind::Vote),
            3 => Some(RaftKind::Snapshot),
            _ => None,
        }
    }
}

/// Why a Raft message could not be delivered or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now (down, partitioned, no connection); openraft backs off.
    #[error("node {to} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        to: NodeId,
        /// Why.
        reason: String,
    },
    /// The message may have been sent but no valid answer came back; openraft retries.
    #[error("network error talking to node {to}: {reason}")]
    Network {
        /// The peer.
        to: NodeId,
        /// Why.
        reason: String,
    },
}

/// Carries one encoded Raft message for `group` to node `to`; resolves to the encoded answer.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `payload` and waits for the peer's answer (the caller applies the timeout).
    fn send(
        &self,
        to: NodeId,
        group: u64,
        kind: RaftKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// Creates openraft clients of one group over a shared transport.
pub struct NetworkFactory {
    /// This node.
    pub from: NodeId,
    /// The group every client of this factory talks for.
    pub group: u64,
    /// The shared transport.
    pub transport: Arc<dyn RaftTransport>,
    /// Upper bound on any single RPC.
    pub rpc_timeout: Duration,
    /// Pause before retrying an unreachable peer.
    pub unreachable_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupClient {
        GroupClient {
            from: self.from,
            target,
            group: self.group,
            transport: self.transport.clone(),
            rpc_timeout: self.rpc_timeout,
            unreachable_backoff: self.unreachable_backoff,
        }
    }
}

/// openraft's client of one peer for one group.
pub struct GroupClient {
    from: NodeId,
    target: NodeId,
    group: u64,
    transport: Arc<dyn RaftTransport>,
    rpc_timeout: Duration,
    unreachable_backoff: Duration,
}

impl GroupClient {
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode("raft request", req).map_err(|e| NetworkError::new(&e))?;
        let timeout = option.hard_ttl().min(self.rpc_timeout);
        let sent = self.transport.send(self.target, self.group, kind, payload);
        let bytes = match tokio::time::timeout(timeout, sent).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: match kind {
                        RaftKind::Append => RPCTypes::AppendEntries,
                        RaftKind::Vote => RPCTypes::Vote,
                        RaftKind::Snapshot => RPCTypes::InstallSnapshot,
                    },
                    id: self.from,
                    target: self.target,
                    timeout,
                }))
            }
            Ok(Err(e @ TransportError::Unreachable { .. })) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e @ TransportError::Network { .. })) => {
                return Err(RPCError::Network(NetworkError::new(&e)))
            }
            Ok(Ok(bytes)) => bytes,
        };
        let answer: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft response", &bytes).map_err(|e| NetworkError::new(&e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.unreachable_backoff))
    }
}

/// Receive side: decodes one message, hands it to the group's Raft, encodes its answer
/// (`Result<response, RaftError>`, so the sender sees remote errors as such).
pub async fn serve(raft: &Raft, kind: RaftKind, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    match kind {
        RaftKind::Append => {
            let req: AppendEntriesRequest<TypeConfig> = codec::decode("append entries", payload)?;
            codec::encode("append entries response", &raft.append_entries(req).await)
        }
        RaftKind::Vote => {
            let req: VoteRequest<NodeId> = codec::decode("vote", payload)?;
            codec::encode("vote response", &raft.vote(req).await)
        }
        RaftKind::Snapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = codec::decode("snapshot", payload)?;
            codec::encode("snapshot response", &raft.install_snapshot(req).await)
        }
    }
}
