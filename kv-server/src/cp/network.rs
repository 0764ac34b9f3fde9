//! The Raft transport seam and openraft's network on top of it. `RaftTransport` carries one
//! opaque, codec-encoded Raft message for one group to one node and returns the encoded answer;
//! the gRPC layer implements it with `Internal.Raft` and, for AppendEntries, batched per peer
//! (`cp::batch`) in `Internal.RaftBatch` calls; tests with an in-memory router that can
//! drop traffic between chosen nodes. Invariants: every outgoing call has a timeout (a partitioned
//! peer never blocks replication); transport failures reach openraft as `Unreachable`
//! (back off) or `NetworkError` (retry), never as a panic; an AppendEntries whose encoding is
//! over the byte budget is never sent: openraft gets `PayloadTooLarge` with the number of
//! entries that fit, and sends fewer (a single entry is always sent).

use crate::cp::codec::{self, CodecError};
use crate::cp::types::{Raft, TypeConfig};
use crate::types::NodeId;
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
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
    /// Byte budget of one encoded AppendEntries (`kv_core::limits::max_raft_append_bytes`).
    pub max_append_bytes: usize,
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
            max_append_bytes: self.max_append_bytes,
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
    max_append_bytes: usize,
}

/// How many leading entries of `entries` fit in `budget` bytes once encoded (at least one:
/// an entry is never split, and a single one is always within the peer message limit).
fn entries_that_fit(entries: &[crate::cp::types::Entry], budget: usize) -> u64 {
    let mut used = 0usize;
    let mut fit = 0u64;
    for entry in entries {
        // An entry that cannot be encoded counts as too large; the send reports the error.
        let size = codec::encode("log entry", entry).map_or(usize::MAX, |b| b.len());
        used = used.saturating_add(size);
        if used > budget {
            break;
        }
        fit += 1;
    }
    fit.max(1)
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
        self.send(kind, payload, option).await
    }

    async fn send<Resp, E>(
        &self,
        kind: RaftKind,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
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
        let payload = codec::encode("append entries", &rpc).map_err(|e| NetworkError::new(&e))?;
        if payload.len() > self.max_append_bytes && rpc.entries.len() > 1 {
            // Too large for one message (and for one heartbeat interval): openraft resends the
            // range in pieces of this many entries.
            let all_but_one = rpc.entries.len() as u64 - 1;
            let fit = entries_that_fit(&rpc.entries, self.max_append_bytes).min(all_but_one);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.send(RaftKind::Append, payload, &option).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp::types::{Entry, Request};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use std::sync::Mutex;

    /// Answers every AppendEntries with success and records the size of what it was sent.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    impl RaftTransport for Recorder {
        fn send(
            &self,
            _to: NodeId,
            _group: u64,
            _kind: RaftKind,
            payload: Vec<u8>,
        ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
            self.0.lock().unwrap().push(payload.len());
            let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                Ok(AppendEntriesResponse::Success);
            let bytes = codec::encode("answer", &answer).unwrap();
            Box::pin(async move { Ok(bytes) })
        }
    }

    fn entry(index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Put {
                keyspace: 1,
                key: b"k".to_vec(),
                value: vec![7; value_bytes],
            }),
        }
    }

    fn append(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    async fn client(budget: usize) -> (GroupClient, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let mut factory = NetworkFactory {
            from: 1,
            group: 7,
            transport: recorder.clone(),
            rpc_timeout: Duration::from_secs(5),
            unreachable_backoff: Duration::from_millis(10),
            max_append_bytes: budget,
        };
        (factory.new_client(2, &BasicNode::default()).await, recorder)
    }

    fn option() -> RPCOption {
        RPCOption::new(Duration::from_secs(5))
    }

    #[test]
    fn byte_strings_encode_as_before_serde_bytes() {
        /// `Request::Put` as it was declared before its fields became byte strings.
        #[derive(serde::Serialize)]
        enum Plain {
            Put {
                keyspace: u32,
                key: Vec<u8>,
                value: Vec<u8>,
            },
        }
        let value: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let old = codec::encode(
            "plain",
            &Plain::Put {
                keyspace: 1,
                key: b"k".to_vec(),
                value: value.clone(),
            },
        )
        .unwrap();
        let new = Request::Put {
            keyspace: 1,
            key: b"k".to_vec(),
            value,
        };
        assert_eq!(codec::encode("new", &new).unwrap(), old);
        assert_eq!(codec::decode::<Request>("old", &old).unwrap(), new);
    }

    #[tokio::test]
    async fn a_batch_over_the_budget_is_refused_with_the_entries_that_fit() {
        let (mut c, sent) = client(1000).await;
        let batch = (1..=5).map(|i| entry(i, 300)).collect();
        match c.append_entries(append(batch), option()).await {
            Err(RPCError::PayloadTooLarge(too_large)) => {
                assert_eq!(
                    too_large.entries_hint(),
                    3,
                    "3 entries of ~310 bytes fit in 1000"
                );
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        assert!(sent.0.lock().unwrap().is_empty(), "nothing was sent");

        let batch = (1..=3).map(|i| entry(i, 300)).collect();
        c.append_entries(append(batch), option()).await.unwrap();
        assert_eq!(
            sent.0.lock().unwrap().len(),
            1,
            "a batch within the budget is sent"
        );
    }

    #[tokio::test]
    async fn one_entry_is_always_sent_and_a_hint_always_shrinks_the_batch() {
        let (mut c, sent) = client(1000).await;
        c.append_entries(append(vec![entry(1, 5000)]), option())
            .await
            .unwrap();
        assert_eq!(sent.0.lock().unwrap().len(), 1);

        // The entries fit but the message around them does not: the hint is 1, never the
        // whole batch (which openraft would send again, forever).
        let pair = vec![entry(1, 300), entry(2, 300)];
        let whole = codec::encode("t", &append(pair.clone())).unwrap().len();
        let entries: usize = pair
            .iter()
            .map(|e| codec::encode("t", e).unwrap().len())
            .sum();
        assert!(entries < whole);
        let (mut c, _) = client(whole - 1).await;
        match c.append_entries(append(pair), option()).await {
            Err(RPCError::PayloadTooLarge(too_large)) => assert_eq!(too_large.entries_hint(), 1),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // Big entries: one per message.
        let (mut c, _) = client(1000).await;
        match c
            .append_entries(append(vec![entry(1, 5000), entry(2, 5000)]), option())
            .await
        {
            Err(RPCError::PayloadTooLarge(too_large)) => assert_eq!(too_large.entries_hint(), 1),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }
}
