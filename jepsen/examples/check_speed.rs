//! Measures the linearizability checker on simulated register histories:
//! `cargo run --release -p jepsen --example check_speed` runs every case;
//! `... -- 4` runs case 4 alone, so the peak memory printed is that case's.

use std::time::Instant;

use jepsen::linearizability;
use jepsen::simulate::{inject_stale_read, register_history, SimConfig};

/// Peak resident memory of this process so far, from /proc (Linux), in MB.
fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn main() {
    // (ops, keys, clients, info %, injected stale read, revisions)
    let cases = [
        (10_000, 8, 16, 0, false, false),
        (10_000, 8, 16, 10, false, false),
        (10_000, 8, 16, 10, true, false),
        (10_000, 1, 16, 0, true, false),
        (10_000, 1, 16, 10, true, false),
        (10_000, 1, 4, 10, true, false),
        (2_000, 1, 32, 0, false, false),
        (2_000, 1, 32, 0, false, true),
        (10_000, 1, 32, 10, false, false),
        (10_000, 1, 64, 0, false, false),
        (100_000, 1, 32, 10, false, true),
        (100_000, 1, 64, 10, false, true),
        (100_000, 1, 64, 10, true, true),
        (100_000, 100, 32, 0, false, false),
        (100_000, 100, 32, 10, false, false),
        (100_000, 100, 32, 10, true, false),
    ];
    let only: Option<usize> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    println!("case  ops      keys  procs  info%  bug    revs   verdict           states     info drop/res/search  time      peak MB");
    for (index, &(ops, keys, processes, info_pct, bug, revisions)) in cases.iter().enumerate() {
        if only.is_some_and(|o| o != index) {
            continue;
        }
        let mut h = register_history(&SimConfig {
            seed: 42,
            processes,
            keys,
            ops,
            info_pct,
            revisions,
            mismatches: revisions,
            cas_deletes: false,
        });
        if bug {
            inject_stale_read(&mut h);
        }
        let started = Instant::now();
        let report = match linearizability::check(&h) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("malformed history: {e}");
                return;
            }
        };
        let elapsed = started.elapsed();
        println!(
            "{index:<5} {ops:<8} {keys:<5} {processes:<6} {info_pct:<6} {bug:<6} {revisions:<6} {:<17} {:<10} {:>5}/{:>4}/{:<8}      {:<9.3} {}",
            format!("{:?}", report.verdict()),
            report.states,
            report.info_dropped,
            report.info_resolved,
            report.info_searched,
            elapsed.as_secs_f64(),
            peak_rss_mb().map_or_else(|| "?".to_string(), |mb| mb.to_string()),
        );
        if let Some(v) = report.violations.first().filter(|_| only.is_some()) {
            print!("{v}");
        }
    }
}
