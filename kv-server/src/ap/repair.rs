//! Repair of this node's corrupt AP records from the other replicas, as the scrub calls it:
//! `repair_local` reads the key from every other live replica and replaces the corrupt copy with
//! the newest good answer (or removes it when every answer is "no record").
//!
//! Invariants: nothing corrupt is ever sent or merged; the corrupt copy is replaced only through
//! `ApStore::apply` / `remove_corrupt`, which re-check under the store's lock that it is still
//! corrupt (a write that arrived meanwhile wins); every remote call has a timeout.

use super::engine::{with_timeout, ApEngine};
use super::error::ApError;
use super::lww::{self, ApRecord};
use crate::types::KeyspaceDef;
use futures::stream::{FuturesUnordered, StreamExt};

/// What `repair_local` did with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRepair {
    /// The local record was not (or no longer) corrupt.
    NotCorrupt,
    /// Replaced with the newest good copy of another replica.
    Replaced,
    /// Every replica that answered holds no record: the corrupt one was removed.
    Removed,
    /// No other replica gave a good answer (down, or corrupt too): left as it is.
    Unrepaired,
}

impl ApEngine {
    /// Repairs this node's record of `key` in keyspace `ks` if it is corrupt, from the other
    /// live replicas of its partition.
    pub async fn repair_local(&self, ks: &KeyspaceDef, key: &[u8]) -> Result<LocalRepair, ApError> {
        let store = self.store(ks.id)?;
        if !store.is_corrupt(key)? {
            return Ok(LocalRepair::NotCorrupt);
        }
        let partition = self.inner.ring.partition_for_key(key);
        let preference = self.inner.ring.preference_list(partition);
        let replicas = &preference[..(ks.replicas as usize).min(preference.len())];
        let timeout_ms = self.inner.config.read_timeout_ms;
        let mut asks: FuturesUnordered<_> = replicas
            .iter()
            .copied()
            .filter(|&n| n != self.node_id() && self.is_alive(n))
            .map(|n| {
                let fut = self.inner.transport.read(n, ks.id, key.to_vec());
                with_timeout(n, timeout_ms, fut)
            })
            .collect();
        let (mut good_answers, mut newest) = (0usize, None::<ApRecord>);
        while let Some(answer) = asks.next().await {
            let Ok(rec) = answer else { continue };
            // A copy from beyond the maximum clock offset is not taken, as everywhere else.
            if rec
                .as_ref()
                .is_some_and(|r| self.inner.clock.observe(r.hlc).is_err())
            {
                continue;
            }
            good_answers += 1;
            if let Some(r) = rec {
                newest = Some(lww::merge_opt(newest.as_ref(), &r));
            }
        }
        let outcome = match (good_answers, newest) {
            (0, _) => LocalRepair::Unrepaired,
            (_, Some(r)) => match store.apply(&r, self.forget_before_ms())? {
                true => LocalRepair::Replaced,
                false => LocalRepair::NotCorrupt,
            },
            (_, None) => match store.remove_corrupt(key)? {
                true => LocalRepair::Removed,
                false => LocalRepair::NotCorrupt,
            },
        };
        self.flushed().await?;
        Ok(outcome)
    }
}
