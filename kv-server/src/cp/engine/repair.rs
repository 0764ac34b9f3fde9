//! Repair of a corrupt CP state-machine record from the other members of its group: the
//! reading side (`read_or_repair`, used by every read and by the scrub) and the answering side
//! (`record_for_repair`, served to peers through the `RecordFetcher` seam, `Internal.CpRecord`).
//!
//! Why a read served this way stays linearizable: the read's index R was applied here before the
//! record was read, and the repair asks for the record once the peer applied at least our
//! applied index A ≥ R. The peer's record is the key's state at some index I with A ≤ I ≤ P, P
//! being the peer's applied index when it answered; entry I was committed before the peer
//! answered, so before we answer. State at an index ≥ R, committed before the answer, is a state
//! the register held between the read's start and its end. Stale reads take the same record.
//!
//! Why the local rewrite keeps the replicas equal: see `SmReader::replace_corrupt` (written only
//! when the copy is the key's state at our own applied index; otherwise the read is served and
//! the record left for a later repair, once the peer's answer is at our index).

use super::{CpEngine, CpError, Group};
use crate::cp::state_machine::RecordAt;
use crate::storage::StorageError;
use crate::types::NodeId;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use tokio::time::Instant;

/// How a node fetches a peer's copy of one state-machine record (over `Internal.CpRecord` in
/// production); `Err` carries the peer's refusal or the network failure, as text.
pub trait RecordFetcher: Send + Sync + 'static {
    /// `to`'s record of `key` in `group`, once `to` applied at least `min_applied`; `to` waits
    /// at most `wait_ms` for that.
    fn fetch(
        &self,
        to: NodeId,
        group: u64,
        key: Vec<u8>,
        min_applied: u64,
        wait_ms: u64,
    ) -> BoxFuture<'static, Result<RecordAt, String>>;
}

/// What repairing one key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpRepair {
    /// The record was not (or no longer) corrupt.
    NotCorrupt,
    /// Rewritten here from a peer's copy.
    Rewritten,
    /// A peer's copy was fetched (and a read could serve it) but it was not at this replica's
    /// applied index, so the local record was left for a later attempt.
    Deferred,
    /// No peer answered with a good copy.
    Unrepaired,
}

impl CpEngine {
    /// Plugs in how this node fetches peers' records (set once, by the node, before serving).
    pub fn set_record_fetcher(&self, fetcher: Arc<dyn RecordFetcher>) {
        let _ = self.fetcher.set(fetcher);
    }

    /// This node's record of `key` in `group` once it applied at least `min_applied` (waiting
    /// until `deadline`), with the applied index it was read at: a peer's repair source.
    pub async fn record_for_repair(
        &self,
        group: u64,
        key: &[u8],
        min_applied: u64,
        deadline: Instant,
    ) -> Result<RecordAt, CpError> {
        let g = self.groups.get(&group).ok_or(CpError::UnknownRaftGroup {
            node: self.node_id,
            group,
        })?;
        let mut rx = g.raft.metrics();
        while g.reader.applied_index() < min_applied {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(CpError::Unavailable {
                        partition: g.spec.partition,
                        reason: format!(
                        "node {} has applied up to {} and could not reach {min_applied} in time",
                        self.node_id,
                        g.reader.applied_index()
                    ),
                    })
                }
            }
        }
        Ok(g.reader.record_at(key)?)
    }

    /// Reads `key` from this replica; a corrupt record is fetched from a peer (see the module
    /// doc) and, when possible, rewritten here. `DATA_LOSS` only when no peer has a good copy.
    pub(super) async fn read_or_repair(
        &self,
        group: &Group,
        key: &[u8],
        deadline: Instant,
    ) -> Result<Option<(Vec<u8>, u64)>, CpError> {
        match group.reader.get(key) {
            Err(corrupt @ StorageError::Corrupt { .. }) => {
                crate::metrics::metrics().corrupt("cp", "detected");
                tracing::warn!(node_id = self.node_id, partition = group.spec.partition, error = %corrupt, "corrupt CP record read; fetching it from the group's other members");
                match self.repair_in(group, key, deadline).await? {
                    (_, Some(rec)) => Ok(rec.record),
                    (_, None) => Err(corrupt.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// One page of the scrub over `group`'s records (see `SmReader::scrub_page`), read on the
    /// blocking pool when `offload`.
    pub async fn scrub_page(
        &self,
        group: u64,
        after: Option<Vec<u8>>,
        limit: usize,
        offload: bool,
    ) -> Result<crate::storage::record::ScrubPage, CpError> {
        let g = self.groups.get(&group).ok_or(CpError::UnknownRaftGroup {
            node: self.node_id,
            group,
        })?;
        let reader = g.reader.clone();
        if !offload {
            return Ok(reader.scrub_page(after.as_deref(), limit)?);
        }
        let page = tokio::task::spawn_blocking(move || reader.scrub_page(after.as_deref(), limit))
            .await
            .map_err(|e| CpError::Raft {
                partition: g.spec.partition,
                message: format!("scrub task failed: {e}"),
            })?;
        Ok(page?)
    }

    /// Repairs this node's record of `key` in `group` if it is corrupt (the scrub's step).
    pub async fn repair_record(
        &self,
        group: u64,
        key: &[u8],
        deadline: Instant,
    ) -> Result<CpRepair, CpError> {
        let g = self.groups.get(&group).ok_or(CpError::UnknownRaftGroup {
            node: self.node_id,
            group,
        })?;
        Ok(self.repair_in(g, key, deadline).await?.0)
    }

    /// Fetches a good copy of `key` from the group's other members (all asked at once, the
    /// first good answer taken) and rewrites the local record with it when that is safe.
    async fn repair_in(
        &self,
        group: &Group,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(CpRepair, Option<RecordAt>), CpError> {
        let Some(bad) = group.reader.corrupt_bytes(key)? else {
            return Ok((CpRepair::NotCorrupt, None));
        };
        let min_applied = group.reader.applied_index();
        let gid = super::group_id(group.spec.keyspace, group.spec.partition);
        let Some(fetcher) = self.fetcher.get() else {
            crate::metrics::metrics().corrupt("cp", "unrepaired");
            return Ok((CpRepair::Unrepaired, None));
        };
        // The peer must answer before our own deadline: it waits at most half of what is left.
        let wait_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64
            / 2;
        let mut asks: FuturesUnordered<_> = group
            .spec
            .members
            .iter()
            .filter(|&&m| m != self.node_id)
            .map(|&m| {
                let fut = fetcher.fetch(m, gid, key.to_vec(), min_applied, wait_ms);
                async move { (m, tokio::time::timeout_at(deadline, fut).await) }
            })
            .collect();
        while let Some((peer, answer)) = asks.next().await {
            let good = match answer {
                Ok(Ok(good)) => good,
                Ok(Err(e)) => {
                    tracing::warn!(node_id = self.node_id, peer, error = %e, "peer gave no good copy of a corrupt CP record");
                    continue;
                }
                Err(_) => continue,
            };
            let outcome = if group.reader.replace_corrupt(key, &bad, &good)? {
                crate::metrics::metrics().corrupt("cp", "repaired");
                tracing::warn!(
                    node_id = self.node_id,
                    peer,
                    partition = group.spec.partition,
                    data_dir = group.reader.location(),
                    "corrupt CP record rewritten from a peer's copy"
                );
                CpRepair::Rewritten
            } else {
                CpRepair::Deferred
            };
            return Ok((outcome, Some(good)));
        }
        crate::metrics::metrics().corrupt("cp", "unrepaired");
        Ok((CpRepair::Unrepaired, None))
    }
}
