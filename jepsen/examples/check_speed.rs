//! Measures the linearizability checker on simulated register histories:
//! `cargo run --release -p jepsen --example check_speed`.

use std::time::Instant;

use jepsen::linearizability;
use jepsen::simulate::{inject_stale_read, register_history, SimConfig};

fn main() {
    let cases = [
        (10_000, 8, 16, 0, false),
        (10_000, 8, 16, 10, false),
        (10_000, 8, 16, 10, true),
        (10_000, 1, 16, 0, true),
        (10_000, 1, 16, 10, true),
        (10_000, 1, 4, 10, true),
        (100_000, 100, 32, 0, false),
        (100_000, 100, 32, 10, false),
        (100_000, 100, 32, 10, true),
    ];
    println!("ops      keys  procs  info%  bug    verdict           states     info drop/res/search  time");
    for (ops, keys, processes, info_pct, bug) in cases {
        let mut h = register_history(&SimConfig {
            seed: 42,
            processes,
            keys,
            ops,
            info_pct,
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
            "{ops:<8} {keys:<5} {processes:<6} {info_pct:<6} {bug:<6} {:<17} {:<10} {:>5}/{:>4}/{:<8}      {:.3} s",
            format!("{:?}", report.verdict()),
            report.states,
            report.info_dropped,
            report.info_resolved,
            report.info_searched,
            elapsed.as_secs_f64()
        );
        if let Some(v) = report
            .violations
            .first()
            .filter(|_| ops == 10_000 && keys == 1)
        {
            print!("{v}");
        }
    }
}
