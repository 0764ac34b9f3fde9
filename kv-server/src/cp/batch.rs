//! `RaftBatcher`: coalesces the Raft messages of many groups bound for one peer into few calls.
//! Messages queue per peer; when fewer than [`MAX_BATCH_CALLS_IN_FLIGHT`] calls to that peer
//! are in flight one is started at once (no added latency when idle), otherwise the message
//! waits and leaves with everything queued behind the call in flight, up to a byte budget and
//! [`MAX_BATCH_MESSAGES`]. Invariants: every caller gets exactly one answer — its own result,
//! or the whole call's error — and every call is bounded by the batcher's timeout, so a hung
//! peer holds a call slot for at most that long; a call whose callers have all given up is
//! cancelled at once, and a message whose caller has given up is not sent. Order per group is not kept across the concurrent calls: openraft never has two
//! AppendEntries of one group to one peer outstanding, and votes and snapshot chunks do not go
//! through here.

use crate::cp::network::{RaftKind, TransportError};
use crate::types::NodeId;
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most batch calls to one peer at a time: two, so one call held up by a slow group (a large
/// append being made durable) does not hold back every other group's heartbeat.
pub const MAX_BATCH_CALLS_IN_FLIGHT: usize = 2;
/// Most messages in one batch call (the receiver refuses more).
pub const MAX_BATCH_MESSAGES: usize = 256;
/// Bytes counted for one message's framing in a batch (group, kind, lengths), on top of its
/// payload, so a full batch stays under the peer message limit.
pub const MESSAGE_FRAMING_BYTES: usize = 32;
/// Most messages waiting for one peer; beyond it a message is refused as unreachable (openraft
/// backs off), so a dead peer cannot grow the queue without bound.
pub const MAX_QUEUED_MESSAGES: usize = 4096;

/// One Raft message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The Raft group.
    pub group: u64,
    /// The kind of message.
    pub kind: RaftKind,
    /// The codec-encoded message.
    pub payload: Vec<u8>,
}

/// The answer to one message: the encoded response, or why there is none.
pub type ItemResult = Result<Vec<u8>, TransportError>;

/// Sends one batch to one peer: `Ok` holds one result per item, in order; `Err` is the whole
/// call's failure (it reaches every item).
pub trait BatchSend: Send + Sync + 'static {
    /// Sends `items` to `to` in one call.
    fn send_batch(
        &self,
        to: NodeId,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'static, Result<Vec<ItemResult>, TransportError>>;
}

struct Pending {
    item: BatchItem,
    reply: oneshot::Sender<ItemResult>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    in_flight: usize,
}

/// The batching sender of one peer.
pub struct RaftBatcher {
    to: NodeId,
    sender: Arc<dyn BatchSend>,
    budget_bytes: usize,
    call_timeout: Duration,
    queue: Mutex<Queue>,
}

impl RaftBatcher {
    /// A batcher of messages to `to` over `sender`; one call carries at most `budget_bytes` of
    /// messages (a single larger message goes alone) and is given up after `call_timeout`.
    pub fn new(
        to: NodeId,
        sender: Arc<dyn BatchSend>,
        budget_bytes: usize,
        call_timeout: Duration,
    ) -> Self {
        Self {
            to,
            sender,
            budget_bytes,
            call_timeout,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Queues one message and resolves to its answer.
    pub fn send(self: &Arc<Self>, item: BatchItem) -> BoxFuture<'static, ItemResult> {
        let to = self.to;
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("batch queue lock");
            if q.waiting.len() >= MAX_QUEUED_MESSAGES {
                return Box::pin(async move {
                    Err(TransportError::Unreachable {
                        to,
                        reason: format!(
                            "{MAX_QUEUED_MESSAGES} Raft messages already wait for this node"
                        ),
                    })
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
                Err(TransportError::Network {
                    to,
                    reason: "the batch carrying this message was abandoned".into(),
                })
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
            // openraft gives an AppendEntries one heartbeat interval: once every caller of this
            // call has given up, the call is dropped (cancelled) rather than held to its
            // timeout, so the slot serves the retries.
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
            let results = match outcome {
                Ok(Ok(results)) if results.len() == count => results.into_iter().collect(),
                Ok(Ok(results)) => vec![
                    Err(TransportError::Network {
                        to: self.to,
                        reason: format!(
                            "the peer answered {} results to a batch of {count} messages",
                            results.len()
                        ),
                    });
                    count
                ],
                Ok(Err(e)) => vec![Err(e); count],
                Err(_) => vec![
                    Err(TransportError::Network {
                        to: self.to,
                        reason: format!(
                            "no answer to a batch of {count} Raft messages within {} ms",
                            self.call_timeout.as_millis()
                        ),
                    });
                    count
                ],
            };
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up (its own timeout) dropped its receiver: nothing to do.
                let _ = reply.send(result);
            }
        }
    }
}

/// Takes the next batch off the front of `waiting`: at least one message when any waits, then
/// as many as fit `budget_bytes` and [`MAX_BATCH_MESSAGES`]. Messages whose caller is gone are
/// dropped unsent.
fn take_batch(waiting: &mut VecDeque<Pending>, budget_bytes: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut used = 0usize;
    while let Some(next) = waiting.front() {
        if next.reply.is_closed() {
            waiting.pop_front();
            continue;
        }
        let size = next.item.payload.len() + MESSAGE_FRAMING_BYTES;
        if !batch.is_empty() && (used + size > budget_bytes || batch.len() >= MAX_BATCH_MESSAGES) {
            break;
        }
        used += size;
        batch.extend(waiting.pop_front());
    }
    batch
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
