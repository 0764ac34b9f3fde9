//! Workloads that drive a cluster through the generic [`KvClient`] trait and record every
//! operation into a [`Recorder`]: a register workload (get/put/cas/delete on a few hot keys)
//! for the linearizability checker, and an append-set workload (each element written once,
//! all read at the end) that exposes lost writes.
//!
//! Invariants: every written value is unique in the run (the checker's reductions rely on it);
//! a process that sees an unknown outcome is retired and continues under a fresh process id,
//! as in Jepsen, because its request may still be in flight; all randomness comes from the seed.

use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Hlc, Op, Recorder};

/// Why a request did not return ok.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request definitely did not take effect (rejected, unavailable before sending).
    #[error("failed: {0}")]
    Fail(String),
    /// The outcome is unknown (timeout, connection lost after sending).
    #[error("unknown outcome: {0}")]
    Info(String),
}

/// A successful read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// The value; None = absent.
    pub value: Option<String>,
    /// CP version, if the server returned one.
    pub version: Option<u64>,
    /// AP timestamp, if the server returned one.
    pub timestamp: Option<Hlc>,
}

/// A successful write, delete or applied cas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteResult {
    /// CP version, if the server returned one.
    pub version: Option<u64>,
    /// AP timestamp, if the server returned one.
    pub timestamp: Option<Hlc>,
}

/// What a cas did when the request itself succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasResult {
    /// The expected value matched and the new value was written.
    Applied(WriteResult),
    /// The current value differed; nothing was written.
    Mismatch,
}

/// The client the harness implements (over turmoil or real processes). One per process.
pub trait KvClient {
    /// Reads `key`.
    fn get(&self, key: &str) -> impl Future<Output = Result<ReadResult, ClientError>>;
    /// Writes `value` to `key`.
    fn put(&self, key: &str, value: &str)
        -> impl Future<Output = Result<WriteResult, ClientError>>;
    /// Deletes `key`.
    fn delete(&self, key: &str) -> impl Future<Output = Result<WriteResult, ClientError>>;
    /// Replaces `expected` (None = absent) by `new`.
    fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> impl Future<Output = Result<CasResult, ClientError>>;
}

/// Most processes a workload runs (bounds memory and process-id arithmetic).
pub const MAX_PROCESSES: usize = 1_024;

/// When a workload's processes stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this many operations per process.
    Ops(usize),
    /// After this much time (tokio time, so simulated under turmoil).
    Duration(Duration),
}

/// Settings shared by the workloads.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// RNG seed; the same seed gives the same operation sequence per process.
    pub seed: u64,
    /// Concurrent client processes (at most [`MAX_PROCESSES`]).
    pub processes: usize,
    /// When to stop.
    pub stop: Stop,
    /// Target operations per second per process; None = as fast as possible.
    pub rate_per_process: Option<f64>,
    /// Number of hot keys (register workload).
    pub keys: usize,
    /// Key prefix, e.g. the keyspace or test name.
    pub key_prefix: String,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 0,
            processes: 5,
            stop: Stop::Ops(100),
            rate_per_process: None,
            keys: 3,
            key_prefix: "jepsen".into(),
        }
    }
}

/// Share of reads, writes, cas and deletes in the register workload, in percent.
const REGISTER_MIX_PCT: [u32; 4] = [50, 25, 15, 10];

struct Pacer {
    started: tokio::time::Instant,
    stop: Stop,
    interval: Option<Duration>,
    done: usize,
}

impl Pacer {
    fn new(config: &WorkloadConfig) -> Pacer {
        let interval = config
            .rate_per_process
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        Pacer {
            started: tokio::time::Instant::now(),
            stop: config.stop,
            interval,
            done: 0,
        }
    }

    /// Waits for the next slot; false when the process should stop.
    async fn next(&mut self) -> bool {
        if let Some(interval) = self.interval {
            if self.done > 0 {
                tokio::time::sleep(interval).await;
            }
        }
        self.done += 1;
        match self.stop {
            Stop::Ops(n) => self.done <= n,
            Stop::Duration(d) => self.started.elapsed() < d,
        }
    }
}

/// Jepsen-style process identity: retired after an unknown outcome.
struct Process {
    index: usize,
    count: usize,
    id: u64,
}

impl Process {
    fn retire(&mut self) {
        self.id += self.count as u64;
    }
}

fn record_write(
    recorder: &Recorder,
    op_id: u64,
    p: &mut Process,
    r: Result<WriteResult, ClientError>,
) {
    match r {
        Ok(w) => recorder.ok(op_id, None, w.version, w.timestamp),
        Err(ClientError::Fail(_)) => recorder.fail(op_id),
        Err(ClientError::Info(_)) => {
            recorder.info(op_id);
            p.retire();
        }
    }
}

/// Runs the register workload: each process picks a hot key and a read (50%), write (25%),
/// cas from the last value it read (15%; a mismatch is recorded as such) or delete (10%),
/// writing unique values.
pub async fn run_register<C: KvClient>(
    clients: &[C],
    config: &WorkloadConfig,
    recorder: &Recorder,
) {
    let n = clients.len().min(config.processes).min(MAX_PROCESSES);
    let keys: Vec<String> = (0..config.keys.max(1))
        .map(|k| format!("{}/k{k}", config.key_prefix))
        .collect();
    let runs = clients.iter().take(n).enumerate().map(|(index, client)| {
        let keys = &keys;
        async move {
            let mut rng = StdRng::seed_from_u64(
                config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let mut p = Process {
                index,
                count: n,
                id: index as u64,
            };
            let mut pacer = Pacer::new(config);
            let mut last_read: Vec<Option<String>> = vec![None; keys.len()];
            let mut seq = 0u64;
            while pacer.next().await {
                let k = rng.gen_range(0..keys.len());
                let key = keys[k].as_str();
                let roll = rng.gen_range(0..100);
                seq += 1;
                let value = format!("p{}-{seq}", p.index);
                if roll < REGISTER_MIX_PCT[0] {
                    let id = recorder.invoke(p.id, key, Op::Read);
                    match client.get(key).await {
                        Ok(r) => {
                            last_read[k] = r.value.clone();
                            recorder.ok(id, r.value, r.version, r.timestamp);
                        }
                        Err(ClientError::Fail(_)) => recorder.fail(id),
                        Err(ClientError::Info(_)) => {
                            recorder.info(id);
                            p.retire();
                        }
                    }
                } else if roll < REGISTER_MIX_PCT[0] + REGISTER_MIX_PCT[1] {
                    let id = recorder.invoke(p.id, key, Op::Write(value.clone()));
                    let r = client.put(key, &value).await;
                    record_write(recorder, id, &mut p, r);
                } else if roll < REGISTER_MIX_PCT[0] + REGISTER_MIX_PCT[1] + REGISTER_MIX_PCT[2] {
                    let expected = last_read[k].clone();
                    let op = Op::Cas {
                        expected: expected.clone(),
                        new: Some(value.clone()),
                    };
                    let id = recorder.invoke(p.id, key, op);
                    match client.cas(key, expected.as_deref(), &value).await {
                        Ok(CasResult::Applied(w)) => {
                            last_read[k] = Some(value);
                            record_write(recorder, id, &mut p, Ok(w));
                        }
                        // Kept as an observation: the key did not hold `expected`.
                        Ok(CasResult::Mismatch) => recorder.mismatch(id),
                        Err(e) => record_write(recorder, id, &mut p, Err(e)),
                    }
                } else {
                    let id = recorder.invoke(p.id, key, Op::Delete);
                    let r = client.delete(key).await;
                    record_write(recorder, id, &mut p, r);
                }
            }
        }
    });
    futures::future::join_all(runs).await;
}

/// Runs the append-set workload: each process writes fresh keys `<prefix>/set/p<i>-<n>`, each
/// once, then the first client reads every attempted key once. Returns the attempted keys.
/// The final reads are the only reads, so `ap::check_set(&history, 0)` checks the run.
pub async fn run_append_set<C: KvClient>(
    clients: &[C],
    config: &WorkloadConfig,
    recorder: &Recorder,
) -> Vec<String> {
    let n = clients.len().min(config.processes).min(MAX_PROCESSES);
    let runs = clients
        .iter()
        .take(n)
        .enumerate()
        .map(|(index, client)| async move {
            let mut p = Process {
                index,
                count: n,
                id: index as u64,
            };
            let mut pacer = Pacer::new(config);
            let mut written = Vec::new();
            let mut seq = 0u64;
            while pacer.next().await {
                seq += 1;
                let key = format!("{}/set/p{}-{seq}", config.key_prefix, p.index);
                let value = format!("e{}-{seq}", p.index);
                let id = recorder.invoke(p.id, &key, Op::Write(value.clone()));
                let r = client.put(&key, &value).await;
                record_write(recorder, id, &mut p, r);
                written.push(key);
            }
            written
        });
    let keys: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    if let Some(client) = clients.first() {
        // Final reads use a process id no writer used.
        let reader = MAX_PROCESSES as u64 * 1_000_000;
        for key in &keys {
            let id = recorder.invoke(reader, key, Op::Read);
            match client.get(key).await {
                Ok(r) => recorder.ok(id, r.value, r.version, r.timestamp),
                Err(ClientError::Fail(_)) => recorder.fail(id),
                Err(ClientError::Info(_)) => recorder.info(id),
            }
        }
    }
    keys
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
