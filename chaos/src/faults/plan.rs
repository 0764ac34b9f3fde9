//! The faults every node of a cluster should hold, computed without I/O: which peers each
//! node drops, which links it delays, how far its clock is skewed. Faults compose (a second
//! partition adds to the first); each node's set becomes one `ChaosRequest`.

use super::FaultError;
use kv_proto::internal::ChaosRequest;
use std::collections::{BTreeMap, BTreeSet};

/// What one node applies to its own outgoing traffic and clock: exactly what one `Chaos`
/// call sets on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFaults {
    /// Peers (by name) this node's traffic to is dropped.
    pub drop_to: BTreeSet<String>,
    /// Extra delay on this node's traffic to each peer, in milliseconds.
    pub delay_ms: BTreeMap<String, u32>,
    /// Offset added to this node's wall clock, in milliseconds.
    pub clock_skew_ms: i64,
}

impl NodeFaults {
    /// True when the node holds no fault.
    pub fn is_clear(&self) -> bool {
        *self == NodeFaults::default()
    }
}

/// The faults of every node of one cluster, by node name. Node ids are 1-based positions in
/// the cluster's peer list (as the node assigns them), so the names must come in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFaults {
    /// Node names in peer-list order: index + 1 is the node id.
    names: Vec<String>,
    /// Nodes holding some fault; a node absent here holds none.
    faults: BTreeMap<String, NodeFaults>,
}

impl ClusterFaults {
    /// No faults on a cluster whose peer list names `names`, in order.
    pub fn new(names: Vec<String>) -> Result<Self, FaultError> {
        if names.is_empty() {
            return Err(FaultError::InvalidCluster("no nodes".into()));
        }
        let unique: BTreeSet<&String> = names.iter().collect();
        if unique.len() != names.len() {
            return Err(FaultError::InvalidCluster(format!(
                "node names must be unique: {}",
                names.join(", ")
            )));
        }
        Ok(ClusterFaults {
            names,
            faults: BTreeMap::new(),
        })
    }

    /// Node names in peer-list order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The faults `node` should hold (none for a node never faulted or unknown).
    pub fn node(&self, node: &str) -> NodeFaults {
        self.faults.get(node).cloned().unwrap_or_default()
    }

    /// Replaces what `node` holds (the client records here what a node accepted).
    pub fn set_node(&mut self, node: &str, faults: NodeFaults) {
        if faults.is_clear() {
            self.faults.remove(node);
        } else {
            self.faults.insert(node.to_string(), faults);
        }
    }

    /// Cuts every node of `side_a` off from every node of `side_b`, both ways. Other links
    /// keep their faults, so successive partitions add up.
    pub fn partition(&mut self, side_a: &[&str], side_b: &[&str]) -> Result<(), FaultError> {
        self.check(side_a.iter().chain(side_b).copied())?;
        if let Some(node) = side_a.iter().find(|a| side_b.contains(a)) {
            return Err(FaultError::SameNode {
                node: node.to_string(),
            });
        }
        for a in side_a {
            for b in side_b {
                self.entry(a).drop_to.insert(b.to_string());
                self.entry(b).drop_to.insert(a.to_string());
            }
        }
        Ok(())
    }

    /// Drops `from`'s traffic to `to` only: `to` still reaches `from`.
    pub fn partition_one_way(&mut self, from: &str, to: &str) -> Result<(), FaultError> {
        self.check_link(from, to)?;
        self.entry(from).drop_to.insert(to.to_string());
        Ok(())
    }

    /// Delays every message `from` sends to `to` by `delay_ms`; 0 removes the delay.
    pub fn slow(&mut self, from: &str, to: &str, delay_ms: u32) -> Result<(), FaultError> {
        self.check_link(from, to)?;
        let faults = self.entry(from);
        if delay_ms == 0 {
            faults.delay_ms.remove(to);
        } else {
            faults.delay_ms.insert(to.to_string(), delay_ms);
        }
        self.tidy(from);
        Ok(())
    }

    /// Moves `node`'s wall clock `skew_ms` away from the real one; 0 puts it back.
    pub fn skew(&mut self, node: &str, skew_ms: i64) -> Result<(), FaultError> {
        self.check([node])?;
        self.entry(node).clock_skew_ms = skew_ms;
        self.tidy(node);
        Ok(())
    }

    /// Clears every fault on every node.
    pub fn heal_all(&mut self) {
        self.faults.clear();
    }

    /// Nodes whose faults differ between `self` and `before`, in peer-list order.
    pub fn changed_since(&self, before: &ClusterFaults) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| self.node(n) != before.node(n))
            .cloned()
            .collect()
    }

    /// The `Chaos` call that gives `node` its faults (peer names turned into node ids).
    pub fn request(&self, node: &str) -> ChaosRequest {
        let faults = self.node(node);
        ChaosRequest {
            drop_to: faults.drop_to.iter().filter_map(|n| self.id(n)).collect(),
            delay_ms: faults
                .delay_ms
                .iter()
                .filter_map(|(n, ms)| Some((self.id(n)?, *ms)))
                .collect(),
            clock_skew_ms: faults.clock_skew_ms,
        }
    }

    /// The node id of `node`: its 1-based position in the peer list.
    pub fn id(&self, node: &str) -> Option<u64> {
        let index = self.names.iter().position(|n| n == node)?;
        u64::try_from(index + 1).ok()
    }

    fn entry(&mut self, node: &str) -> &mut NodeFaults {
        self.faults.entry(node.to_string()).or_default()
    }

    /// Forgets a node whose faults went back to none, so equality means "same faults".
    fn tidy(&mut self, node: &str) {
        if self.faults.get(node).is_some_and(NodeFaults::is_clear) {
            self.faults.remove(node);
        }
    }

    fn check<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> Result<(), FaultError> {
        for node in nodes {
            if !self.names.iter().any(|n| n == node) {
                return Err(FaultError::UnknownNode {
                    node: node.to_string(),
                    known: self.names.join(", "),
                });
            }
        }
        Ok(())
    }

    fn check_link(&self, from: &str, to: &str) -> Result<(), FaultError> {
        self.check([from, to])?;
        if from == to {
            return Err(FaultError::SameNode {
                node: from.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
