//! Peer links: this node's outgoing side of the cluster. `PeerLinks` owns the dialer, one
//! `PeerLink` per member (its lazily dialed gRPC channel), the injected faults and the liveness
//! view. It is built before the node and handed to the transports and to the node, so nothing
//! below the node needs the node. **Architecture invariant:** every message that fault
//! injection may cut (Raft, AP replication, forwarded requests) leaves through
//! `PeerLinks::open`, the one place where `--chaos` drops and delays apply; heartbeats check
//! `Faults::drops` themselves because they are never delayed.
//!
//! Per-peer concerns (socket options of dialed connections) belong on `PeerLink`; Raft
//! message batching is per peer too, in the gRPC transport (`transport.rs`, one `RaftBatcher`
//! per member), which sends every batch through `open` like any other message. Every client made here has explicit message size limits derived from the value
//! limit (`kv_core::limits`), never tonic's 4 MiB default.

use crate::faults::Faults;
use crate::membership::Membership;
use crate::types::{Member, NodeId};
use kv_core::limits::{
    max_peer_message_bytes, max_request_bytes, max_response_bytes, DEFAULT_MAX_VALUE_BYTES,
};
use kv_core::net::Dialer;
use kv_proto::internal::internal_client::InternalClient;
use kv_proto::v1::kv_client::KvClient;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;

/// Why a message could not leave for a peer. Every variant means it was certainly not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No member of the cluster has this id.
    #[error("unknown node id {0}")]
    UnknownPeer(NodeId),
    /// The dialer refused the peer's address.
    #[error("node {name}: {reason}")]
    Dial {
        /// The peer's name.
        name: String,
        /// What the dialer said.
        reason: String,
    },
    /// Fault injection drops traffic to this peer.
    #[error("traffic to {peer} is dropped by fault injection")]
    Dropped {
        /// The peer's id.
        to: NodeId,
        /// The peer, described for messages ("n2 (127.0.0.1:7002)").
        peer: String,
    },
}

/// The link to one member: who it is and its channel, dialed on first use and kept.
pub struct PeerLink {
    member: Member,
    channel: Mutex<Option<Channel>>,
}

impl PeerLink {
    fn new(member: Member) -> Self {
        Self {
            member,
            channel: Mutex::new(None),
        }
    }

    /// The member this link leads to.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The link's channel; a dial that fails is not remembered, so the next call dials again.
    fn channel(&self, dialer: &dyn Dialer) -> Result<Channel, LinkError> {
        let mut channel = self.channel.lock().expect("peer link lock");
        if let Some(ch) = channel.as_ref() {
            return Ok(ch.clone());
        }
        // Dialing is lazy (no I/O here), so holding the lock across it blocks nobody for long.
        let ch = dialer
            .peer_channel(&self.member.name, &self.member.peer_addr)
            .map_err(|reason| LinkError::Dial {
                name: self.member.name.clone(),
                reason,
            })?;
        *channel = Some(ch.clone());
        Ok(ch)
    }
}

/// This node's links to every member (itself included), with the faults and the liveness view
/// that apply to them.
pub struct PeerLinks {
    me: NodeId,
    links: BTreeMap<NodeId, PeerLink>,
    dialer: Arc<dyn Dialer>,
    faults: Faults,
    membership: Membership,
    max_value_bytes: usize,
}

impl PeerLinks {
    /// Links from node `me` to every member of `peers`; nothing is dialed yet, every peer is
    /// of unknown liveness and no fault is injected.
    pub fn new(me: NodeId, peers: &[Member], dialer: Arc<dyn Dialer>) -> Self {
        Self {
            me,
            links: peers
                .iter()
                .map(|m| (m.id, PeerLink::new(m.clone())))
                .collect(),
            dialer,
            faults: Faults::default(),
            membership: Membership::new(me, peers),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }

    /// The same links for a node whose values are at most `max_value_bytes` (the default is
    /// `DEFAULT_MAX_VALUE_BYTES`): every message size limit follows from it.
    pub fn with_max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.max_value_bytes = max_value_bytes;
        self
    }

    /// The value limit the message size limits derive from.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Every member, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.links.values().map(PeerLink::member)
    }

    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.links.get(&id).map(PeerLink::member)
    }

    /// The link to member `id`.
    pub fn link(&self, id: NodeId) -> Option<&PeerLink> {
        self.links.get(&id)
    }

    /// Describes a node for error messages: "n2 (127.0.0.1:7002)".
    pub fn describe(&self, id: NodeId) -> String {
        self.member(id)
            .map(|m| format!("{} ({})", m.name, m.addr))
            .unwrap_or_else(|| format!("node {id}"))
    }

    /// The faults injected on this node's outgoing traffic.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// What this node knows of its peers' liveness.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The channel to `to`, ignoring faults (for callers that apply them their own way).
    pub fn channel(&self, to: NodeId) -> Result<Channel, LinkError> {
        self.links
            .get(&to)
            .ok_or(LinkError::UnknownPeer(to))?
            .channel(&*self.dialer)
    }

    /// The channel for one message to `to`, after the fault filter: refused when traffic to
    /// `to` is dropped, after the injected delay otherwise.
    pub async fn open(&self, to: NodeId) -> Result<Channel, LinkError> {
        if self.faults.drops(to) {
            return Err(LinkError::Dropped {
                to,
                peer: self.describe(to),
            });
        }
        self.faults.delay(to).await;
        self.channel(to)
    }

    /// Public-API client to `to`, after the fault filter (requests are forwarded through it:
    /// a request this node accepted is never too large for its peer).
    pub async fn kv_client(&self, to: NodeId) -> Result<KvClient<Channel>, LinkError> {
        Ok(KvClient::new(self.open(to).await?)
            .max_encoding_message_size(max_request_bytes(self.max_value_bytes))
            .max_decoding_message_size(max_response_bytes(self.max_value_bytes)))
    }

    /// Internal-API client to `to`, after the fault filter.
    pub async fn internal_client(&self, to: NodeId) -> Result<InternalClient<Channel>, LinkError> {
        Ok(self.internal_client_on(self.open(to).await?))
    }

    /// Internal-API client on `channel`, with the node-to-node message limits.
    pub fn internal_client_on(&self, channel: Channel) -> InternalClient<Channel> {
        let limit = max_peer_message_bytes(self.max_value_bytes);
        InternalClient::new(channel)
            .max_encoding_message_size(limit)
            .max_decoding_message_size(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// Dials lazily over TCP and counts dials; addresses in `refuse` fail to dial.
    #[derive(Default)]
    struct CountingDialer {
        dials: AtomicUsize,
        refuse: Mutex<BTreeSet<String>>,
    }

    impl Dialer for CountingDialer {
        fn channel(&self, addr: &str) -> Result<Channel, String> {
            self.dials.fetch_add(1, Ordering::SeqCst);
            if self.refuse.lock().unwrap().contains(addr) {
                return Err(format!("refusing {addr}"));
            }
            Ok(kv_core::net::endpoint_for(addr)?.connect_lazy())
        }
    }

    fn links() -> (PeerLinks, Arc<CountingDialer>) {
        let peers: Vec<Member> = (1..=3)
            .map(|i| Member {
                id: i,
                name: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
                peer_addr: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        let dialer = Arc::new(CountingDialer::default());
        (PeerLinks::new(1, &peers, dialer.clone()), dialer)
    }

    #[tokio::test]
    async fn a_link_is_dialed_once_and_a_failed_dial_is_retried() {
        let (links, dialer) = links();
        links.channel(2).unwrap();
        links.open(2).await.unwrap();
        links.kv_client(2).await.unwrap();
        assert_eq!(dialer.dials.load(Ordering::SeqCst), 1, "one dial per peer");

        dialer
            .refuse
            .lock()
            .unwrap()
            .insert("127.0.0.1:7003".into());
        let err = links.channel(3).unwrap_err();
        assert_eq!(err.to_string(), "node n3: refusing 127.0.0.1:7003");
        dialer.refuse.lock().unwrap().clear();
        links.channel(3).unwrap();
        assert_eq!(
            dialer.dials.load(Ordering::SeqCst),
            3,
            "the failed dial is not kept"
        );
    }

    #[tokio::test]
    async fn an_unknown_peer_is_refused() {
        let (links, dialer) = links();
        assert_eq!(links.channel(9).unwrap_err(), LinkError::UnknownPeer(9));
        assert_eq!(
            links.open(9).await.unwrap_err().to_string(),
            "unknown node id 9"
        );
        assert_eq!(links.describe(9), "node 9");
        assert_eq!(dialer.dials.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_dropped_link_refuses_messages_without_dialing_until_healed() {
        let (links, dialer) = links();
        links
            .faults()
            .set(BTreeSet::from([2]), std::collections::BTreeMap::new());
        let err = links.internal_client(2).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "traffic to n2 (127.0.0.1:7002) is dropped by fault injection"
        );
        assert!(matches!(err, LinkError::Dropped { to: 2, .. }));
        assert_eq!(dialer.dials.load(Ordering::SeqCst), 0);
        links.open(3).await.expect("other links are untouched");
        // `channel` ignores faults: heartbeats apply them their own way.
        links.channel(2).expect("channel ignores faults");

        links
            .faults()
            .set(BTreeSet::new(), std::collections::BTreeMap::new());
        links.open(2).await.expect("healed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_delay_holds_each_message_on_that_link_only() {
        let (links, _) = links();
        links.faults().set(
            BTreeSet::new(),
            std::collections::BTreeMap::from([(2, 300)]),
        );
        let start = Instant::now();
        links.open(2).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let start = Instant::now();
        links.open(3).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn members_and_liveness_come_from_the_peer_list() {
        let (links, _) = links();
        assert_eq!(links.me(), 1);
        let names: Vec<_> = links.members().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(links.link(2).unwrap().member().addr, "127.0.0.1:7002");
        assert_eq!(links.describe(3), "n3 (127.0.0.1:7003)");
        assert!(links.membership().is_alive(2), "unknown peers are tried");
    }
}
