//! Group commit: one fsync covers every write that was ready when it started. Callers register
//! after their writes are applied (in memory); a dedicated thread drains every registration
//! waiting, flushes the whole database once, and completes them all with the result. So
//! concurrent Raft appends of many groups and AP replica writes share one fsync, and the
//! blocking flush never runs on an async worker.
//!
//! **Invariant:** a registration is completed only by a flush that started after it was made,
//! so every write made before registering is durable when its completion says `Ok`.

use super::error::{Result, StorageError};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

/// What runs after the flush that covers a registration.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Most registrations one flush completes; more wait for the next (a bound on one round's work).
pub const MAX_COMPLETIONS_PER_FLUSH: usize = 65_536;

/// A flush thread shared by every tree of one engine.
pub struct GroupCommit {
    tx: Mutex<Option<mpsc::Sender<Completion>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flush thread; `flush` makes every earlier write of the engine durable.
    pub fn start(
        name: &str,
        flush: impl Fn() -> Result<()> + Send + 'static,
    ) -> std::io::Result<GroupCommit> {
        let (tx, rx) = mpsc::channel::<Completion>();
        let thread = std::thread::Builder::new()
            .name(format!("kv-fsync-{name}"))
            .spawn(move || run(rx, flush))?;
        Ok(GroupCommit {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `done` after a flush that started after this call (in the flush thread: keep it
    /// short, e.g. send on a channel).
    pub fn after_flush(&self, done: Completion) {
        let tx = self.tx.lock().expect("group commit lock").clone();
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(done)) = tx.send(done) {
                    done(Err(stopped()));
                }
            }
            None => done(Err(stopped())),
        }
    }

    /// Waits for a flush that started after this call.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it completes what is queued; joining it
        // releases the database handle it holds before the engine's owner reopens the path.
        self.tx.lock().expect("group commit lock").take();
        if let Some(thread) = self.thread.lock().expect("group commit lock").take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StorageError {
    StorageError::Engine {
        location: "group commit".into(),
        message: "the flush thread has stopped (the engine is closing)".into(),
    }
}

fn run(rx: mpsc::Receiver<Completion>, flush: impl Fn() -> Result<()>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_COMPLETIONS_PER_FLUSH {
            match rx.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = flush();
        let m = crate::metrics::metrics();
        m.storage_flushes.inc();
        m.storage_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        for done in batch {
            done(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_syncs_share_flushes_and_each_waits_for_one() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let writes = Arc::new(AtomicUsize::new(0));
        let durable = Arc::new(AtomicUsize::new(0));
        let gc = {
            let (flushes, writes, durable) = (flushes.clone(), writes.clone(), durable.clone());
            Arc::new(
                GroupCommit::start("test", move || {
                    // What is written when the flush starts becomes durable.
                    durable.store(writes.load(Ordering::SeqCst), Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    flushes.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap(),
            )
        };
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (gc, writes, durable) = (gc.clone(), writes.clone(), durable.clone());
                tokio::spawn(async move {
                    let mine = writes.fetch_add(1, Ordering::SeqCst) + 1;
                    gc.sync().await.unwrap();
                    // The flush that completed us started after our write.
                    assert!(durable.load(Ordering::SeqCst) >= mine);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "{n} flushes for 200 syncs");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_waiter_and_a_dropped_engine_fails_new_ones() {
        let gc = GroupCommit::start("failing", || {
            Err(StorageError::Engine {
                location: "disk".into(),
                message: "EIO".into(),
            })
        })
        .unwrap();
        let err = gc.sync().await.unwrap_err();
        assert!(err.to_string().contains("EIO"), "{err}");
        drop(gc);
    }
}
