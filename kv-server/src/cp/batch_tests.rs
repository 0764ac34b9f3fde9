//! Tests of `RaftBatcher` against a scripted peer.

use super::*;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// What the scripted peer does with a batch.
#[derive(Clone)]
enum Script {
    /// Answers each message with its own payload, prefixed by its group; group 99 fails.
    Echo,
    /// Fails the whole call.
    Fail(TransportError),
    /// Answers one result fewer than it was sent.
    Short,
    /// Never answers.
    Hang,
}

/// A peer that reports every batch it is sent and answers once the gate lets it.
struct Peer {
    seen: mpsc::UnboundedSender<Vec<BatchItem>>,
    gate: Arc<Semaphore>,
    script: Script,
}

impl BatchSend<BatchItem, Vec<u8>, TransportError> for Peer {
    fn send_batch(
        &self,
        to: NodeId,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'static, Result<Vec<ItemResult>, TransportError>> {
        let _ = self.seen.send(items.clone());
        let (gate, script) = (self.gate.clone(), self.script.clone());
        Box::pin(async move {
            gate.acquire().await.expect("gate").forget();
            match script {
                Script::Echo => Ok(items
                    .iter()
                    .map(|i| {
                        if i.group == 99 {
                            Err(TransportError::Network {
                                to,
                                reason: "unknown group 99".into(),
                            })
                        } else {
                            Ok([i.group.to_be_bytes().to_vec(), i.payload.clone()].concat())
                        }
                    })
                    .collect()),
                Script::Fail(e) => Err(e),
                Script::Short => Ok(items.iter().skip(1).map(|_| Ok(vec![])).collect()),
                Script::Hang => std::future::pending().await,
            }
        })
    }
}

struct Rig {
    batcher: Arc<RaftBatcher>,
    seen: mpsc::UnboundedReceiver<Vec<BatchItem>>,
    gate: Arc<Semaphore>,
}

/// A batcher to node 2 over a scripted peer whose gate starts with `open` permits.
fn rig(script: Script, budget_bytes: usize, open: usize) -> Rig {
    let (tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(open));
    let peer = Peer {
        seen: tx,
        gate: gate.clone(),
        script,
    };
    Rig {
        batcher: Arc::new(RaftBatcher::new(
            2,
            "Raft messages",
            Arc::new(peer),
            budget_bytes,
            Duration::from_secs(1),
        )),
        seen,
        gate,
    }
}

fn item(group: u64, payload_bytes: usize) -> BatchItem {
    BatchItem {
        group,
        kind: RaftKind::Append,
        payload: vec![group as u8; payload_bytes],
    }
}

fn echo(group: u64, payload_bytes: usize) -> ItemResult {
    Ok([
        group.to_be_bytes().to_vec(),
        vec![group as u8; payload_bytes],
    ]
    .concat())
}

const BIG: usize = 1 << 20;

#[tokio::test]
async fn an_idle_peer_gets_a_message_at_once() {
    let mut r = rig(Script::Echo, BIG, 1000);
    let answer = r.batcher.send(item(1, 10)).await;
    assert_eq!(answer, echo(1, 10));
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(1, 10)]);
    assert!(r.seen.try_recv().is_err(), "one call");
}

#[tokio::test]
async fn what_arrives_while_calls_are_in_flight_leaves_in_one_call() {
    let mut r = rig(Script::Echo, BIG, 0);
    // Two calls start at once, each with the one message there was.
    let first = r.batcher.send(item(1, 10));
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(1, 10)]);
    let second = r.batcher.send(item(2, 10));
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(2, 10)]);
    // Both slots are taken: 48 more wait, then leave together behind the first answer.
    let rest: Vec<_> = (3..=50).map(|g| r.batcher.send(item(g, 10))).collect();
    r.gate.add_permits(1000);
    assert_eq!(first.await, echo(1, 10));
    assert_eq!(second.await, echo(2, 10));
    for (g, answer) in (3..=50).zip(futures::future::join_all(rest).await) {
        assert_eq!(answer, echo(g, 10), "each caller gets its own answer");
    }
    let third = r.seen.recv().await.unwrap();
    assert_eq!(third, (3..=50).map(|g| item(g, 10)).collect::<Vec<_>>());
    assert!(r.seen.try_recv().is_err(), "50 messages, 3 calls");
}

#[tokio::test]
async fn a_message_that_fails_fails_alone() {
    let r = rig(Script::Echo, BIG, 1000);
    let answers = futures::future::join_all([1, 99, 3].map(|g| r.batcher.send(item(g, 5)))).await;
    assert_eq!(answers[0], echo(1, 5));
    assert_eq!(
        answers[1],
        Err(TransportError::Network {
            to: 2,
            reason: "unknown group 99".into()
        })
    );
    assert_eq!(answers[2], echo(3, 5));
}

#[tokio::test]
async fn a_failed_call_reaches_every_caller() {
    let down = TransportError::Unreachable {
        to: 2,
        reason: "traffic to n2 is dropped by fault injection".into(),
    };
    let r = rig(Script::Fail(down.clone()), BIG, 1000);
    let answers = futures::future::join_all((1..=5).map(|g| r.batcher.send(item(g, 5)))).await;
    assert_eq!(answers, vec![Err(down); 5]);

    let r = rig(Script::Short, BIG, 1000);
    let answers = futures::future::join_all((1..=3).map(|g| r.batcher.send(item(g, 5)))).await;
    for a in answers {
        assert_eq!(
            a,
            Err(TransportError::Network {
                to: 2,
                reason: "the peer answered 2 results to a batch of 3 messages".into()
            })
        );
    }
}

#[tokio::test]
async fn a_full_budget_splits_into_several_calls() {
    // 100-byte messages cost 132 bytes each with framing: two fit in 300.
    let mut r = rig(Script::Echo, 300, 1000);
    let answers = futures::future::join_all((1..=5).map(|g| r.batcher.send(item(g, 100)))).await;
    assert!(answers.iter().all(Result::is_ok));
    let mut sizes = Vec::new();
    while let Ok(batch) = r.seen.try_recv() {
        sizes.push(batch.len());
    }
    assert_eq!(sizes, [2, 2, 1]);

    // A message over the budget still goes, alone.
    let mut r = rig(Script::Echo, 300, 1000);
    let answers =
        futures::future::join_all([r.batcher.send(item(1, 500)), r.batcher.send(item(2, 10))])
            .await;
    assert_eq!(answers, [echo(1, 500), echo(2, 10)]);
    assert_eq!(r.seen.try_recv().unwrap().len(), 1);
    assert_eq!(r.seen.try_recv().unwrap().len(), 1);

    // And a call never holds more than MAX_BATCH_MESSAGES.
    let mut r = rig(Script::Echo, BIG, 1000);
    let n = MAX_BATCH_MESSAGES * 2 + 1;
    let answers =
        futures::future::join_all((0..n).map(|g| r.batcher.send(item(g as u64 + 100, 1)))).await;
    assert!(answers.iter().all(Result::is_ok));
    let mut sizes = Vec::new();
    while let Ok(batch) = r.seen.try_recv() {
        sizes.push(batch.len());
    }
    assert_eq!(sizes, [MAX_BATCH_MESSAGES, MAX_BATCH_MESSAGES, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_hung_call_times_out_for_its_callers_and_frees_its_slot() {
    let mut r = rig(Script::Hang, BIG, 1000);
    let answers = futures::future::join_all((1..=2).map(|g| r.batcher.send(item(g, 5)))).await;
    let timed_out = Err(TransportError::Network {
        to: 2,
        reason: "no answer to a batch of 2 Raft messages within 1000 ms".into(),
    });
    assert_eq!(answers, vec![timed_out.clone(), timed_out]);
    assert_eq!(r.seen.recv().await.unwrap().len(), 2);
    // The slot is free again: the next message is sent (and times out too).
    assert!(r.batcher.send(item(3, 5)).await.is_err());
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(3, 5)]);
}

#[tokio::test]
async fn a_message_whose_caller_gave_up_is_not_sent() {
    let mut r = rig(Script::Echo, BIG, 0);
    let first = r.batcher.send(item(1, 1));
    r.seen.recv().await.unwrap();
    let second = r.batcher.send(item(2, 1));
    r.seen.recv().await.unwrap();
    drop(r.batcher.send(item(3, 1)));
    let fourth = r.batcher.send(item(4, 1));
    r.gate.add_permits(1000);
    assert!(first.await.is_ok() && second.await.is_ok());
    assert_eq!(fourth.await, echo(4, 1));
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(4, 1)]);
}

#[tokio::test]
async fn a_full_queue_refuses_more_as_unreachable() {
    let mut r = rig(Script::Echo, BIG, 0);
    let mut held = Vec::new();
    for g in 0..MAX_BATCH_CALLS_IN_FLIGHT {
        // One at a time: each call takes everything queued when it starts.
        held.push(r.batcher.send(item(g as u64, 1)));
        r.seen.recv().await.unwrap();
    }
    let queued: Vec<_> = (0..MAX_QUEUED_MESSAGES)
        .map(|g| r.batcher.send(item(g as u64 + 100, 1)))
        .collect();
    let refused = r.batcher.send(item(1, 1)).await;
    assert!(
        matches!(&refused, Err(TransportError::Unreachable { to: 2, reason })
            if reason == "4096 Raft messages already wait for this node"),
        "{refused:?}"
    );
    r.gate.add_permits(100_000);
    assert!(futures::future::join_all(held)
        .await
        .iter()
        .all(Result::is_ok));
    assert!(futures::future::join_all(queued)
        .await
        .iter()
        .all(Result::is_ok));
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_callers_all_gave_up_frees_its_slot_at_once() {
    let mut r = rig(Script::Hang, BIG, 1000);
    for g in 1..=2 {
        // Each caller waits 100 ms (openraft's AppendEntries timeout), then gives up.
        let answer = tokio::time::timeout(Duration::from_millis(100), r.batcher.send(item(g, 5)));
        assert!(answer.await.is_err());
        assert_eq!(r.seen.recv().await.unwrap(), vec![item(g, 5)]);
    }
    // Both hung calls were cancelled when their callers left, long before the 1 s timeout:
    // the next message is sent at once.
    let start = tokio::time::Instant::now();
    let third = r.batcher.send(item(3, 5));
    assert_eq!(r.seen.recv().await.unwrap(), vec![item(3, 5)]);
    assert!(
        start.elapsed() < Duration::from_millis(10),
        "{:?}",
        start.elapsed()
    );
    drop(third);
}
