//! The flags of `kv bench` and the small parsers behind them (operation mix, durations). Kept
//! beside the command rather than in `cli.rs` so that the benchmark is one folder.

use crate::arg_enums::ConsistencyArg;
use clap::{Args, ValueEnum};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Most keys a run may address: key names have ten digits (16-byte keys, as in issue 10).
pub const MAX_KEYS: u64 = 10_000_000_000;
/// Most requests in flight (closed-loop clients or open-loop workers).
pub const MAX_CONCURRENCY: usize = 100_000;
/// Most client connection sets.
pub const MAX_CONNECTIONS: usize = 1_024;
/// Largest value a run writes (the server's default limit is 1 MiB).
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;
/// Run length when neither --duration nor --count is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// `kv bench` flags (the keyspace, endpoints, request deadline and output format are global).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Requests in flight. Closed loop: this many clients, each sending its next request when
    /// the previous one is answered. With --rate: the most requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop: start this many requests per second on a fixed schedule, however slow the
    /// answers; latency counts from each request's scheduled start (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Operation mix as weights: get, put, cas (compare-and-swap, CP only), delete.
    #[arg(long, default_value = "get=50,put=50")]
    pub mix: Mix,
    /// Number of distinct keys (named bench-0000000000, bench-0000000001, ...: 16 bytes).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Skew of the zipfian distribution (0 < theta < 1; YCSB uses 0.99).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// AP: replicas to wait for (default: the keyspace's own R and W).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// CP: reads from any replica, maybe stale (etcd: serializable reads).
    #[arg(long)]
    pub stale: bool,
    /// Measured run length, e.g. 30s, 500ms, 2m (default 10s unless --count is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Measured requests, instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Load run before measuring, not counted (same workload), e.g. 2s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Writes every key once before the warm-up, so reads find values.
    #[arg(long)]
    pub preload: bool,
    /// Independent client connection sets the requests are spread over (each: one
    /// connection per node).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seed of the key and operation choices (default: random, printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The store to load: kv, or etcd's KV API at --endpoints (needs a kv built with
    /// `--features etcd`).
    #[arg(long, value_enum, default_value_t = TargetArg::Kv)]
    pub target: TargetArg,
}

/// What `kv bench` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// This cluster, through kv-client.
    Kv,
    /// etcd v3 (gRPC KV API), for side-by-side comparisons.
    Etcd,
}

/// Key choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys (rank r chosen with probability ~ 1/r^theta).
    Zipfian,
}

impl Distribution {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Read a key.
    Get,
    /// Write a key.
    Put,
    /// Compare-and-swap a key: expects the value the benchmark writes, writes it again.
    Cas,
    /// Delete a key.
    Delete,
}

impl Op {
    /// Every kind, in report order.
    pub const ALL: [Op; 4] = [Op::Get, Op::Put, Op::Cas, Op::Delete];

    /// The name used in --mix and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Cas => "cas",
            Op::Delete => "delete",
        }
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Weights of each kind of request (`get=80,put=20`); at least one is positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// The weight of `op`.
    pub fn weight(&self, op: Op) -> u32 {
        self.weights[op.index()]
    }

    /// True when some request of kind `op` will be sent.
    pub fn has(&self, op: Op) -> bool {
        self.weight(op) > 0
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The kind for a number drawn uniformly from `0..total()`.
    pub fn pick(&self, mut draw: u32) -> Op {
        for op in Op::ALL {
            let w = self.weight(op);
            if draw < w {
                return op;
            }
            draw -= w;
        }
        // Unreachable for draws below total(); the last kind with weight is the safe answer.
        Op::ALL
            .into_iter()
            .rev()
            .find(|op| self.has(*op))
            .unwrap_or(Op::Get)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected OP=WEIGHT, e.g. get=80,put=20"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    format!("unknown operation {name:?}: use get, put, cas or delete")
                })?;
            // Bounded so that the sum of four weights fits a u32.
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| {
                    format!("{part:?}: the weight must be a whole number 0..=1000000")
                })?;
            weights[op.index()] = weight;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err("the mix has no operation with a positive weight".into());
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .into_iter()
            .filter(|op| self.has(*op))
            .map(|op| format!("{}={}", op.name(), self.weight(op)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `500ms`, `10s`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1_000.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 10s or 2m"))?;
    // Bounded at a day: a longer benchmark is a typo, and the bound keeps the cast exact.
    if !(0.0..=86_400_000.0).contains(&(n * unit_ms)) {
        return Err(format!("{s:?}: a duration from 0 to 24 hours"));
    }
    Ok(Duration::from_micros((n * unit_ms * 1_000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_its_weights_and_picks_in_proportion() {
        let mix: Mix = "get=80, put=20".parse().unwrap();
        assert_eq!(mix.weight(Op::Get), 80);
        assert_eq!(mix.weight(Op::Put), 20);
        assert!(!mix.has(Op::Cas));
        assert_eq!(mix.total(), 100);
        let picks: Vec<Op> = (0..100).map(|d| mix.pick(d)).collect();
        assert_eq!(picks.iter().filter(|o| **o == Op::Get).count(), 80);
        assert_eq!(picks.iter().filter(|o| **o == Op::Put).count(), 20);
        assert_eq!(mix.to_string(), "get=80,put=20");
        let mix: Mix = "delete=1,cas=3".parse().unwrap();
        assert_eq!(mix.pick(0), Op::Cas);
        assert_eq!(mix.pick(3), Op::Delete);
    }

    #[test]
    fn a_bad_mix_is_refused_with_the_reason() {
        for (input, reason) in [
            ("get", "OP=WEIGHT"),
            ("scan=1", "unknown operation"),
            ("get=-1", "whole number"),
            ("get=0,put=0", "positive weight"),
            ("", "positive weight"),
        ] {
            let err = input.parse::<Mix>().unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("2d").is_err());
    }
}
