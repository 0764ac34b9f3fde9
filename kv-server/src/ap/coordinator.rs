//! The AP coordinator, the runtime half of `plan.rs`: `put`, `delete` and `get` on any node,
//! sending to the replicas `plan_write` / `read_candidates` choose, counting answers with
//! `WriteQuorum` / `ReadQuorum`, and writing the newest record back to stale replicas (read
//! repair).
//!
//! Invariants: a write returns after W distinct nodes acked (a durable hint counts); its sends
//! run in the request's own future until then, and what is left (replicas still to answer,
//! fallbacks for failed sends) runs on in the engine's one straggler task (`stragglers.rs`),
//! also when the caller goes away first; `wait_writes_idle` waits for all of it; at most
//! `max_writes_in_flight` writes are in flight, and a write beyond that is refused before
//! anything is written; every remote call has a timeout; a read answer whose timestamp is beyond the maximum
//! clock offset counts as a failed answer (it is neither returned nor repaired onto others);
//! read repair is best effort (anti-entropy repairs what it misses).

use super::config::RequestOptions;
use super::engine::{with_timeout, ApEngine};
use super::error::{bounded, ApError, TransportError};
use super::lww::ApRecord;
use super::plan::{
    plan_write, read_candidates, resolve_quorums, ReadOutcome, ReadQuorum, WriteQuorum, WriteTarget,
};
use crate::types::{Hlc, KeyspaceDef, NodeId, MAX_KEY_BYTES};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::Ordering;

impl ApEngine {
    fn check_key(&self, key: &[u8]) -> Result<(), ApError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(ApError::InvalidArgument(format!(
                "key is {} bytes; keys must be 1..={MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// Writes `value` under `key`; returns the write's timestamp after W acks.
    pub async fn put(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        if value.len() > self.inner.config.max_value_bytes {
            return Err(ApError::InvalidArgument(format!(
                "value is {} bytes; the limit is {} bytes (--max-value-bytes)",
                value.len(),
                self.inner.config.max_value_bytes
            )));
        }
        self.write(ks, preference, key, Some(value), opts).await
    }

    /// Deletes `key` (writes a tombstone); returns the delete's timestamp after W acks.
    pub async fn delete(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        let written = self.write(ks, preference, key, None, opts).await;
        if written.is_ok() {
            crate::metrics::metrics().tombstones_written.inc();
        }
        written
    }

    /// Writes a record restored from a backup with its own timestamp (a tombstone when `value`
    /// is `None`), merged by last-write-wins on each replica; returns after W acks. The caller
    /// checks the timestamp is not beyond the maximum clock offset.
    pub async fn import(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Option<Vec<u8>>,
        hlc: Hlc,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        self.write_at(ks, preference, key, value, Some(hlc), opts)
            .await
    }

    async fn write(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Option<Vec<u8>>,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        self.write_at(ks, preference, key, value, None, opts).await
    }

    async fn write_at(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        value: Option<Vec<u8>>,
        given: Option<Hlc>,
        opts: RequestOptions,
    ) -> Result<Hlc, ApError> {
        self.check_key(key)?;
        let (_, w) = resolve_quorums(ks, opts.consistency)?;
        let partition = self.inner.ring.partition_for_key(key);
        let hlc = match given {
            Some(h) => h,
            None => self.inner.clock.now()?,
        };
        let limit = self.inner.config.max_writes_in_flight;
        let reserved =
            self.inner
                .writes_in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < limit).then_some(n + 1)
                });
        if reserved.is_err() {
            return Err(ApError::Overloaded {
                node: self.node_id(),
                limit,
            });
        }
        let record = ApRecord {
            key: key.to_vec(),
            hlc,
            value,
        };
        let (targets, fallbacks) =
            plan_write(preference, ks.replicas as usize, self.node_id(), |n| {
                self.is_alive(n)
            });
        let quorum = WriteQuorum::new(self.node_id(), w, fallbacks);
        // The sends run in this request's future until W acks; what is left then (or when the
        // caller goes away first) is handed to the straggler task, so the remaining replicas
        // and the fallbacks of failed sends still get the write (its slot in
        // `writes_in_flight`, reserved above, is released when the last send ended).
        let mut sends = HandOff(Some(WriteSends::start(
            self.clone(),
            ks.id,
            record,
            targets,
            quorum,
        )));
        let (answered, first_failure) = match sends.0.as_mut() {
            Some(s) => s.until_quorum().await,
            None => (0, None),
        };
        drop(sends);
        if answered >= w {
            Ok(hlc)
        } else {
            Err(ApError::Unavailable {
                op: "write",
                needed: w,
                answered,
                partition,
                first_failure,
            })
        }
    }

    /// Waits until every write this node coordinated has finished with all of its replicas and
    /// fallbacks (a write returns after W acks; the rest continues in the background).
    pub async fn wait_writes_idle(&self) {
        loop {
            let notified = self.inner.writes_idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a notification between the check and the await is kept.
            notified.as_mut().enable();
            if self.inner.writes_in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn send_write(
        &self,
        target: WriteTarget,
        keyspace_id: u32,
        record: ApRecord,
    ) -> BoxFuture<'static, (WriteTarget, Result<(), TransportError>)> {
        if target.node == self.node_id() {
            let this = self.clone();
            return Box::pin(async move {
                let result = this
                    .apply_replica(keyspace_id, record, target.hint_for)
                    .await
                    .map(|_| ())
                    .map_err(|e| TransportError::local(target.node, e));
                (target, result)
            });
        }
        let fut = self
            .inner
            .transport
            .write(target.node, keyspace_id, record, target.hint_for);
        let timeout_ms = self.inner.config.write_timeout_ms;
        Box::pin(async move { (target, with_timeout(target.node, timeout_ms, fut).await) })
    }

    fn send_read(
        &self,
        node: NodeId,
        keyspace_id: u32,
        key: &[u8],
    ) -> BoxFuture<'static, (NodeId, Result<Option<ApRecord>, TransportError>)> {
        if node == self.node_id() {
            let result = self
                .read_replica(keyspace_id, key)
                .map_err(|e| TransportError::local(node, e));
            return Box::pin(async move { (node, result) });
        }
        let fut = self.inner.transport.read(node, keyspace_id, key.to_vec());
        let timeout_ms = self.inner.config.read_timeout_ms;
        Box::pin(async move { (node, with_timeout(node, timeout_ms, fut).await) })
    }

    /// Reads `key` from R replicas: the newest value and its timestamp (`None` if absent or
    /// deleted); replicas that answered with an older or missing record are repaired.
    pub async fn get(
        &self,
        ks: &KeyspaceDef,
        preference: &[NodeId],
        key: &[u8],
        opts: RequestOptions,
    ) -> Result<Option<(Vec<u8>, Hlc)>, ApError> {
        self.check_key(key)?;
        let (r, _) = resolve_quorums(ks, opts.consistency)?;
        let partition = self.inner.ring.partition_for_key(key);
        let candidates = read_candidates(preference, ks.replicas as usize, self.node_id(), |n| {
            self.is_alive(n)
        });
        let (quorum, first) = ReadQuorum::start(candidates, r);
        let mut quorum = quorum.with_replicas(ks.replicas as usize);
        let mut pending: FuturesUnordered<_> = first
            .into_iter()
            .map(|node| self.send_read(node, ks.id, key))
            .collect();
        let mut first_failure = None;
        while let Some((node, result)) = pending.next().await {
            // An answer from beyond the maximum clock offset is refused like a failed call: it
            // must neither win the read nor be repaired onto the other replicas.
            let result = result.and_then(|rec| match &rec {
                Some(r) => match self.inner.clock.observe(r.hlc) {
                    Ok(()) => Ok(rec),
                    Err(e) => Err(TransportError::Remote {
                        node,
                        message: e.to_string(),
                    }),
                },
                None => Ok(rec),
            });
            match result {
                Ok(rec) => quorum.answer(node, rec),
                // No usable copy there: ask another replica, and repair this one with the
                // read's answer.
                Err(e @ TransportError::Corrupt { .. }) => {
                    tracing::warn!(node_id = self.node_id(), to = node, error = %e, "AP replica holds a corrupt copy; asking another replica");
                    first_failure.get_or_insert_with(|| bounded(&e.to_string()));
                    if let Some(next) = quorum.corrupt(node) {
                        pending.push(self.send_read(next, ks.id, key));
                    }
                }
                Err(e) => {
                    tracing::warn!(node_id = self.node_id(), to = node, error = %e, "AP read failed; asking another replica");
                    first_failure.get_or_insert_with(|| bounded(&e.to_string()));
                    if let Some(next) = quorum.fail() {
                        pending.push(self.send_read(next, ks.id, key));
                    }
                }
            }
        }
        match quorum.finish() {
            ReadOutcome::Unavailable { answered } => Err(ApError::Unavailable {
                op: "read",
                needed: r,
                answered,
                partition,
                first_failure,
            }),
            ReadOutcome::Lost { corrupt } => Err(ApError::Lost { partition, corrupt }),
            ReadOutcome::Resolved { newest: None, .. } => Ok(None),
            ReadOutcome::Resolved {
                newest: Some(newest),
                stale,
            } => {
                self.read_repair(ks.id, &newest, stale).await;
                Ok(newest.value.map(|v| (v, newest.hlc)))
            }
        }
    }

    /// Writes `newest` back to the `stale` replicas.
    async fn read_repair(&self, keyspace_id: u32, newest: &ApRecord, stale: Vec<NodeId>) {
        let repairs: FuturesUnordered<_> = stale
            .into_iter()
            .map(|node| {
                self.send_write(
                    WriteTarget {
                        node,
                        hint_for: None,
                    },
                    keyspace_id,
                    newest.clone(),
                )
            })
            .collect();
        let results: Vec<_> = repairs.collect().await;
        for (target, result) in results {
            match result {
                Ok(()) => {
                    self.inner.read_repairs.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().read_repairs.inc();
                }
                // Best effort: anti-entropy repairs what read repair could not.
                Err(e) => {
                    tracing::warn!(node_id = self.node_id(), to = target.node, error = %e, "read repair failed")
                }
            }
        }
    }
}

type SendFuture = BoxFuture<'static, (WriteTarget, Result<(), TransportError>)>;

/// The sends of one write still in flight, with the quorum that counts their answers and
/// chooses a fallback for each one that fails. Dropping it releases the write's slot in
/// `writes_in_flight`.
struct WriteSends {
    engine: ApEngine,
    keyspace_id: u32,
    record: ApRecord,
    quorum: WriteQuorum,
    pending: FuturesUnordered<SendFuture>,
    first_failure: Option<String>,
}

impl WriteSends {
    /// Starts a send to each of `targets` (the coordinator's own store is written right here).
    fn start(
        engine: ApEngine,
        keyspace_id: u32,
        record: ApRecord,
        targets: Vec<WriteTarget>,
        quorum: WriteQuorum,
    ) -> Self {
        let pending = targets
            .into_iter()
            .map(|t| engine.send_write(t, keyspace_id, record.clone()))
            .collect();
        Self {
            engine,
            keyspace_id,
            record,
            quorum,
            pending,
            first_failure: None,
        }
    }

    /// Drives the sends until W distinct nodes acked, or until every send ended; returns the
    /// acks then (and the first failure when W was not reached).
    async fn until_quorum(&mut self) -> (usize, Option<String>) {
        while let Some((target, result)) = self.pending.next().await {
            if let Some(acks) = self.answer(target, result) {
                return (acks, None);
            }
        }
        (self.quorum.acks(), self.first_failure.clone())
    }

    /// Drives the remaining sends, and the fallbacks they call for, to their end.
    async fn finish(mut self) {
        while let Some((target, result)) = self.pending.next().await {
            self.answer(target, result);
        }
    }

    /// Counts one answer; a failure sends the write to the fallback the quorum chooses.
    /// Returns the ack count the moment it reaches W.
    fn answer(&mut self, target: WriteTarget, result: Result<(), TransportError>) -> Option<usize> {
        match result {
            Ok(()) => self.quorum.ack(target.node),
            Err(e) => {
                let owner = target.hint_for.unwrap_or(target.node);
                tracing::warn!(node_id = self.engine.node_id(), to = target.node, owner, error = %e, "AP write failed; trying a fallback");
                self.first_failure
                    .get_or_insert_with(|| bounded(&e.to_string()));
                if let Some(t) = self.quorum.fail(target) {
                    self.pending.push(self.engine.send_write(
                        t,
                        self.keyspace_id,
                        self.record.clone(),
                    ));
                }
                None
            }
        }
    }
}

impl Drop for WriteSends {
    fn drop(&mut self) {
        let inner = &self.engine.inner;
        if inner.writes_in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.writes_idle.notify_waiters();
        }
    }
}

/// Hands a write's unfinished sends to the engine's straggler task when the request stops
/// driving them: answered after W acks, or dropped by its caller before that.
struct HandOff(Option<WriteSends>);

impl Drop for HandOff {
    fn drop(&mut self) {
        if let Some(sends) = self.0.take() {
            if !sends.pending.is_empty() {
                let engine = sends.engine.clone();
                engine.inner.stragglers.run(Box::pin(sends.finish()));
            }
        }
    }
}
