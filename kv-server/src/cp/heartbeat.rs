//! The shared heartbeat tick: one timer per node sends the heartbeats of every group it leads
//! at the same moment, instead of 32 openraft timers firing at scattered times. Sent together,
//! they meet in the per-peer batcher (`cp::batch`) and leave as one call per peer. Invariant:
//! a leader's heartbeats go out every `heartbeat_interval_ms` (the same interval openraft's own
//! timer uses, which `CpConfig::shared_heartbeat` switches off), so election timeouts are
//! unchanged.

use crate::cp::types::Raft;
use openraft::ServerState;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// Runs `task` and, when `groups` is given, the tick over them in the same task (so one abort
/// stops both).
pub async fn alongside(
    task: impl std::future::Future<Output = ()>,
    groups: Option<Vec<Raft>>,
    heartbeat_interval_ms: u64,
) {
    match groups {
        Some(groups) => {
            tokio::join!(task, run(groups, heartbeat_interval_ms));
        }
        None => task.await,
    }
}

/// Runs the tick forever (the engine aborts the task at shutdown) over `groups`.
pub async fn run(groups: Vec<Raft>, heartbeat_interval_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(heartbeat_interval_ms.max(1)));
    // A late tick (a stalled runtime) sends once, then keeps the interval from there.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for raft in &groups {
            let leading = raft.metrics().borrow().state == ServerState::Leader;
            if leading {
                if let Err(e) = raft.trigger().heartbeat().await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        }
    }
}
