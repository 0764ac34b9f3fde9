//! Unit tests of `ReadRounds`: rounds driven by hand (each fake round announces its start and
//! waits for the test to finish it with an outcome), plus a concurrent property run.

use super::{ReadRounds, RoundFn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Outcome = Result<u64, String>;

/// A started round: its number (1-based) and the handle that finishes it.
struct Started {
    number: u64,
    finish: oneshot::Sender<Outcome>,
}

/// Rounds whose starts arrive on the returned channel and which end when the test says so.
fn manual_rounds() -> (Arc<ReadRounds<Outcome>>, mpsc::UnboundedReceiver<Started>) {
    manual_rounds_in_flight(1)
}

/// Like `manual_rounds`, with up to `max_in_flight` rounds at a time.
fn manual_rounds_in_flight(
    max_in_flight: usize,
) -> (Arc<ReadRounds<Outcome>>, mpsc::UnboundedReceiver<Started>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let counter = Arc::new(AtomicU64::new(0));
    let round: RoundFn<Outcome> = Box::new(move || {
        let tx = tx.clone();
        let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let (finish, done) = oneshot::channel();
            if tx.send(Started { number, finish }).is_err() {
                return Err("test gone".into());
            }
            done.await.unwrap_or_else(|_| Err("round abandoned".into()))
        })
    });
    (Arc::new(ReadRounds::new(round, max_in_flight)), rx)
}

/// Waits (generously) for `cond`, yielding to the other tasks in between.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "timed out waiting until {what}");
}

async fn next_started(rx: &mut mpsc::UnboundedReceiver<Started>) -> Started {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a round should start")
        .expect("the rounds are alive")
}

fn reader(
    rounds: &Arc<ReadRounds<Outcome>>,
) -> tokio::task::JoinHandle<Option<Result<u64, String>>> {
    let rounds = rounds.clone();
    tokio::spawn(async move { rounds.next_round().await })
}

#[tokio::test]
async fn reads_arriving_during_a_round_wait_for_the_next_one() {
    let (rounds, mut started) = manual_rounds();
    let a = reader(&rounds);
    let first = next_started(&mut started).await;
    assert_eq!(first.number, 1);

    let b = reader(&rounds);
    let c = reader(&rounds);
    until("b and c wait", || rounds.waiting() == 2).await;
    first.finish.send(Ok(10)).unwrap();
    assert_eq!(a.await.unwrap(), Some(Ok(10)));

    // b and c arrived while round 1 ran: round 1's index was taken before them.
    let second = next_started(&mut started).await;
    assert_eq!(second.number, 2);
    assert!(!b.is_finished() && !c.is_finished());
    second.finish.send(Ok(20)).unwrap();
    assert_eq!(b.await.unwrap(), Some(Ok(20)));
    assert_eq!(c.await.unwrap(), Some(Ok(20)));
    assert_eq!(rounds.rounds_started(), 2);
    until("the driver stops", || rounds.is_idle()).await;
    assert!(started.try_recv().is_err(), "no round without a reader");
}

#[tokio::test]
async fn one_round_serves_every_read_that_waited_for_it() {
    let (rounds, mut started) = manual_rounds();
    let first_reader = reader(&rounds);
    let first = next_started(&mut started).await;
    let waiting: Vec<_> = (0..100).map(|_| reader(&rounds)).collect();
    until("100 reads wait", || rounds.waiting() == 100).await;
    first.finish.send(Ok(1)).unwrap();
    assert_eq!(first_reader.await.unwrap(), Some(Ok(1)));

    next_started(&mut started).await.finish.send(Ok(7)).unwrap();
    for r in waiting {
        assert_eq!(r.await.unwrap(), Some(Ok(7)));
    }
    assert_eq!(rounds.rounds_started(), 2, "100 reads, one round");
}

#[tokio::test]
async fn an_error_reaches_every_read_of_the_round_and_the_next_round_starts_afresh() {
    let (rounds, mut started) = manual_rounds();
    let first_reader = reader(&rounds);
    let first = next_started(&mut started).await;
    let waiting: Vec<_> = (0..5).map(|_| reader(&rounds)).collect();
    until("5 reads wait", || rounds.waiting() == 5).await;
    first.finish.send(Err("not leader".into())).unwrap();
    assert_eq!(first_reader.await.unwrap(), Some(Err("not leader".into())));

    next_started(&mut started)
        .await
        .finish
        .send(Err("quorum not enough".into()))
        .unwrap();
    for r in waiting {
        assert_eq!(r.await.unwrap(), Some(Err("quorum not enough".into())));
    }

    let later = reader(&rounds);
    next_started(&mut started).await.finish.send(Ok(3)).unwrap();
    assert_eq!(later.await.unwrap(), Some(Ok(3)));
}

#[tokio::test]
async fn a_round_whose_readers_all_left_is_skipped() {
    let (rounds, mut started) = manual_rounds();
    let a = reader(&rounds);
    let first = next_started(&mut started).await;
    let gone = reader(&rounds);
    until("the second read waits", || rounds.waiting() == 1).await;
    gone.abort();
    let _ = gone.await;
    first.finish.send(Ok(5)).unwrap();
    assert_eq!(a.await.unwrap(), Some(Ok(5)));
    until("the driver stops", || rounds.is_idle()).await;
    assert!(started.try_recv().is_err(), "nobody waited for round 2");
    assert_eq!(rounds.rounds_started(), 1);
}

#[test]
fn a_driver_dropped_with_its_runtime_fails_its_reads_and_the_next_read_starts_a_new_one() {
    let (rounds, mut started) = manual_rounds();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first_rt = rt();
    let (stuck, round1) = first_rt.block_on(async {
        let stuck = reader(&rounds);
        let round1 = next_started(&mut started).await;
        (stuck, round1)
    });
    // Dropping the runtime drops the driver task mid-round (a node shutting down).
    drop(first_rt);
    drop(round1);
    drop(stuck);
    assert!(rounds.is_idle());
    assert_eq!(rounds.waiting(), 0);

    rt().block_on(async {
        let r = reader(&rounds);
        next_started(&mut started).await.finish.send(Ok(9)).unwrap();
        assert_eq!(r.await.unwrap(), Some(Ok(9)));
    });
}

/// Many readers on a multi-threaded runtime, arriving while rounds run: each notes how many
/// rounds had started before it asked, and must get a round numbered higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_gets_the_outcome_of_a_round_that_started_before_it() {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let round: RoundFn<u64> = Box::new(move || {
        let number = c.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            for _ in 0..(number % 4) {
                tokio::task::yield_now().await;
            }
            number
        })
    });
    let rounds = Arc::new(ReadRounds::new(round, 2));
    let mut readers = Vec::new();
    for i in 0..2000u64 {
        let rounds = rounds.clone();
        let counter = counter.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..(i % 3) {
                tokio::task::yield_now().await;
            }
            let before = counter.load(Ordering::SeqCst);
            let got = rounds.next_round().await.expect("round finished");
            (before, got)
        }));
    }
    let mut served = 0;
    for r in readers {
        let (before, got) = r.await.unwrap();
        assert!(
            got > before,
            "a read that began after round {before} started got round {got}'s outcome"
        );
        served += 1;
    }
    assert_eq!(served, 2000);
    let rounds_run = counter.load(Ordering::SeqCst);
    assert!(
        rounds_run < 2000,
        "2000 reads took {rounds_run} rounds: none was shared"
    );
}

#[tokio::test]
async fn with_two_rounds_in_flight_a_second_read_starts_at_once_and_a_third_waits() {
    let (rounds, mut started) = manual_rounds_in_flight(2);
    let a = reader(&rounds);
    let first = next_started(&mut started).await;
    let b = reader(&rounds);
    let second = next_started(&mut started).await;
    assert_eq!((first.number, second.number), (1, 2));
    let c = reader(&rounds);
    let d = reader(&rounds);
    until("c and d wait", || rounds.waiting() == 2).await;
    assert!(started.try_recv().is_err(), "a third round while two run");
    // The later round ends first: only its reader is answered, c and d start the next round.
    second.finish.send(Ok(2)).unwrap();
    assert_eq!(b.await.unwrap(), Some(Ok(2)));
    let third = next_started(&mut started).await;
    assert_eq!(third.number, 3);
    assert!(!a.is_finished() && !c.is_finished() && !d.is_finished());
    first.finish.send(Ok(1)).unwrap();
    assert_eq!(a.await.unwrap(), Some(Ok(1)));
    third.finish.send(Ok(3)).unwrap();
    assert_eq!(c.await.unwrap(), Some(Ok(3)));
    assert_eq!(d.await.unwrap(), Some(Ok(3)));
    until("the drivers stop", || rounds.is_idle()).await;
    assert_eq!(rounds.rounds_started(), 3);
}
