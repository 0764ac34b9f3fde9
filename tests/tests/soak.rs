//! The soak: the partition-matrix cases over many seeds, spread over threads, with progress.
//!
//! Without settings it is a smoke run of one seed of `cp/isolate-leader` and
//! `ap/isolate-leader`, so the normal test run stays short. The long run:
//!
//! ```text
//! KV_SOAK_SEEDS=200 cargo test --release -p tests --test soak -- --nocapture
//! ```
//!
//! - `KV_SOAK_SEEDS`: seeds per case (then every catalogue case runs, unless filtered);
//! - `KV_SOAK_FIRST_SEED`: first seed (default 1000, away from the quick matrix's seeds);
//! - `KV_SOAK_CASES`: comma-separated case names (`cp/bridge,ap/flapping,...`) or `all`;
//! - `KV_SOAK_THREADS`: parallel simulations (default: the machine's cores).
//!
//! A failing case prints its rerun command and history path as the matrix does. The
//! deliberate-bug case passes when some check catches the bug (how often the linearizability
//! checker itself did is printed at the end).

use chaos::scenario::{self, Case, Outcome};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Cases of the smoke run.
const SMOKE_CASES: [&str; 2] = ["cp/isolate-leader", "ap/isolate-leader"];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn soak() {
    let seeds = env_u64("KV_SOAK_SEEDS");
    let first = env_u64("KV_SOAK_FIRST_SEED").unwrap_or(1_000);
    let filter: Option<Vec<String>> = match (std::env::var("KV_SOAK_CASES").ok(), seeds) {
        (Some(list), _) if list == "all" => None,
        (Some(list), _) => Some(list.split(',').map(|s| s.trim().to_string()).collect()),
        (None, Some(_)) => None,
        (None, None) => Some(SMOKE_CASES.iter().map(|s| s.to_string()).collect()),
    };
    let seeds = seeds.unwrap_or(1);
    let threads = env_u64("KV_SOAK_THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n.max(1) as usize,
    );
    let mut cases: Vec<Case> = Vec::new();
    for seed in first..first + seeds {
        cases.extend(
            scenario::catalogue(seed)
                .into_iter()
                .filter(|c| filter.as_ref().is_none_or(|f| f.contains(&c.name()))),
        );
    }
    assert!(!cases.is_empty(), "no case matches KV_SOAK_CASES");
    let total = cases.len();
    eprintln!("soak: {total} cases ({seeds} seeds from {first}) on {threads} threads");

    let queue = Arc::new(Mutex::new(cases.into_iter().enumerate()));
    let done: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (queue, done, failures) = (queue.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || loop {
                let Some((index, case)) = queue.lock().expect("queue lock").next() else {
                    return;
                };
                let mut outcome = scenario::run(&case);
                // The bug case must be caught by some check (the linearizability checker, or the
                // minority-side refusal check when no write made a stale read visible); any
                // other case must pass.
                let bad = outcome.passed() == case.skip_read_index;
                let finished = done.lock().expect("done lock").len() + 1;
                eprintln!(
                    "[{finished}/{total}] #{index} {} seed {}: {} ({:.1} s, {:.0} s elapsed)",
                    case.name(),
                    case.seed,
                    match (bad, case.skip_read_index) {
                        (false, false) => "ok",
                        (false, true) => "bug caught",
                        (true, false) => "FAILED",
                        (true, true) => "BUG MISSED",
                    },
                    outcome.wall.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
                if bad {
                    let path = outcome.save_history(&scenario::history_dir()).ok();
                    let mut report = outcome.describe_failure(path.as_deref());
                    if case.skip_read_index {
                        report = format!("deliberate bug NOT caught: {report}");
                    }
                    eprintln!("{report}");
                    failures.lock().expect("failures lock").push(report);
                }
                // Keep memory flat over thousands of cases: the summary needs no history.
                outcome.history = Default::default();
                done.lock().expect("done lock").push(outcome);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("soak worker panicked");
    }
    let mut outcomes = std::mem::take(&mut *done.lock().expect("done lock"));
    outcomes.sort_by_key(|o| (o.case.mode, o.case.name(), o.case.seed));
    let mut caught: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.case.skip_read_index) {
        let e = caught.entry(o.case.name()).or_default();
        e.0 += 1;
        e.1 += usize::from(o.anomalies > 0);
        e.2 += usize::from(!o.passed());
    }
    eprintln!(
        "\nsoak summary ({total} cases, {:.0} s)\n{}",
        started.elapsed().as_secs_f64(),
        jepsen::report::render_table(&scenario::summarize(&outcomes))
    );
    eprintln!(
        "availability by side\n{}",
        scenario::render_sides(&outcomes)
    );
    for (name, (runs, lin, any)) in &caught {
        eprintln!(
            "{name}: linearizability violation in {lin} of {runs} seeds; some check failed in {any}"
        );
    }
    let failures = failures.lock().expect("failures lock");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
