//! `ReadRounds`: shares leadership confirmations (read-index rounds) among the linearizable
//! reads of one CP group, so that many waiting reads cost one heartbeat round to the followers
//! instead of one round each.
//!
//! Invariants:
//! - a caller of `next_round` gets the outcome of a round that *started after the call began*,
//!   never of one already in flight (that round took its read index before the read arrived);
//! - at most `max_in_flight` rounds of a group run at a time; a caller that arrives while fewer
//!   run starts one at once (so a lightly loaded group waits no longer than before sharing);
//!   callers that arrive while all run form the next round, started as soon as one ends; every
//!   caller of a round gets its outcome (success and errors alike);
//! - a round is skipped when every caller waiting for it has gone (deadline passed, request
//!   dropped), and the driver task ends when nobody waits: an idle group costs no task.
//!
//! Why this keeps reads linearizable: a read's linearization point must lie between its
//! invocation and its response. A round takes the leader's read index (max of its commit index
//! and its first entry of the term) when it starts, and succeeds only if a quorum then answered
//! the leader's heartbeat in its term; the read returns state at or past that index. Every write
//! acknowledged before the read began was committed before the round started, so it is at or
//! below the read index (Raft's read-index argument, §6.4 of Ongaro's thesis); and no leader of
//! a later term committed anything before the quorum answered, so nothing newer than the state
//! read was acknowledged before that moment. Both moments lie inside the read's interval only
//! because the round started after the read was invoked — which is the first invariant, and why
//! a read never joins a round in flight.

use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Runs one round: confirms leadership and yields its outcome (cloned to every caller).
pub type RoundFn<T> = Box<dyn Fn() -> BoxFuture<'static, T> + Send + Sync>;

/// The read-index rounds of one group (see the module doc).
pub struct ReadRounds<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    round: RoundFn<T>,
    max_in_flight: usize,
}

struct State<T> {
    /// Driver tasks running (each has a round in flight, or is about to start one).
    drivers: usize,
    /// Callers for the next round. Bounded by the reads in flight on this node: each entry is
    /// one waiting read, removed when its round starts.
    waiting: Vec<oneshot::Sender<T>>,
    /// Rounds started so far.
    started: u64,
}

impl<T: Clone + Send + 'static> ReadRounds<T> {
    /// Rounds that run `round` each, at most `max_in_flight` (at least 1) at a time.
    pub fn new(round: RoundFn<T>, max_in_flight: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    drivers: 0,
                    waiting: Vec::new(),
                    started: 0,
                }),
                round,
                max_in_flight: max_in_flight.max(1),
            }),
        }
    }

    /// The outcome of the first round that starts after this call; `None` if the round was
    /// dropped unfinished (the runtime shutting down, or a panic in the round).
    pub async fn next_round(&self) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut s = lock(&self.inner.state);
            s.waiting.push(tx);
            let start = s.drivers < self.inner.max_in_flight;
            if start {
                s.drivers += 1;
            }
            start
        };
        if start_driver {
            // One task per round at most, however many reads it serves: it outlives a caller
            // that gives up, so the other callers of the round still get its outcome.
            tokio::spawn(drive(self.inner.clone()));
        }
        rx.await.ok()
    }

    /// Rounds started so far.
    pub fn rounds_started(&self) -> u64 {
        lock(&self.inner.state).started
    }

    /// Callers waiting for the next round (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.inner.state).waiting.len()
    }

    /// No driver runs (tests).
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        lock(&self.inner.state).drivers == 0
    }
}

fn lock<T>(m: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // The state stays consistent at every unlock, so a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs rounds while callers wait for one.
async fn drive<T: Clone + Send + 'static>(inner: Arc<Inner<T>>) {
    let mut guard = Driving {
        inner: &inner,
        armed: true,
    };
    loop {
        let mut batch = {
            let mut s = lock(&inner.state);
            s.waiting.retain(|tx| !tx.is_closed());
            if s.waiting.is_empty() {
                // In the same critical section as the check: a caller arriving after it sees
                // one driver fewer and starts a new one.
                s.drivers -= 1;
                guard.armed = false;
                return;
            }
            s.started += 1;
            std::mem::take(&mut s.waiting)
        };
        // Taken above before the round starts: every caller in `batch` arrived before it.
        let outcome = (inner.round)().await;
        for tx in batch.drain(..) {
            let _ = tx.send(outcome.clone());
        }
    }
}

/// Resets the state when a driver stops without finishing (its task dropped or panicking):
/// the callers still waiting are failed (`None`), and the next caller starts a new driver.
struct Driving<'a, T> {
    inner: &'a Inner<T>,
    armed: bool,
}

impl<T> Drop for Driving<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = lock(&self.inner.state);
            s.drivers -= 1;
            // Another driver still running serves the callers left waiting; the last one fails them.
            if s.drivers == 0 {
                s.waiting.clear();
            }
        }
    }
}

#[cfg(test)]
#[path = "read_index_tests.rs"]
mod tests;
