//! `Stragglers`: one task per AP engine that finishes what writes leave running after their
//! caller was answered — the replica sends still in flight after W acks, and the hints that
//! replace the ones that fail — instead of a task per write.
//!
//! Invariants: every future handed to `run` is polled to completion unless the runtime itself
//! stops (then it is dropped, as a spawned task would be); the task starts on first use and
//! ends once the engine is gone and nothing is left to finish. What it holds is bounded by the
//! AP writes in flight (`ApConfig::max_writes_in_flight`), each of which has a slot reserved
//! before anything is sent.

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::Mutex;
use tokio::sync::mpsc;

type Work = BoxFuture<'static, ()>;

/// The hand-off to the straggler task (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Stragglers {
    tx: Mutex<Option<mpsc::UnboundedSender<Work>>>,
}

impl Stragglers {
    /// Polls `work` to completion on the straggler task, starting the task if none runs (the
    /// first use, or the runtime of the previous one is gone). Outside a runtime `work` is
    /// dropped: there is nothing left to run it.
    pub(super) fn run(&self, work: Work) {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let work = match tx.as_ref() {
            Some(sender) => match sender.send(work) {
                Ok(()) => return,
                Err(mpsc::error::SendError(work)) => work,
            },
            None => work,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (sender, rx) = mpsc::unbounded_channel();
        let _ = sender.send(work);
        runtime.spawn(finish_all(rx));
        *tx = Some(sender);
    }
}

/// Polls every future received on `rx` to completion; returns once the sender is gone (the
/// engine dropped) and all are done.
async fn finish_all(mut rx: mpsc::UnboundedReceiver<Work>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(work) => running.push(work),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::Stragglers;
    use std::sync::Arc;
    use tokio::sync::oneshot;

    /// Work handed over runs to the end without its caller, many at once on one task.
    #[tokio::test]
    async fn work_handed_over_finishes_without_its_caller() {
        let stragglers = Stragglers::default();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut done = Vec::new();
        for _ in 0..50 {
            let (tx, rx) = oneshot::channel();
            let mut release = release_rx.clone();
            stragglers.run(Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
                let _ = tx.send(());
            }));
            done.push(rx);
        }
        release_tx.send(true).unwrap();
        for rx in done {
            rx.await.expect("the work ran to completion");
        }
    }

    /// A runtime that stopped took its task along; the next hand-off starts a new one.
    #[test]
    fn a_new_task_starts_when_the_previous_runtime_is_gone() {
        let stragglers = Arc::new(Stragglers::default());
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = rt();
        first.block_on(async {
            let (tx, rx) = oneshot::channel();
            stragglers.run(Box::pin(async move {
                let _ = tx.send(());
            }));
            rx.await.unwrap();
        });
        drop(first);
        rt().block_on(async {
            let (tx, rx) = oneshot::channel();
            stragglers.run(Box::pin(async move {
                let _ = tx.send(());
            }));
            rx.await.expect("a new straggler task ran the work");
        });
    }
}
