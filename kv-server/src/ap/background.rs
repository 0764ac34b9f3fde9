//! Background work of the AP engine: hint replay, anti-entropy and tombstone purge. Each job has
//! a step that tests drive by hand (`replay_hints_once`, `anti_entropy_round` /
//! `anti_entropy_once`, `purge_tombstones_once`), and `spawn_background` runs each step in its own
//! task on its own interval, so none waits for another: an anti-entropy round stuck on a peer
//! whose Merkle call hangs until its timeout delays neither hint replay nor purging.
//!
//! Invariants: a hint is deleted only after its owner acknowledged it, or once older than the
//! hint window (anti-entropy repairs the owner then); anti-entropy moves records both ways and
//! merges with LWW, so an exchange never loses the newer copy; a record from beyond the maximum
//! clock offset is not taken; every remote call has a timeout. A tombstone is purged only past
//! the grace period and once an exchange with every other replica of its partition, started
//! after the tombstone arrived here, completed (`plan::tombstone_purgeable`): a replica that was
//! away longer than the grace period then still finds the delete on its peers when it returns.

use super::config::{
    ANTI_ENTROPY_PUSH_CONCURRENCY, HINT_REPLAY_BATCH, MERKLE_LEAVES_PER_RANGE_CALL,
};
use super::engine::{with_timeout, ApEngine};
use super::error::{ApError, TransportError};
use super::merkle;
use super::plan::{
    anti_entropy_peer, hint_action, purge_horizon, records_to_push, tombstone_purgeable, HintAction,
};
use super::store::RangePage;
use crate::types::{KeyspaceDef, Mode, NodeId};
use futures::stream::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Interval, MissedTickBehavior};

/// Outcome of one hint replay round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Hints acknowledged by their owner and deleted.
    pub delivered: usize,
    /// Hints whose send failed (kept for the next round).
    pub failed: usize,
    /// Hints kept because their owner is down.
    pub waiting: usize,
    /// Hints dropped as older than the hint window.
    pub expired: usize,
}

/// Outcome of one anti-entropy exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AntiEntropyStats {
    /// Leaves whose hashes differed.
    pub differing_leaves: usize,
    /// Records received from the peer (its records in the differing leaves).
    pub records_fetched: usize,
    /// Of those, records that superseded ours and were stored.
    pub records_applied: usize,
    /// Our records sent to the peer (newer than its copy, or absent there) and acknowledged.
    pub records_pushed: usize,
    /// The peer's records not taken because their timestamp is beyond the maximum clock offset.
    pub records_refused: usize,
    /// Our records the peer refused (it answered with an error).
    pub pushes_refused: usize,
    /// Pages of Merkle range answers received (each within the page budget, so within the
    /// node-to-node message limit whatever the values' sizes).
    pub range_pages: usize,
    /// Whether the peer now holds every record we held when the exchange started, or a newer
    /// one (no push refused): only such an exchange counts towards purging tombstones.
    pub complete: bool,
}

/// The keyspace definitions current when a background round starts.
pub type KeyspaceSource = Arc<dyn Fn() -> Vec<KeyspaceDef> + Send + Sync>;

/// An interval of `period_ms` whose first tick is immediate; a tick that comes due while the
/// previous step still runs is delayed rather than bunched up.
fn ticker(period_ms: u64) -> Interval {
    let mut tick = tokio::time::interval(Duration::from_millis(period_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

impl ApEngine {
    /// Sends pending hints to their owners that are alive; deletes each one only after its
    /// owner acknowledged it. Hints older than the hint window are dropped.
    pub async fn replay_hints_once(&self) -> Result<ReplayStats, ApError> {
        let mut stats = ReplayStats::default();
        let now_ms = self.inner.clock.wall_ms();
        for owner in self.inner.hints.counts().into_keys() {
            let alive = self.inner.liveness.is_alive(owner);
            for hint in self.inner.hints.pending_for(owner, HINT_REPLAY_BATCH)? {
                match hint_action(
                    alive,
                    hint.record.hlc.physical_ms,
                    now_ms,
                    self.inner.config.hint_max_age_ms,
                ) {
                    HintAction::Wait => stats.waiting += 1,
                    HintAction::Expire => {
                        tracing::warn!(
                            node_id = self.node_id(),
                            owner,
                            "hint expired; anti-entropy will repair the owner"
                        );
                        self.inner.hints.remove(&hint)?;
                        stats.expired += 1;
                    }
                    HintAction::Deliver => {
                        let fut = self.inner.transport.write(
                            owner,
                            hint.keyspace_id,
                            hint.record.clone(),
                            None,
                        );
                        match with_timeout(owner, self.inner.config.write_timeout_ms, fut).await {
                            Ok(()) => {
                                self.inner.hints.remove(&hint)?;
                                stats.delivered += 1;
                            }
                            Err(e) => {
                                tracing::info!(node_id = self.node_id(), owner, error = %e, "hint replay failed; will retry");
                                stats.failed += 1;
                                // The owner is not answering: the rest of its hints wait too.
                                break;
                            }
                        }
                    }
                }
            }
        }
        let m = crate::metrics::metrics();
        m.hint_replays.inc_by(stats.delivered as u64);
        m.hints_expired.inc_by(stats.expired as u64);
        Ok(stats)
    }

    /// Exchanges one partition with `peer`: compares Merkle leaves, fetches the peer's records in
    /// differing leaves and merges them here, and pushes ours that the peer lacks or has older.
    /// A complete exchange is remembered for the purge rule.
    pub async fn anti_entropy_once(
        &self,
        keyspace_id: u32,
        partition: u32,
        peer: NodeId,
    ) -> Result<AntiEntropyStats, ApError> {
        let timeout_ms = self.inner.config.merkle_timeout_ms;
        let store = self.store(keyspace_id)?;
        // Stamped before our leaves are read: every tombstone stored before this stamp is in
        // what the exchange compares.
        let started = self.inner.clock.now();
        let ours = store.merkle_leaves(partition)?;
        let fut = self
            .inner
            .transport
            .merkle_leaves(peer, keyspace_id, partition);
        let theirs = with_timeout(peer, timeout_ms, fut).await?;
        let differing = merkle::diff_leaves(&ours, &theirs);
        let mut stats = AntiEntropyStats {
            differing_leaves: differing.len(),
            complete: started.is_ok(),
            ..Default::default()
        };
        for chunk in differing.chunks(MERKLE_LEAVES_PER_RANGE_CALL) {
            // The peer answers page by page (bounded by bytes); each page is compared with our
            // records of the same key interval, after the previous page's last key up to this
            // page's last key (to the end of the partition for the last page).
            let mut after: Option<Vec<u8>> = None;
            loop {
                let fut = self.inner.transport.merkle_range(
                    peer,
                    keyspace_id,
                    partition,
                    chunk.to_vec(),
                    after.clone(),
                );
                let page = with_timeout(peer, timeout_ms, fut).await?;
                stats.range_pages += 1;
                if let (Some(next), Some(prev)) = (&page.resume_after, &after) {
                    if next <= prev {
                        // A page that does not move forward would loop for ever.
                        return Err(ApError::Transport(TransportError::Remote {
                            node: peer,
                            message: "Merkle range page did not advance past its start key".into(),
                        }));
                    }
                }
                self.exchange_page(
                    keyspace_id,
                    partition,
                    peer,
                    chunk,
                    &after,
                    &page,
                    &mut stats,
                )
                .await?;
                match page.resume_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        if let (true, Ok(started)) = (stats.complete, started) {
            let mut synced = self.inner.synced.lock().expect("synced lock poisoned");
            let at = synced
                .entry((keyspace_id, partition, peer))
                .or_insert(started);
            *at = (*at).max(started);
        }
        Ok(stats)
    }

    /// Merges one page of a peer's Merkle range answer here and pushes to the peer our records
    /// of the same key interval that it lacks or has older.
    #[allow(clippy::too_many_arguments)]
    async fn exchange_page(
        &self,
        keyspace_id: u32,
        partition: u32,
        peer: NodeId,
        leaves: &[u32],
        after: &Option<Vec<u8>>,
        page: &RangePage,
        stats: &mut AntiEntropyStats,
    ) -> Result<(), ApError> {
        let store = self.store(keyspace_id)?;
        let their_records = &page.records;
        stats.records_fetched += their_records.len();
        let ours = store.local_side(
            partition,
            leaves,
            after.as_deref(),
            page.resume_after.as_deref(),
        )?;
        let to_push = records_to_push(ours.records, their_records);
        let forget_before_ms = self.forget_before_ms();
        for r in their_records {
            if self.inner.clock.observe(r.hlc).is_err() {
                stats.records_refused += 1;
                continue;
            }
            if store.apply(r, forget_before_ms)? {
                stats.records_applied += 1;
            }
        }
        // A corrupt record of ours is replaced by the peer's copy in `apply` above; one the
        // peer has no record for is removed: the peer's "nothing" is the only copy there is.
        for key in &ours.corrupt {
            if !their_records.iter().any(|r| &r.key == key) && store.remove_corrupt(key)? {
                stats.records_applied += 1;
            }
        }
        // One flush per page rather than per record; nothing here is acknowledged to anyone.
        self.flushed().await?;
        let pushes = futures::stream::iter(to_push.into_iter().map(|r| {
            let fut = self.inner.transport.write(peer, keyspace_id, r, None);
            with_timeout(peer, self.inner.config.write_timeout_ms, fut)
        }))
        .buffer_unordered(ANTI_ENTROPY_PUSH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        for p in pushes {
            match p {
                Ok(()) => stats.records_pushed += 1,
                // The peer answered, refusing one record (e.g. its clock is behind ours by
                // more than the maximum offset): go on with the others.
                Err(TransportError::Remote { .. } | TransportError::Corrupt { .. }) => {
                    stats.pushes_refused += 1;
                    stats.complete = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Purges, in every AP keyspace of `keyspaces`, the tombstones that
    /// `plan::tombstone_purgeable` accepts; returns how many.
    pub fn purge_tombstones_once(&self, keyspaces: &[KeyspaceDef]) -> Result<usize, ApError> {
        let now_ms = self.inner.clock.wall_ms();
        let grace_ms = self.inner.config.tombstone_grace_ms;
        let mut purged = 0;
        for ks in keyspaces.iter().filter(|k| k.mode == Mode::Ap) {
            let synced = self
                .inner
                .synced
                .lock()
                .expect("synced lock poisoned")
                .clone();
            let horizons: Vec<_> = (0..self.inner.ring.partition_count())
                .map(|p| {
                    let pref = self.inner.ring.preference_list(p);
                    purge_horizon(&pref, ks.replicas as usize, self.node_id(), |peer| {
                        synced.get(&(ks.id, p, peer)).copied()
                    })
                })
                .collect();
            purged += self.store(ks.id)?.purge_tombstones(|t| {
                let horizon = horizons.get(t.partition as usize).copied().flatten();
                tombstone_purgeable(t.written.physical_ms, t.arrival, now_ms, grace_ms, horizon)
            })?;
        }
        crate::metrics::metrics()
            .tombstones_purged
            .inc_by(purged as u64);
        Ok(purged)
    }

    /// One anti-entropy round: every partition of every AP keyspace that this node replicates,
    /// against one live co-replica chosen by `round` (so rounds rotate through peers).
    pub async fn anti_entropy_round(&self, keyspaces: &[KeyspaceDef], round: usize) {
        let m = crate::metrics::metrics();
        m.anti_entropy_rounds.inc();
        for ks in keyspaces.iter().filter(|k| k.mode == Mode::Ap) {
            for partition in 0..self.inner.ring.partition_count() {
                let pref = self.inner.ring.preference_list(partition);
                let Some(peer) =
                    anti_entropy_peer(&pref, ks.replicas as usize, self.node_id(), round, |p| {
                        self.inner.liveness.is_alive(p)
                    })
                else {
                    continue;
                };
                match self.anti_entropy_once(ks.id, partition, peer).await {
                    Ok(stats) => {
                        m.anti_entropy_exchanges.inc();
                        m.anti_entropy_keys_repaired
                            .inc_by((stats.records_applied + stats.records_pushed) as u64);
                    }
                    Err(e) => {
                        tracing::warn!(node_id = self.node_id(), keyspace_id = ks.id, partition, peer, error = %e, "anti-entropy failed");
                    }
                }
            }
        }
    }

    /// Starts hint replay, anti-entropy and tombstone purging, each in its own task on its own
    /// interval (first tick immediate), until the returned handle is aborted; `keyspaces` yields
    /// the current keyspace definitions for each anti-entropy round and purge pass.
    pub fn spawn_background(&self, keyspaces: KeyspaceSource) -> JoinHandle<()> {
        let cfg = &self.inner.config;
        let mut jobs = JoinSet::new();

        let (this, period_ms) = (self.clone(), cfg.hint_replay_interval_ms);
        jobs.spawn(async move {
            let mut tick = ticker(period_ms);
            loop {
                tick.tick().await;
                if let Err(e) = this.replay_hints_once().await {
                    tracing::warn!(node_id = this.node_id(), error = %e, "hint replay failed");
                }
            }
        });

        let (this, period_ms, source) = (
            self.clone(),
            cfg.anti_entropy_interval_ms,
            keyspaces.clone(),
        );
        jobs.spawn(async move {
            let mut tick = ticker(period_ms);
            let mut round = 0usize;
            loop {
                tick.tick().await;
                this.anti_entropy_round(&source(), round).await;
                round = round.wrapping_add(1);
            }
        });

        let (this, period_ms) = (self.clone(), cfg.purge_interval_ms);
        jobs.spawn(async move {
            let mut tick = ticker(period_ms);
            loop {
                tick.tick().await;
                if let Err(e) = this.purge_tombstones_once(&keyspaces()) {
                    tracing::warn!(node_id = this.node_id(), error = %e, "tombstone purge failed");
                }
            }
        });

        // The set lives in this task, so aborting the handle drops it, and dropping a `JoinSet`
        // aborts every job in it. The jobs never return; a panicking one is a bug, passed on to
        // the handle as before the jobs were split.
        tokio::spawn(async move {
            while let Some(ended) = jobs.join_next().await {
                if let Err(e) = ended {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        })
    }
}
