//! Fault injection against a running cluster through each node's internal `Chaos` call:
//! partitions (both ways or one way), slow links and clock skew, and healing them.
//!
//! The node keeps only the mechanism (`kv_server::faults`: drop or delay its own outgoing
//! traffic, skew its own clock) and accepts the call only when started with `--chaos`. Each
//! call *replaces* the node's whole fault set, so a partition of sides A and B is one drop set
//! per node, recomputed from everything injected so far: [`ClusterFaults`] does that without
//! I/O, [`FaultClient`] sends the result to the nodes whose set changed.

mod client;
mod plan;

pub use client::{FaultClient, DEFAULT_CALL_TIMEOUT};
pub use plan::{ClusterFaults, NodeFaults};

/// Why a fault could not be injected or healed; every variant names the node concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// The cluster description given to the client is unusable.
    #[error("invalid cluster description: {0}")]
    InvalidCluster(String),
    /// A node name that is not in the cluster description.
    #[error("unknown node {node:?}; the cluster has {known}")]
    UnknownNode {
        /// The name asked for.
        node: String,
        /// The names the cluster has, comma-separated.
        known: String,
    },
    /// A fault between a node and itself (the node is on both sides of a partition, or a
    /// link's two ends are the same node).
    #[error("node {node} cannot be cut off from or slowed towards itself")]
    SameNode {
        /// The node named twice.
        node: String,
    },
    /// No channel to the node could be made (malformed address).
    #[error("node {node} ({addr}): cannot dial: {reason}")]
    Dial {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// What the dialer said.
        reason: String,
    },
    /// The node refuses fault injection: it was started without `--chaos`.
    #[error("node {node} ({addr}) refuses fault injection: {message}")]
    NotEnabled {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// The node's explanation.
        message: String,
    },
    /// The node rejected the request (a peer id it does not know, a delay over its limit).
    #[error("node {node} ({addr}) rejected the faults: {message}")]
    Rejected {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// The node's explanation.
        message: String,
    },
    /// The call failed otherwise (node down or paused, timeout): the node's faults are unknown.
    #[error("node {node} ({addr}) did not take the faults: {code:?}: {message}")]
    Call {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// The gRPC status code (`DeadlineExceeded` when the client's timeout fired).
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}
