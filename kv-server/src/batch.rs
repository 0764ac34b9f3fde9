//! `Batcher`: coalesces the calls of many callers bound for one peer into few RPCs — the Raft
//! messages of every group (`cp::batch`) and the AP replica writes of every coordinated write
//! (`transport`). Items queue per peer; when fewer than [`MAX_BATCH_CALLS_IN_FLIGHT`] calls to
//! that peer are in flight one is started at once (no added latency when idle), otherwise the
//! item waits and leaves with everything queued behind the call in flight, up to a byte budget
//! and [`MAX_BATCH_MESSAGES`].
//!
//! Invariants: every caller gets exactly one answer — its own result, or the whole call's
//! error — and every call is bounded by the batcher's timeout, so a hung peer holds a call slot
//! for at most that long; a call whose callers have all given up is cancelled at once, and an
//! item whose caller has given up is not sent. Order is not kept across the concurrent calls:
//! callers that need order (openraft's AppendEntries of one group) never have two items in
//! flight at once. `NoBatch` remembers the peers that do not know a batch call (an older
//! build), which their senders then reach with single calls for a while.

use crate::types::NodeId;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most batch calls to one peer at a time: two, so one call held up by a slow item (a large
/// append being made durable) does not hold back every other caller.
pub const MAX_BATCH_CALLS_IN_FLIGHT: usize = 2;
/// Most items in one batch call (the receiver refuses more).
pub const MAX_BATCH_MESSAGES: usize = 256;
/// Bytes counted for one item's framing in a batch (ids, kinds, lengths), on top of its
/// payload, so a full batch stays under the peer message limit.
pub const MESSAGE_FRAMING_BYTES: usize = 32;
/// Most items waiting for one peer; beyond it an item is refused as unreachable (the caller
/// backs off or falls back), so a dead peer cannot grow the queue without bound.
pub const MAX_QUEUED_MESSAGES: usize = 4096;

/// How long a peer that answered a batch call with UNIMPLEMENTED (a build from before that
/// call) gets single calls before batching is tried again (it may have been upgraded).
pub const BATCH_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The peers that lately refused a batch call as UNIMPLEMENTED, and since when: they get the
/// same messages as single calls meanwhile, so a cluster in the middle of a rolling upgrade
/// keeps replicating.
#[derive(Default)]
pub struct NoBatch(Mutex<BTreeMap<NodeId, tokio::time::Instant>>);

impl NoBatch {
    /// Whether `to` refused a batch less than `BATCH_RETRY_AFTER` ago.
    pub fn refuses(&self, to: NodeId) -> bool {
        let mut peers = self.0.lock().expect("no-batch lock");
        match peers.get(&to) {
            Some(since) if since.elapsed() < BATCH_RETRY_AFTER => true,
            Some(_) => {
                peers.remove(&to);
                false
            }
            None => false,
        }
    }

    /// Remembers that `to` refused a batch call (`what`) now.
    pub fn refused(&self, to: NodeId, what: &str) {
        let first = self
            .0
            .lock()
            .expect("no-batch lock")
            .insert(to, tokio::time::Instant::now())
            .is_none();
        if first {
            tracing::warn!(peer = to, call = what, "the peer does not know batch calls (an older build?); sending it single calls for {} s", BATCH_RETRY_AFTER.as_secs());
        }
    }
}

/// An item that can travel in a batch.
pub trait BatchItem: Send + 'static {
    /// The bytes it adds to a call (payload; framing is added by the batcher).
    fn payload_bytes(&self) -> usize;
}

/// The errors a batcher reports on its own (not the peer's).
pub trait BatchError: Clone + Send + 'static {
    /// The peer cannot be reached now (the queue is full): nothing was sent.
    fn unreachable(to: NodeId, reason: String) -> Self;
    /// The call failed or went unanswered: the item may have reached the peer.
    fn network(to: NodeId, reason: String) -> Self;
}

/// Sends one batch to one peer: `Ok` holds one result per item, in order; `Err` is the whole
/// call's failure (it reaches every item).
pub trait BatchSend<I, O, E>: Send + Sync + 'static {
    /// Sends `items` to `to` in one call.
    fn send_batch(
        &self,
        to: NodeId,
        items: Vec<I>,
    ) -> BoxFuture<'static, Result<Vec<Result<O, E>>, E>>;
}

struct Pending<I, O, E> {
    item: I,
    reply: oneshot::Sender<Result<O, E>>,
}

struct Queue<I, O, E> {
    waiting: VecDeque<Pending<I, O, E>>,
    in_flight: usize,
}

/// The batching sender of one peer.
pub struct Batcher<I, O, E> {
    to: NodeId,
    /// What the items are, in errors ("Raft messages", "AP replica writes").
    what: &'static str,
    sender: Arc<dyn BatchSend<I, O, E>>,
    budget_bytes: usize,
    call_timeout: Duration,
    queue: Mutex<Queue<I, O, E>>,
}

impl<I: BatchItem, O: Send + 'static, E: BatchError> Batcher<I, O, E> {
    /// A batcher of `what` to `to` over `sender`; one call carries at most `budget_bytes` of
    /// items (a single larger item goes alone) and is given up after `call_timeout`.
    pub fn new(
        to: NodeId,
        what: &'static str,
        sender: Arc<dyn BatchSend<I, O, E>>,
        budget_bytes: usize,
        call_timeout: Duration,
    ) -> Self {
        Self {
            to,
            what,
            sender,
            budget_bytes,
            call_timeout,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                in_flight: 0,
            }),
        }
    }

    /// Queues one item and resolves to its answer.
    pub fn send(self: &Arc<Self>, item: I) -> BoxFuture<'static, Result<O, E>> {
        let (to, what) = (self.to, self.what);
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("batch queue lock");
            if q.waiting.len() >= MAX_QUEUED_MESSAGES {
                return Box::pin(async move {
                    Err(E::unreachable(
                        to,
                        format!("{MAX_QUEUED_MESSAGES} {what} already wait for this node"),
                    ))
                });
            }
            q.waiting.push_back(Pending { item, reply });
            let start = q.in_flight < MAX_BATCH_CALLS_IN_FLIGHT;
            if start {
                q.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(E::network(
                    to,
                    "the batch carrying this message was abandoned".into(),
                ))
            })
        })
    }

    /// Calls the peer until the queue is empty, then gives its call slot back.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().expect("batch queue lock");
                let batch = take_batch(&mut q.waiting, self.budget_bytes);
                if batch.is_empty() {
                    q.in_flight -= 1;
                    return;
                }
                batch
            };
            let (items, mut replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            let count = items.len();
            let sent =
                tokio::time::timeout(self.call_timeout, self.sender.send_batch(self.to, items));
            // openraft gives an AppendEntries one heartbeat interval, a coordinator its write
            // timeout: once every caller of this call has given up, the call is dropped
            // (cancelled) rather than held to its timeout, so the slot serves the retries.
            let outcome = {
                let all_gone = futures::future::join_all(replies.iter_mut().map(|r| r.closed()));
                tokio::select! {
                    outcome = sent => Some(outcome),
                    _ = all_gone => None,
                }
            };
            let Some(outcome) = outcome else {
                continue;
            };
            let whole = |reason: String| -> Vec<Result<O, E>> {
                (0..count)
                    .map(|_| Err(E::network(self.to, reason.clone())))
                    .collect()
            };
            let results = match outcome {
                Ok(Ok(results)) if results.len() == count => results,
                Ok(Ok(results)) => whole(format!(
                    "the peer answered {} results to a batch of {count} messages",
                    results.len()
                )),
                Ok(Err(e)) => (0..count).map(|_| Err(e.clone())).collect(),
                Err(_) => whole(format!(
                    "no answer to a batch of {count} {} within {} ms",
                    self.what,
                    self.call_timeout.as_millis()
                )),
            };
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up (its own timeout) dropped its receiver: nothing to do.
                let _ = reply.send(result);
            }
        }
    }
}

/// Takes the next batch off the front of `waiting`: at least one item when any waits, then
/// as many as fit `budget_bytes` and [`MAX_BATCH_MESSAGES`]. Items whose caller is gone are
/// dropped unsent.
fn take_batch<I: BatchItem, O, E>(
    waiting: &mut VecDeque<Pending<I, O, E>>,
    budget_bytes: usize,
) -> Vec<Pending<I, O, E>> {
    let mut batch = Vec::new();
    let mut used = 0usize;
    while let Some(next) = waiting.front() {
        if next.reply.is_closed() {
            waiting.pop_front();
            continue;
        }
        let size = next.item.payload_bytes() + MESSAGE_FRAMING_BYTES;
        if !batch.is_empty() && (used + size > budget_bytes || batch.len() >= MAX_BATCH_MESSAGES) {
            break;
        }
        used += size;
        batch.extend(waiting.pop_front());
    }
    batch
}
