//! The client side of the internal `Chaos` call: turns a fault on the cluster into one call per
//! node whose fault set changed, and remembers what each node accepted.

use super::{ClusterFaults, FaultError};
use kv_core::net::{validate_addr, Dialer};
use kv_proto::internal::internal_client::InternalClient;
use kv_proto::internal::ChaosRequest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long one node may take to answer a `Chaos` call. A paused or partitioned node never
/// answers, and a call without a bound would hang the caller with it.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Injects and heals faults on a running cluster whose nodes run with `--chaos`.
///
/// The client remembers the faults each node accepted, so faults compose: a second partition
/// adds to the first, and a slow link keeps the partition in place. When a call fails, the
/// nodes that answered keep their new faults and the others their old ones; repeating the same
/// operation then reaches only the nodes that missed it. Another client (or an earlier
/// process) may have injected faults this one does not know: [`FaultClient::heal_all`] clears
/// them too.
pub struct FaultClient {
    /// Address of each node, by name.
    addrs: BTreeMap<String, String>,
    dialer: Arc<dyn Dialer>,
    /// Channels made so far (lazily, on first call to a node).
    channels: BTreeMap<String, Channel>,
    /// What each node accepted.
    faults: ClusterFaults,
    timeout: Duration,
    /// Bearer token for nodes run with `--auth-file` (`Chaos` needs an admin token).
    token: Option<String>,
}

impl FaultClient {
    /// A client of the cluster whose nodes are `nodes`, as (name, address) pairs **in the
    /// cluster's peer-list order** (`--peers`, or `cluster.json` of `kv local`): a node's id is
    /// its position in that list, and the `Chaos` call names peers by id.
    pub fn new<N, A>(
        nodes: impl IntoIterator<Item = (N, A)>,
        dialer: impl Dialer,
    ) -> Result<Self, FaultError>
    where
        N: Into<String>,
        A: Into<String>,
    {
        let nodes: Vec<(String, String)> = nodes
            .into_iter()
            .map(|(n, a)| (n.into(), a.into()))
            .collect();
        for (name, addr) in &nodes {
            validate_addr(addr)
                .map_err(|e| FaultError::InvalidCluster(format!("node {name}: {e}")))?;
        }
        let faults = ClusterFaults::new(nodes.iter().map(|(n, _)| n.clone()).collect())?;
        Ok(FaultClient {
            addrs: nodes.into_iter().collect(),
            dialer: Arc::new(dialer),
            channels: BTreeMap::new(),
            faults,
            timeout: DEFAULT_CALL_TIMEOUT,
            token: None,
        })
    }

    /// The same client sending `token` (`authorization: Bearer TOKEN`) with every call.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The same client with another bound on each node's answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The faults each node accepted, as far as this client knows.
    pub fn faults(&self) -> &ClusterFaults {
        &self.faults
    }

    /// The same client, knowing that the nodes already hold `faults` (as an earlier process
    /// recorded them), so that the next fault composes with them instead of replacing them.
    pub fn with_known_faults(mut self, faults: ClusterFaults) -> Result<Self, FaultError> {
        self.check_names(&faults)?;
        self.faults = faults;
        Ok(self)
    }

    /// Gives every node its faults in `next` (computed with [`ClusterFaults`]' operations),
    /// calling only the nodes whose faults differ from what this client knows.
    pub async fn set(&mut self, next: ClusterFaults) -> Result<(), FaultError> {
        self.check_names(&next)?;
        self.apply(next).await
    }

    /// Refuses faults computed for another cluster (other names, or another order).
    fn check_names(&self, faults: &ClusterFaults) -> Result<(), FaultError> {
        if faults.names() != self.faults.names() {
            return Err(FaultError::InvalidCluster(format!(
                "faults for nodes {} given to a client of nodes {}",
                faults.names().join(", "),
                self.faults.names().join(", ")
            )));
        }
        Ok(())
    }

    /// Cuts every node of `side_a` off from every node of `side_b`, both ways.
    pub async fn partition(&mut self, side_a: &[&str], side_b: &[&str]) -> Result<(), FaultError> {
        let mut next = self.faults.clone();
        next.partition(side_a, side_b)?;
        self.apply(next).await
    }

    /// Drops `from`'s traffic to `to`; `to` still reaches `from`.
    pub async fn partition_one_way(&mut self, from: &str, to: &str) -> Result<(), FaultError> {
        let mut next = self.faults.clone();
        next.partition_one_way(from, to)?;
        self.apply(next).await
    }

    /// Delays every message `from` sends to `to` by `delay_ms` (0 removes the delay). The node
    /// refuses delays over its limit (`kv_server::faults::MAX_DELAY_MS`).
    pub async fn slow(&mut self, from: &str, to: &str, delay_ms: u32) -> Result<(), FaultError> {
        let mut next = self.faults.clone();
        next.slow(from, to, delay_ms)?;
        self.apply(next).await
    }

    /// Moves `node`'s wall clock `skew_ms` away from the real one (0 puts it back).
    pub async fn skew(&mut self, node: &str, skew_ms: i64) -> Result<(), FaultError> {
        let mut next = self.faults.clone();
        next.skew(node, skew_ms)?;
        self.apply(next).await
    }

    /// Clears every fault on every node, including faults this client did not inject. A node
    /// running without `--chaos` counts as healed: it cannot hold a fault.
    pub async fn heal_all(&mut self) -> Result<(), FaultError> {
        let mut next = self.faults.clone();
        next.heal_all();
        let every_node = next.names().to_vec();
        self.send(&next, every_node, true).await
    }

    /// Sends `next` to the nodes whose faults it changes.
    async fn apply(&mut self, next: ClusterFaults) -> Result<(), FaultError> {
        let changed = next.changed_since(&self.faults);
        self.send(&next, changed, false).await
    }

    /// Calls every node of `nodes` at once with its faults in `next`; records what each
    /// accepted; returns the first failure in peer-list order.
    async fn send(
        &mut self,
        next: &ClusterFaults,
        nodes: Vec<String>,
        chaos_off_is_clear: bool,
    ) -> Result<(), FaultError> {
        let mut calls = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let addr = self.addrs[node].clone();
            let channel = self.channel(node)?;
            calls.push(call(
                node.clone(),
                addr,
                channel,
                next.request(node),
                self.timeout,
                self.token.clone(),
            ));
        }
        let results = futures::future::join_all(calls).await;
        let mut first_error = None;
        for (node, result) in nodes.iter().zip(results) {
            match result {
                Ok(()) => self.faults.set_node(node, next.node(node)),
                Err(FaultError::NotEnabled { .. }) if chaos_off_is_clear => {
                    self.faults.set_node(node, Default::default());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn channel(&mut self, node: &str) -> Result<Channel, FaultError> {
        if let Some(ch) = self.channels.get(node) {
            return Ok(ch.clone());
        }
        let addr = &self.addrs[node];
        let ch = self
            .dialer
            .channel(addr)
            .map_err(|reason| FaultError::Dial {
                node: node.to_string(),
                addr: addr.clone(),
                reason,
            })?;
        self.channels.insert(node.to_string(), ch.clone());
        Ok(ch)
    }
}

/// One `Chaos` call, bounded by `timeout`, its refusal turned into the error that says why.
async fn call(
    node: String,
    addr: String,
    channel: Channel,
    request: ChaosRequest,
    timeout: Duration,
    token: Option<String>,
) -> Result<(), FaultError> {
    let mut client = InternalClient::new(channel);
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    if let Some(v) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", v);
    }
    let status = match tokio::time::timeout(timeout, client.chaos(request)).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(status)) => status,
        Err(_) => tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}")),
    };
    let message = status.message().to_string();
    Err(match status.code() {
        tonic::Code::FailedPrecondition => FaultError::NotEnabled {
            node,
            addr,
            message,
        },
        tonic::Code::InvalidArgument => FaultError::Rejected {
            node,
            addr,
            message,
        },
        code => FaultError::Call {
            node,
            addr,
            code,
            message,
        },
    })
}
