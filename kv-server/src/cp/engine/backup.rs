//! `CpEngine::consistent_cut`: the state of one partition at a single revision, for backups
//! (`kv snapshot save`). Read from a Raft snapshot built in openraft's state-machine task, the
//! one place no apply interleaves with the copy; the read index before it makes the cut hold
//! every write acknowledged before the call.

use super::{CpEngine, CpError};
use crate::cp::state_machine::{snapshot_records, LiveRecord};
use tokio::time::Instant;

impl CpEngine {
    /// A consistent cut of one partition for a backup: after a read index (so it holds every
    /// write acknowledged before the call), the live records whose keys start with `prefix`, as
    /// of one Raft snapshot of the group taken at or after the read index, and that snapshot's
    /// index. Triggers a snapshot when the current one is older; only the leader answers.
    pub async fn consistent_cut(
        &self,
        keyspace: u32,
        partition: u32,
        prefix: &[u8],
        deadline: Instant,
    ) -> Result<(u64, Vec<LiveRecord>), CpError> {
        let group = self.group(keyspace, partition)?;
        let budget = deadline.saturating_duration_since(Instant::now());
        self.read_index(group, deadline).await?;
        // Applied now is at or past the read index: a snapshot at least this new holds every
        // acknowledged write.
        let target = group
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        let fatal = |e: &dyn std::fmt::Display| CpError::Raft {
            partition,
            message: e.to_string(),
        };
        // Bounded by the deadline: every round waits for the snapshot index to change.
        loop {
            let snapshot = tokio::time::timeout_at(deadline, group.raft.get_snapshot())
                .await
                .map_err(|_| self.expired(group, budget, "no snapshot before the deadline"))?
                .map_err(|e| fatal(&e))?;
            let current = snapshot
                .as_ref()
                .and_then(|s| s.meta.last_log_id)
                .map(|l| l.index);
            if let Some(mut s) = snapshot.filter(|_| current.unwrap_or(0) >= target) {
                let records = snapshot_records(&mut s.snapshot, prefix, group.reader.location())?;
                return Ok((current.unwrap_or(0), records));
            }
            // A build already running (from before the target) ignores this trigger; its end
            // changes the index and the next round triggers again.
            let mut rx = group.raft.metrics();
            let before = rx.borrow_and_update().snapshot.map(|l| l.index);
            group
                .raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| fatal(&e))?;
            let changed = tokio::time::timeout_at(deadline, async {
                loop {
                    let index = rx.borrow_and_update().snapshot.map(|l| l.index);
                    if index != before || index.unwrap_or(0) >= target {
                        return true;
                    }
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await;
            match changed {
                Ok(true) => {}
                Ok(false) => return Err(fatal(&"raft stopped")),
                Err(_) => {
                    return Err(self.expired(
                        group,
                        budget,
                        "the partition's snapshot was not built before the deadline",
                    ))
                }
            }
        }
    }
}
