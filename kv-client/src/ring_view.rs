//! `RingView`: what a client knows of the ring, built once per ring read and shared by every
//! request, and the leader table it keeps per partition (learned from `kv-leader` headers).

use crate::error::{Error, LEADER_HEADER};
use kv_proto::v1 as pb;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::Channel;

/// Marks a partition whose leader is not known (in `RingView::leaders`).
pub(crate) const NO_LEADER: usize = usize::MAX;

/// One node this client may send to.
pub(crate) struct NodeSlot {
    /// Its address (host:port).
    pub(crate) addr: String,
    /// Its name from the ring; `None` for a seed before the ring is known.
    pub(crate) name: Option<String>,
    /// The channel to it, shared with earlier views.
    pub(crate) channel: Channel,
    /// Requests in flight to it (least-outstanding routing).
    pub(crate) outstanding: AtomicUsize,
}

/// What the client knows of the ring, built once per ring read and shared by every request
/// (one `Arc` clone each): requests take no lock on it and copy no node list.
#[derive(Default)]
pub(crate) struct RingView {
    /// Partitions of the ring (0 before the ring is known).
    pub(crate) partition_count: u32,
    /// The nodes requests may go to, in ring order (the seeds, with `seeds_only` or before
    /// the ring is known).
    pub(crate) nodes: Vec<NodeSlot>,
    /// Per partition, its preference list as indices into `nodes` (members not allowed left out).
    pub(crate) preference: Vec<Vec<usize>>,
    /// Per partition, the index in `nodes` of its CP leader as last learned, or `NO_LEADER`.
    /// CP keyspaces share the partitions' Raft groups, so one leader per partition serves all.
    pub(crate) leaders: Vec<AtomicUsize>,
}

impl RingView {
    /// The index of the node at `addr`, if this client may use it.
    pub(crate) fn index_of(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// The partition's leader as last learned.
    pub(crate) fn leader(&self, partition: u32) -> Option<usize> {
        let i = self
            .leaders
            .get(partition as usize)?
            .load(Ordering::Relaxed);
        (i != NO_LEADER).then_some(i)
    }

    /// Remembers `node` as the partition's leader.
    pub(crate) fn set_leader(&self, partition: u32, node: usize) {
        if let Some(slot) = self.leaders.get(partition as usize) {
            slot.store(node, Ordering::Relaxed);
        }
    }

    /// The view of `ring`: its members (or `seeds`, with `seeds_only`) as nodes to send to,
    /// each with its channel from `channel`.
    pub(crate) fn of(
        ring: &pb::RingResponse,
        seeds: &[String],
        seeds_only: bool,
        channel: impl Fn(&str) -> Result<Channel, Error>,
    ) -> Result<RingView, Error> {
        let name_of = |addr: &str| {
            ring.members
                .iter()
                .find(|m| m.address == addr)
                .map(|m| m.name.clone())
        };
        let nodes: Vec<(String, Option<String>)> = if seeds_only {
            seeds.iter().map(|a| (a.clone(), name_of(a))).collect()
        } else {
            // Ring order is member id order, as before.
            let mut members: Vec<&pb::Member> = ring.members.iter().collect();
            members.sort_by_key(|m| m.id);
            members
                .into_iter()
                .map(|m| (m.address.clone(), Some(m.name.clone())))
                .collect()
        };
        let addrs: Vec<String> = nodes.iter().map(|(a, _)| a.clone()).collect();
        let preference = ring
            .partitions
            .iter()
            .map(|p| {
                p.preference
                    .iter()
                    .filter_map(|id| ring.members.iter().find(|m| m.id == *id))
                    .filter_map(|m| addrs.iter().position(|a| *a == m.address))
                    .collect()
            })
            .collect();
        RingView::build(ring.partition_count, nodes, preference, channel)
    }

    /// A view of `nodes` (address, name) with these preference lists.
    pub(crate) fn build(
        partition_count: u32,
        nodes: impl IntoIterator<Item = (String, Option<String>)>,
        preference: Vec<Vec<usize>>,
        channel: impl Fn(&str) -> Result<Channel, Error>,
    ) -> Result<RingView, Error> {
        let nodes = nodes
            .into_iter()
            .map(|(addr, name)| {
                Ok(NodeSlot {
                    channel: channel(&addr)?,
                    addr,
                    name,
                    outstanding: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(RingView {
            partition_count,
            nodes,
            preference,
            leaders: (0..partition_count)
                .map(|_| AtomicUsize::new(NO_LEADER))
                .collect(),
        })
    }
}

/// "n2 (127.0.0.1:7002)", or the address alone when the ring has not named it.
pub(crate) fn describe(node: &NodeSlot) -> String {
    match &node.name {
        Some(name) => format!("{name} ({})", node.addr),
        None => node.addr.clone(),
    }
}

/// Remembers the leader a CP answer names (the `kv-leader` header), so the next request for
/// this partition goes straight to it, with no server-side hop. Only addresses of nodes this
/// client may use are believed.
pub(crate) fn learn_leader(
    view: &RingView,
    partition: u32,
    metadata: &tonic::metadata::MetadataMap,
) {
    let Some(leader) = metadata.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(i) = view.index_of(leader) {
        view.set_leader(partition, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn ring() -> pb::RingResponse {
        let member = |id: u64| pb::Member {
            id,
            name: format!("n{id}"),
            address: format!("127.0.0.1:700{id}"),
        };
        pb::RingResponse {
            partition_count: 2,
            members: vec![member(3), member(1), member(2)],
            partitions: vec![
                pb::Partition {
                    id: 0,
                    preference: vec![2, 3, 1],
                },
                pb::Partition {
                    id: 1,
                    preference: vec![1, 2, 3],
                },
            ],
            ..Default::default()
        }
    }

    fn lazy(addr: &str) -> Result<Channel, Error> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        )
    }

    fn header(addr: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(LEADER_HEADER, addr.parse().unwrap());
        m
    }

    #[tokio::test]
    async fn preference_lists_index_the_usable_nodes_and_only_their_leaders_are_learned() {
        let all = RingView::of(&ring(), &[], false, lazy).unwrap();
        let names: Vec<_> = all.nodes.iter().map(|n| n.name.clone().unwrap()).collect();
        assert_eq!(names, ["n1", "n2", "n3"], "member id order");
        assert_eq!(all.preference, [vec![1, 2, 0], vec![0, 1, 2]]);
        assert_eq!(all.leader(0), None);
        learn_leader(&all, 0, &header("127.0.0.1:7003"));
        assert_eq!(all.leader(0), Some(2));
        // An address outside the ring is not believed; a header-less answer changes nothing.
        learn_leader(&all, 0, &header("10.0.0.1:1"));
        learn_leader(&all, 0, &MetadataMap::new());
        assert_eq!(all.leader(0), Some(2));

        // With only some seeds usable, the others drop out of the preference lists.
        let seeds = ["127.0.0.1:7003".to_string()];
        let one = RingView::of(&ring(), &seeds, true, lazy).unwrap();
        assert_eq!(one.preference, [vec![0], vec![0]]);
        learn_leader(&one, 1, &header("127.0.0.1:7001"));
        assert_eq!(one.leader(1), None, "n1 is not a node this client may use");
    }
}
