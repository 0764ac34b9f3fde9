//! The load loops of `kv bench`: closed loop (each worker sends its next request when the last
//! one is answered), open loop (requests start on a fixed schedule and their latency counts
//! from the scheduled start, so a slow answer cannot hide the queue behind it), the preload,
//! and the progress bar that watches them.

use super::args::{Mix, Op};
use super::keys::{key_name, KeyChooser};
use super::stats::Recorder;
use super::target::Target;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// When a run stops measuring.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this long (requests started before the end still finish and count).
    After(Duration),
    /// After this many measured requests.
    Count(u64),
}

/// How requests are started.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// `concurrency` clients, each with one request in flight.
    Closed,
    /// This many requests per second, on schedule.
    Rate(f64),
}

/// What every worker shares.
pub struct Load {
    /// The store.
    pub target: Target,
    /// Kinds of request.
    pub mix: Mix,
    /// Key choice.
    pub keys: KeyChooser,
    /// The value every write writes (and a compare-and-swap expects).
    pub value: Vec<u8>,
    /// Workers.
    pub concurrency: usize,
    /// Seed of each worker's choices.
    pub seed: u64,
}

/// What a measured run produced.
pub struct Measured {
    /// Every worker's measurements, merged.
    pub recorder: Recorder,
    /// From the end of the warm-up to the last measured answer.
    pub elapsed: Duration,
}

/// Counters the progress bar reads.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
}

/// The seed of worker `w`: distinct streams from one run seed (splitmix64's finaliser).
fn worker_seed(seed: u64, w: usize) -> u64 {
    let mut z = seed
        ^ (w as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes every key once with `load.concurrency` workers; returns their measurements.
pub async fn preload(load: Arc<Load>, keys: u64) -> Measured {
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let bar = Bar::start("preload", Some(keys), progress.clone(), None);
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..load.concurrency {
        let (load, next, progress) = (load.clone(), next.clone(), progress.clone());
        workers.spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return rec;
                }
                let t = Instant::now();
                let r = load
                    .target
                    .send(w, Op::Put, &key_name(k), &load.value)
                    .await;
                progress.note(r.is_err());
                rec.record(Op::Put, t.elapsed(), r);
            }
        });
    }
    let recorder = merge(workers).await;
    bar.finish();
    Measured {
        recorder,
        elapsed: start.elapsed(),
    }
}

/// Runs the load: a warm-up (not recorded), then the measured part.
pub async fn run(load: Arc<Load>, pace: Pace, warmup: Duration, stop: Stop) -> Measured {
    let progress = Arc::new(Progress::default());
    let t0 = Instant::now();
    let measure_start = t0 + warmup;
    let (len, len_is_ms) = match stop {
        Stop::After(d) => (d.as_millis() as u64, true),
        Stop::Count(n) => (n, false),
    };
    let bar = Bar::start(
        "measure",
        Some(len),
        progress.clone(),
        len_is_ms.then_some(measure_start),
    );
    bar.warming_up(warmup);
    let claimed = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for w in 0..load.concurrency {
        let (load, progress, claimed) = (load.clone(), progress.clone(), claimed.clone());
        workers.spawn(async move {
            match pace {
                Pace::Closed => closed(&load, w, measure_start, stop, &claimed, &progress).await,
                Pace::Rate(rate) => open(&load, w, rate, t0, warmup, stop, &progress).await,
            }
        });
    }
    let recorder = merge(workers).await;
    bar.finish();
    Measured {
        recorder,
        elapsed: Instant::now().saturating_duration_since(measure_start),
    }
}

/// One closed-loop client.
async fn closed(
    load: &Load,
    w: usize,
    measure_start: Instant,
    stop: Stop,
    claimed: &AtomicU64,
    progress: &Progress,
) -> Recorder {
    let mut rng = StdRng::seed_from_u64(worker_seed(load.seed, w));
    let mut rec = Recorder::default();
    let total = load.mix.total();
    loop {
        let now = Instant::now();
        let measured = now >= measure_start;
        if measured {
            let over = match stop {
                Stop::After(d) => now >= measure_start + d,
                Stop::Count(n) => claimed.fetch_add(1, Ordering::Relaxed) >= n,
            };
            if over {
                return rec;
            }
        }
        let op = load.mix.pick(rng.gen_range(0..total));
        let key = key_name(load.keys.next(&mut rng));
        let t = Instant::now();
        let r = load.target.send(w, op, &key, &load.value).await;
        if measured {
            progress.note(r.is_err());
            rec.record(op, t.elapsed(), r);
        }
    }
}

/// Tickets (request numbers from the start of the warm-up) of an open-loop run: those before
/// `warmup` are not measured; the run ends at `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// First measured ticket.
    pub warmup: u64,
    /// Tickets in all.
    pub total: u64,
}

impl Schedule {
    /// The schedule of `rate` requests per second.
    pub fn new(rate: f64, warmup: Duration, stop: Stop) -> Schedule {
        let tickets = |d: Duration| (d.as_secs_f64() * rate).ceil() as u64;
        let warmup = tickets(warmup);
        let measured = match stop {
            Stop::After(d) => tickets(d),
            Stop::Count(n) => n,
        };
        Schedule {
            warmup,
            total: warmup.saturating_add(measured),
        }
    }
}

/// One open-loop worker: tickets w, w + C, w + 2C, ... each start at `t0 + ticket / rate`.
async fn open(
    load: &Load,
    w: usize,
    rate: f64,
    t0: Instant,
    warmup: Duration,
    stop: Stop,
    progress: &Progress,
) -> Recorder {
    let schedule = Schedule::new(rate, warmup, stop);
    let mut rng = StdRng::seed_from_u64(worker_seed(load.seed, w));
    let mut rec = Recorder::default();
    let total = load.mix.total();
    let mut ticket = w as u64;
    while ticket < schedule.total {
        let due = t0 + Duration::from_secs_f64(ticket as f64 / rate);
        tokio::time::sleep_until(due).await;
        let op = load.mix.pick(rng.gen_range(0..total));
        let key = key_name(load.keys.next(&mut rng));
        let r = load.target.send(w, op, &key, &load.value).await;
        if ticket >= schedule.warmup {
            progress.note(r.is_err());
            // From the scheduled start: a request held up behind a slow one waited too.
            rec.record(op, Instant::now().saturating_duration_since(due), r);
        }
        ticket += load.concurrency as u64;
    }
    rec
}

impl Progress {
    fn note(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn merge(mut workers: JoinSet<Recorder>) -> Recorder {
    let mut all = Recorder::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(rec) => all.merge(&rec),
            // A worker cannot panic short of a bug; its share is lost, the rest still counts.
            Err(e) => tracing::error!(error = %e, "a benchmark worker failed"),
        }
    }
    all
}

/// The progress bar on stderr, drawn only when stderr is a terminal.
struct Bar {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// A bar of `len` requests, or of `len` milliseconds from `clock_from` when given.
    fn start(
        phase: &'static str,
        len: Option<u64>,
        progress: Arc<Progress>,
        clock_from: Option<Instant>,
    ) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(phase);
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(PROGRESS_INTERVAL).await;
                let done = progress.done.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let position = match clock_from {
                    Some(from) => Instant::now().saturating_duration_since(from).as_millis() as u64,
                    None => done,
                };
                shown.set_position(position);
                let secs = match clock_from {
                    Some(from) => Instant::now().saturating_duration_since(from),
                    None => started.elapsed(),
                }
                .as_secs_f64();
                if clock_from.is_none_or(|from| Instant::now() >= from) {
                    shown.set_message(format!(
                        "{done} requests, {:.0}/s, {failed} errors",
                        done as f64 / secs.max(1e-3)
                    ));
                }
            }
        });
        Bar {
            bar,
            ticker: Some(ticker),
        }
    }

    fn warming_up(&self, warmup: Duration) {
        if !warmup.is_zero() {
            self.bar
                .set_message(format!("warming up for {:.1} s", warmup.as_secs_f64()));
        }
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_schedule_counts_warmup_and_measured_tickets() {
        let s = Schedule::new(
            100.0,
            Duration::from_secs(2),
            Stop::After(Duration::from_secs(10)),
        );
        assert_eq!(
            s,
            Schedule {
                warmup: 200,
                total: 1200
            }
        );
        let s = Schedule::new(3.0, Duration::from_millis(500), Stop::Count(7));
        assert_eq!(
            s,
            Schedule {
                warmup: 2,
                total: 9
            }
        );
        let s = Schedule::new(1000.0, Duration::ZERO, Stop::Count(5));
        assert_eq!(
            s,
            Schedule {
                warmup: 0,
                total: 5
            }
        );
    }

    #[test]
    fn workers_draw_different_streams_from_one_seed() {
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|w| worker_seed(7, w)).collect();
        assert_eq!(seeds.len(), 64);
        assert_eq!(worker_seed(7, 3), worker_seed(7, 3));
        assert_ne!(worker_seed(7, 3), worker_seed(8, 3));
    }
}
