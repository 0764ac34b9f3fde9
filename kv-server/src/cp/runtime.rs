//! `CpRuntime`: the `AsyncRuntime` of every CP group. It delegates everything to tokio (so
//! openraft's timers follow turmoil's simulated clock) and differs from openraft's
//! `TokioRuntime` in one place: the random number generator.
//!
//! openraft's only randomness is the election timeout, drawn once per `Raft` inside `Raft::new`
//! from `AsyncRuntime::thread_rng()`. `thread_rng()` takes no argument, so a seed reaches it
//! through a tokio task-local: `with_seed(seed, Raft::new(..))` makes every draw made while that
//! future is polled come from a generator seeded with `seed`. A task-local (not a thread-local)
//! matters inside turmoil, where every simulated host runs on the same thread and their futures
//! interleave. Outside `with_seed` (real processes, by default) draws come from the OS-seeded
//! thread generator, as with `TokioRuntime`.

use openraft::async_runtime::AsyncRuntime;
use openraft::{OptionalSend, TokioRuntime};
use rand::rngs::{StdRng, ThreadRng};
use rand::{RngCore, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static SEEDED_RNG: RefCell<StdRng>;
}

/// Runs `fut` with `thread_rng()` of `CpRuntime` drawing from a generator seeded with `seed`.
pub async fn with_seed<F: Future>(seed: u64, fut: F) -> F::Output {
    SEEDED_RNG
        .scope(RefCell::new(StdRng::seed_from_u64(seed)), fut)
        .await
}

/// The seed of one group on one node: the root seed mixed with both ids, so every (node, group)
/// pair draws its own election timeout and the same root seed always gives the same ones.
pub fn derive_seed(root: u64, node_id: u64, group: u64) -> u64 {
    splitmix64(splitmix64(root ^ splitmix64(node_id)) ^ group)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator `CpRuntime::thread_rng` hands out: seeded inside `with_seed`, else the OS one.
pub enum CpRng {
    /// Drawn from the task's seeded generator (repeatable).
    Seeded(Box<StdRng>),
    /// The thread's OS-seeded generator.
    Os(ThreadRng),
}

impl RngCore for CpRng {
    fn next_u32(&mut self) -> u32 {
        match self {
            CpRng::Seeded(r) => r.next_u32(),
            CpRng::Os(r) => r.next_u32(),
        }
    }
    fn next_u64(&mut self) -> u64 {
        match self {
            CpRng::Seeded(r) => r.next_u64(),
            CpRng::Os(r) => r.next_u64(),
        }
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        match self {
            CpRng::Seeded(r) => r.fill_bytes(dest),
            CpRng::Os(r) => r.fill_bytes(dest),
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        match self {
            CpRng::Seeded(r) => r.try_fill_bytes(dest),
            CpRng::Os(r) => r.try_fill_bytes(dest),
        }
    }
}

/// tokio, with a seedable random number generator (see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CpRuntime;

impl AsyncRuntime for CpRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = CpRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SEEDED_RNG
            .try_with(|r| CpRng::Seeded(Box::new(StdRng::seed_from_u64(r.borrow_mut().next_u64()))))
            .unwrap_or_else(|_| CpRng::Os(rand::thread_rng()))
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    async fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| CpRuntime::thread_rng().gen_range(500..1000))
            .collect()
    }

    #[tokio::test]
    async fn a_seed_repeats_its_draws_and_another_seed_differs() {
        let a = with_seed(derive_seed(7, 1, 3), draws()).await;
        let b = with_seed(derive_seed(7, 1, 3), draws()).await;
        assert_eq!(a, b);
        assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
        let other_node = with_seed(derive_seed(7, 2, 3), draws()).await;
        assert_ne!(a, other_node);
        // Outside `with_seed` the OS generator answers (and does not panic).
        assert!((500..1000).contains(&CpRuntime::thread_rng().gen_range(500..1000)));
    }

    #[test]
    fn derived_seeds_differ_per_node_and_group() {
        let seeds: std::collections::BTreeSet<u64> = (1..=5)
            .flat_map(|n| (0..8).map(move |g| derive_seed(42, n, g)))
            .collect();
        assert_eq!(seeds.len(), 40);
    }
}
