//! The background scrub: walks every stored record of this node (AP replicas and CP state
//! machines), page by page on the blocking pool (never on the async workers) and at a bounded
//! rate, and repairs each corrupt record from the other replicas (`ApEngine::repair_local`,
//! `CpEngine::repair_record`). Each corrupt record is logged with its keyspace, key and data
//! directory and counted in `kv_corrupt_records_total{mode,action}`.

use crate::ap::repair::LocalRepair;
use crate::ap::ApEngine;
use crate::cp::{CpEngine, CpRepair};
use crate::types::{KeyspaceDef, Mode};
use std::time::Duration;
use tokio::time::Instant;

/// Records checked per page (one blocking-pool task).
pub const SCRUB_PAGE_RECORDS: usize = 256;
/// Default bound on the records checked per second.
pub const DEFAULT_SCRUB_RECORDS_PER_SECOND: u64 = 5_000;
/// Deadline of one CP record repair.
const CP_REPAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// What one pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubStats {
    /// Records checked.
    pub checked: u64,
    /// Records whose checks failed.
    pub corrupt: u64,
    /// Of those, replaced (or removed) from the other replicas.
    pub repaired: u64,
    /// Of those, left as they are: no replica gave a good copy (retried at the next pass).
    pub unrepaired: u64,
}

/// Pause after a page of `n` records so that at most `per_second` are checked per second.
fn pace(n: usize, per_second: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / per_second.max(1) as f64)
}

/// How a scrub pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Bound on the records checked per second.
    pub records_per_second: u64,
    /// Read pages on the blocking pool (real disks). Off for in-memory and simulated engines:
    /// a blocking-pool thread would make a turmoil simulation's schedule depend on real time.
    pub offload: bool,
}

/// Runs `f` on the blocking pool when `offload`, else inline.
async fn blocking<T: Send + 'static>(
    offload: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if offload {
        tokio::task::spawn_blocking(f).await.ok()
    } else {
        Some(f())
    }
}

/// One pass over every record of this node: AP keyspaces of `keyspaces`, then every CP group.
pub async fn scrub_pass(
    ap: &ApEngine,
    cp: Option<&CpEngine>,
    keyspaces: &[KeyspaceDef],
    options: ScrubOptions,
) -> ScrubStats {
    let records_per_second = options.records_per_second;
    let mut stats = ScrubStats::default();
    let m = crate::metrics::metrics();
    for ks in keyspaces.iter().filter(|k| k.mode == Mode::Ap) {
        let Ok(store) = ap.store(ks.id) else { continue };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let s = store.clone();
            let from = after.clone();
            let page = blocking(options.offload, move || {
                s.scrub_page(from.as_deref(), SCRUB_PAGE_RECORDS)
            })
            .await;
            let page = match page {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::warn!(keyspace = %ks.name, error = %e, "scrub could not read a page; going on with the next keyspace");
                    break;
                }
                None => break,
            };
            stats.checked += page.checked as u64;
            m.scrub_records.inc_by(page.checked as u64);
            for key in &page.corrupt {
                stats.corrupt += 1;
                m.corrupt("ap", "detected");
                tracing::warn!(keyspace = %ks.name, key = %String::from_utf8_lossy(&key[..key.len().min(64)]), data_dir = store.location(), "scrub found a corrupt AP record; repairing it from the other replicas");
                match ap.repair_local(ks, key).await {
                    Ok(LocalRepair::Replaced | LocalRepair::Removed) => stats.repaired += 1,
                    Ok(LocalRepair::NotCorrupt) => {}
                    Ok(LocalRepair::Unrepaired) | Err(_) => {
                        stats.unrepaired += 1;
                        m.corrupt("ap", "unrepaired");
                    }
                }
            }
            tokio::time::sleep(pace(page.checked, records_per_second)).await;
            match page.resume_after {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    let Some(cp) = cp else { return stats };
    for group in cp.group_ids() {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = match cp
                .scrub_page(group, after.clone(), SCRUB_PAGE_RECORDS, options.offload)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(group, error = %e, "scrub could not read a page; going on with the next group");
                    break;
                }
            };
            let crate::storage::record::ScrubPage {
                checked,
                corrupt,
                resume_after: resume,
            } = page;
            stats.checked += checked as u64;
            m.scrub_records.inc_by(checked as u64);
            for key in &corrupt {
                stats.corrupt += 1;
                m.corrupt("cp", "detected");
                tracing::warn!(group, key = %String::from_utf8_lossy(&key[..key.len().min(64)]), "scrub found a corrupt CP record; fetching it from the group's other members");
                let deadline = Instant::now() + CP_REPAIR_TIMEOUT;
                match cp.repair_record(group, key, deadline).await {
                    Ok(CpRepair::Rewritten) => stats.repaired += 1,
                    Ok(CpRepair::NotCorrupt) => {}
                    // Counted as unrepaired by the engine (or deferred: retried next pass).
                    Ok(CpRepair::Deferred | CpRepair::Unrepaired) | Err(_) => stats.unrepaired += 1,
                }
            }
            tokio::time::sleep(pace(checked, records_per_second)).await;
            match resume {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    stats
}
