//! Group commit of the AP replica side: `GroupFlush::flush` returns once the storage engine was
//! flushed by a flush that *started after the call began*, so every write the caller made before
//! the call is durable; callers that arrive while a flush is running wait for the next one, and
//! that one flush covers all of them (one fsync for several acknowledged writes).
//!
//! Invariant: a replica acknowledges a write only after `flush` returned `Ok` (see `replica.rs`).
//! On an engine with its own group commit (sled) the flush is that engine's, shared with the
//! Raft log appends and run on its flush thread; otherwise it runs on the calling thread.

use crate::storage::group_commit::GroupCommit;
use crate::storage::{Engine, StorageError};
use std::sync::{Condvar, Mutex};

/// Blocks until the group commit's next flush covers the caller's writes.
///
/// Only `ApEngine::apply_replica_blocking` (the in-memory test network) comes here with a group
/// commit; the served path awaits `GroupCommit::sync` instead (`ApEngine::flushed`). On a
/// multi-threaded runtime tokio moves the worker's other tasks away first.
fn wait_for_flush(commit: &GroupCommit) -> Result<(), StorageError> {
    let (tx, rx) = std::sync::mpsc::channel();
    commit.after_flush(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    let wait = || {
        rx.recv().unwrap_or_else(|_| {
            Err(StorageError::Engine {
                location: "group commit".into(),
                message: "the flush thread stopped before answering".into(),
            })
        })
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

#[derive(Debug, Default)]
struct State {
    /// A flush is running.
    flushing: bool,
    /// Flushes started so far; the n-th flush is generation n.
    started: u64,
    /// The latest generation that finished without error.
    succeeded: u64,
    /// Callers waiting for a flush (for tests).
    waiting: usize,
}

/// Coalesces concurrent flush requests (see the module doc).
#[derive(Debug, Default)]
pub struct GroupFlush {
    state: Mutex<State>,
    finished: Condvar,
}

impl GroupFlush {
    /// Returns after a flush that started after this call began finished; fails only if the
    /// flush this caller ran itself failed.
    pub fn flush(&self, engine: &dyn Engine) -> Result<(), StorageError> {
        // An engine with its own group commit (sled) shares the fsync with the Raft appends of
        // every CP group, and runs it on its flush thread rather than here.
        if let Some(commit) = engine.group_commit() {
            return wait_for_flush(&commit);
        }
        let mut state = self.state.lock().expect("flush lock poisoned");
        // A flush running now may have started before the caller's write: it covers nothing.
        let needed = state.started + 1;
        loop {
            if state.succeeded >= needed {
                return Ok(());
            }
            if !state.flushing {
                // Lead one (again, if the one that should have covered us failed).
                state.flushing = true;
                state.started += 1;
                let generation = state.started;
                drop(state);
                let result = engine.flush();
                let mut state = self.state.lock().expect("flush lock poisoned");
                state.flushing = false;
                if result.is_ok() {
                    state.succeeded = state.succeeded.max(generation);
                }
                self.finished.notify_all();
                return result;
            }
            state.waiting += 1;
            state = self.finished.wait(state).expect("flush lock poisoned");
            state.waiting -= 1;
        }
    }

    /// Callers waiting for a flush.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().expect("flush lock poisoned").waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;
    use crate::storage::{Result, Tree};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    /// How long a test waits for a thread to reach a state before failing (never a sleep).
    const DEADLINE: Duration = Duration::from_secs(30);

    /// An engine whose flushes each wait for the test's go-ahead and are counted.
    struct GatedEngine {
        inner: MemoryEngine,
        started: mpsc::Sender<()>,
        go: StdMutex<mpsc::Receiver<Result<()>>>,
    }

    impl Engine for GatedEngine {
        fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
            self.inner.open_tree(name)
        }
        fn flush(&self) -> Result<()> {
            self.started.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap()
        }
        fn location(&self) -> &str {
            "gated"
        }
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < DEADLINE, "{what}: not reached");
            std::thread::yield_now();
        }
    }

    #[test]
    fn callers_during_a_flush_wait_for_the_next_one_and_share_it() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let engine = Arc::new(GatedEngine {
            inner: MemoryEngine::new(),
            started: started_tx,
            go: StdMutex::new(go_rx),
        });
        let group = Arc::new(GroupFlush::default());
        let call = |group: &Arc<GroupFlush>, engine: &Arc<GatedEngine>| {
            let (group, engine) = (group.clone(), engine.clone());
            std::thread::spawn(move || group.flush(&*engine))
        };
        // A leads the first flush.
        let a = call(&group, &engine);
        started.recv_timeout(DEADLINE).unwrap();
        // B and C arrive while it runs: it may have started before their writes.
        let b = call(&group, &engine);
        let c = call(&group, &engine);
        wait_until("B and C waiting", || group.waiting() == 2);
        go.send(Ok(())).unwrap();
        a.join().unwrap().unwrap();
        // One more flush, led by B or C, covers both.
        started.recv_timeout(DEADLINE).unwrap();
        assert!(
            !b.is_finished() && !c.is_finished(),
            "acked before their flush"
        );
        go.send(Ok(())).unwrap();
        b.join().unwrap().unwrap();
        c.join().unwrap().unwrap();
        assert!(
            started.try_recv().is_err(),
            "B and C shared one flush: two flushes for three callers"
        );
    }

    #[test]
    fn a_failed_flush_is_reported_to_its_leader_and_retried_by_waiters() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let engine = Arc::new(GatedEngine {
            inner: MemoryEngine::new(),
            started: started_tx,
            go: StdMutex::new(go_rx),
        });
        let group = Arc::new(GroupFlush::default());
        let (g, e) = (group.clone(), engine.clone());
        let a = std::thread::spawn(move || g.flush(&*e));
        started.recv_timeout(DEADLINE).unwrap();
        let (g, e) = (group.clone(), engine.clone());
        let b = std::thread::spawn(move || g.flush(&*e));
        wait_until("B waiting", || group.waiting() == 1);
        // A's own flush fails: A reports it. B's flush (the next one) fails too: B reports it.
        let failure = || StorageError::Engine {
            location: "gated".into(),
            message: "disk full".into(),
        };
        go.send(Err(failure())).unwrap();
        assert!(a.join().unwrap().is_err());
        started.recv_timeout(DEADLINE).unwrap();
        go.send(Err(failure())).unwrap();
        assert!(b.join().unwrap().is_err());
        // A later caller leads a new flush that succeeds.
        let (g, e) = (group.clone(), engine.clone());
        let c = std::thread::spawn(move || g.flush(&*e));
        started.recv_timeout(DEADLINE).unwrap();
        go.send(Ok(())).unwrap();
        c.join().unwrap().unwrap();
    }
}
