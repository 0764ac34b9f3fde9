//! The seams of the AP engine: what it needs from the network (`ApTransport`), the failure
//! detector (`Liveness`) and the ring (`ApRing`). Real adapters live in `transport.rs` and
//! `node.rs`; tests plug in memory fakes, so the engine never names gRPC or gossip.

use super::error::TransportError;
use super::lww::ApRecord;
use super::store::RangePage;
use crate::types::NodeId;
use futures::future::BoxFuture;

/// Node-to-node calls of the AP engine (implemented over gRPC elsewhere, in memory in tests).
pub trait ApTransport: Send + Sync + 'static {
    /// Stores `record` on `to` (as a hint for `hint_for` when set).
    fn write(
        &self,
        to: NodeId,
        keyspace_id: u32,
        record: ApRecord,
        hint_for: Option<NodeId>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
    /// Reads `to`'s replica of `key` (tombstones included).
    fn read(
        &self,
        to: NodeId,
        keyspace_id: u32,
        key: Vec<u8>,
    ) -> BoxFuture<'static, Result<Option<ApRecord>, TransportError>>;
    /// `to`'s Merkle leaf hashes of one partition.
    fn merkle_leaves(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
    ) -> BoxFuture<'static, Result<Vec<u64>, TransportError>>;
    /// One page of `to`'s records of one partition in the given leaves, after the key `after`
    /// (from the first when `None`).
    fn merkle_range(
        &self,
        to: NodeId,
        keyspace_id: u32,
        partition: u32,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
    ) -> BoxFuture<'static, Result<RangePage, TransportError>>;
}

/// The failure detector's view (gossip, built elsewhere).
pub trait Liveness: Send + Sync + 'static {
    /// Whether `node` is currently believed alive.
    fn is_alive(&self, node: NodeId) -> bool;
}

/// What the AP engine needs from the ring.
pub trait ApRing: Send + Sync + 'static {
    /// The partition a key belongs to.
    fn partition_for_key(&self, key: &[u8]) -> u32;
    /// Number of partitions Q.
    fn partition_count(&self) -> u32;
    /// All nodes in preference order for a partition; the first N are its replicas.
    fn preference_list(&self, partition: u32) -> Vec<NodeId>;
}
