//! What `kv demo`'s clients do on the cluster: each operation timed and recorded as an
//! [`Op`], the paced write-then-read rounds of the partition, the wait for the majority side's
//! new Raft leaders, and the wait until every node answers every key alike after the heal.

use super::report::{Kind, Mode, Op, Side};
use kv_client::{Client, ClientConfig, Consistency, Options};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of each demo request: the minority side's CP requests take about this long to be
/// refused, so it sets the partition phase's length.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Time between two rounds of one client during the partition.
pub const ROUND_TICK: Duration = Duration::from_millis(800);
/// How often the nodes are asked again while waiting for leaders or convergence.
const POLL: Duration = Duration::from_millis(100);

/// A client that talks to `addr` only: "a client next to that node".
pub async fn pinned_client(addr: &str) -> Result<Client, kv_client::Error> {
    let mut cfg = ClientConfig::new([addr.to_string()]);
    cfg.seeds_only = true;
    cfg.timeout = REQUEST_TIMEOUT;
    Client::connect(cfg).await
}

/// Request options of `mode`: CP reads are linearizable; AP requests wait for one replica,
/// the only one a lone node has.
fn options(mode: Mode) -> Options {
    Options {
        consistency: match mode {
            Mode::Cp => Consistency::Default,
            Mode::Ap => Consistency::One,
        },
        timeout: Some(REQUEST_TIMEOUT),
        ..Options::default()
    }
}

/// The name of an error's kind, as the table shows it.
fn error_kind(e: &kv_client::Error) -> String {
    use kv_client::Error as E;
    match e {
        E::InvalidArgument(_) => "InvalidArgument",
        E::KeyspaceNotFound(_) => "KeyspaceNotFound",
        E::FailedPrecondition(_) => "FailedPrecondition",
        E::AlreadyExists(_) => "AlreadyExists",
        E::Unavailable(_) | E::NotApplied(_) => "Unavailable",
        E::DeadlineExceeded { .. } => "DeadlineExceeded",
        E::NotLeader { .. } => "NotLeader",
        E::DataLoss(_) => "DataLoss",
        E::Connect { .. } => "Connect",
        E::Transport { .. } => "Transport",
        E::Config(_) => "Config",
        E::Other { .. } => "Other",
    }
    .to_string()
}

/// Runs operations and keeps them, timed from one origin.
#[derive(Clone)]
pub struct Recorder {
    origin: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    /// A recorder whose times count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Recorder {
            origin,
            ops: Arc::default(),
        }
    }

    /// Every operation recorded so far, in the order they ended.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("ops lock").clone()
    }

    /// Puts `value` under `key` through `client` and records it.
    pub async fn write(
        &self,
        client: &Client,
        (mode, side, during_partition): (Mode, Side, bool),
        key: &str,
        value: &str,
    ) -> Op {
        let start = self.origin.elapsed();
        let result = client
            .put(
                mode.keyspace(),
                key.as_bytes(),
                value.as_bytes(),
                options(mode),
            )
            .await;
        self.keep(Op {
            mode,
            side,
            kind: Kind::Write,
            during_partition,
            key: key.into(),
            value: Some(value.into()),
            error: result.err().map(|e| error_kind(&e)),
            start,
            end: self.origin.elapsed(),
        })
    }

    /// Gets `key` through `client` and records it.
    pub async fn read(
        &self,
        client: &Client,
        (mode, side, during_partition): (Mode, Side, bool),
        key: &str,
    ) -> Op {
        let start = self.origin.elapsed();
        let result = client
            .get(mode.keyspace(), key.as_bytes(), options(mode))
            .await;
        let (value, error) = match result {
            Ok(r) => (
                r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                None,
            ),
            Err(e) => (None, Some(error_kind(&e))),
        };
        self.keep(Op {
            mode,
            side,
            kind: Kind::Read,
            during_partition,
            key: key.into(),
            value,
            error,
            start,
            end: self.origin.elapsed(),
        })
    }

    fn keep(&self, op: Op) -> Op {
        self.ops.lock().expect("ops lock").push(op.clone());
        op
    }
}

/// The value a side writes in a round: unique per keyspace, and saying who wrote it.
pub fn value_of(side: Side, round: u32) -> String {
    format!("{}-{round}", side.name())
}

/// The partition phase: for each mode, a client on each side runs `rounds` rounds (write a key
/// of `keys`, then read it back half a tick later), paced by `ROUND_TICK`. The minority side
/// starts each round a quarter tick after the majority, so its AP writes land between the
/// majority's write and read of the same key. All four clients run at once.
pub async fn partition_rounds(
    rec: &Recorder,
    majority: &Client,
    minority: &Client,
    keys: &[String],
    rounds: u32,
) {
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for mode in [Mode::Cp, Mode::Ap] {
        for (side, client) in [(Side::Majority, majority), (Side::Minority, minority)] {
            let (rec, client, keys) = (rec.clone(), client.clone(), keys.to_vec());
            let offset = match side {
                Side::Majority => Duration::ZERO,
                Side::Minority => ROUND_TICK / 4,
            };
            tasks.push(tokio::spawn(async move {
                for round in 0..rounds {
                    let at = t0 + ROUND_TICK * round + offset;
                    let key = &keys[round as usize % keys.len()];
                    tokio::time::sleep_until(at).await;
                    rec.write(&client, (mode, side, true), key, &value_of(side, round))
                        .await;
                    tokio::time::sleep_until(at + ROUND_TICK / 2).await;
                    rec.read(&client, (mode, side, true), key).await;
                }
            }));
        }
    }
    for t in tasks {
        // A client task only records: it cannot fail, and a panic in it is a bug to surface.
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Waits until the nodes of `clients` (one client pinned to each), between them, lead every
/// CP partition. Returns how long it took, or `None` after `limit`.
pub async fn wait_leaders(
    clients: &[Client],
    partitions: u32,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let mut led = vec![false; partitions as usize];
        for c in clients {
            if let Ok(status) = c.status(None).await {
                for p in status.leader_of {
                    if let Some(slot) = led.get_mut(p as usize) {
                        *slot = true;
                    }
                }
            }
        }
        if led.iter().all(|l| *l) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What each node answered for each key: `Err` for a failed read.
pub type Views = BTreeMap<String, Vec<Result<Option<String>, String>>>;

/// Waits until every node answers every key of `mode` with the same value (CP: linearizable
/// reads; AP: each node's own replica, consistency one). Returns the time it took and the
/// values, or `Err` with the last answers after `limit`.
pub async fn wait_converged(
    nodes: &[Client],
    mode: Mode,
    keys: &[String],
    limit: Duration,
) -> Result<(Duration, BTreeMap<String, Option<String>>), Views> {
    let start = Instant::now();
    loop {
        // Every (key, node) read at once: a node that cannot serve yet takes a whole request
        // deadline to say so, and asking one after the other would blur the time measured.
        let mut reads = tokio::task::JoinSet::new();
        for (k, key) in keys.iter().enumerate() {
            for (n, c) in nodes.iter().enumerate() {
                let (c, key) = (c.clone(), key.clone());
                reads.spawn(async move {
                    let answer = c
                        .get(mode.keyspace(), key.as_bytes(), options(mode))
                        .await
                        .map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
                        .map_err(|e| error_kind(&e));
                    (k, n, answer)
                });
            }
        }
        let mut answers = vec![vec![Err("no answer".to_string()); nodes.len()]; keys.len()];
        while let Some(done) = reads.join_next().await {
            match done {
                Ok((k, n, answer)) => answers[k][n] = answer,
                // A read task only reads: a panic in it is a bug to surface.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        let views: Views = keys.iter().cloned().zip(answers).collect();
        let agreed: Option<BTreeMap<String, Option<String>>> = views
            .iter()
            .map(|(k, answers)| {
                let first = answers.first()?.as_ref().ok()?;
                answers
                    .iter()
                    .all(|a| a.as_ref() == Ok(first))
                    .then(|| (k.clone(), first.clone()))
            })
            .collect();
        if let Some(finals) = agreed {
            return Ok((start.elapsed(), finals));
        }
        if start.elapsed() > limit {
            return Err(views);
        }
        tokio::time::sleep(POLL).await;
    }
}
