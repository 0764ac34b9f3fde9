//! Same seed, same history: one partition-suite case (`cp/bridge`) run in two separate
//! processes (this test binary re-invoking itself) writes its history twice, and the files are
//! compared byte for byte. Separate processes matter: hash-map seeds, addresses and the OS
//! random generator differ between processes, not between two runs in one.
//!
//! FIXME: the whole files are not identical yet. The workload's start (up to the first fault)
//! repeats every time; later lines drift (first seen anywhere from line ~400 of ~900 on a
//! loaded 2-core machine, sometimes never), so the test asserts the repeatable prefix and
//! prints where the files first differ. Closed so far: client ids (drawn from the OS generator,
//! now from the seed), and `kv compare --sim` no longer runs its simulations on a thread that
//! carries another tokio runtime's context. Suspected next: real time inside the simulated
//! nodes' HTTP/2 stack (hyper's `Date` response header, h2's reset-stream expiry read
//! `SystemTime`/`std::time::Instant`), which changes encoded sizes with the wall clock.
//!
//! Rerun with another seed: `KV_SEED=7 cargo test -p tests --test same_seed -- --nocapture`.

use chaos::scenario::{self, find_case};
use std::path::Path;
use std::process::Command;

/// Set in the child: where it writes the case's history.
const CHILD_OUT: &str = "KV_SAME_SEED_OUT";
/// The case run twice.
const CASE: &str = "cp/bridge";
/// The test's name, for the child's command line.
const TEST: &str = "one_case_in_two_processes_writes_the_same_history";

fn seed() -> u64 {
    std::env::var("KV_SEED")
        .ok()
        .map(|s| s.parse().expect("KV_SEED must be an integer"))
        .unwrap_or(1)
}

/// The 1-based number of the first line where `a` and `b` differ, if they do.
fn first_difference(a: &str, b: &str) -> Option<usize> {
    let mut la = a.lines();
    let mut lb = b.lines();
    let mut n = 0;
    loop {
        n += 1;
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x != y => return Some(n),
            _ => {}
        }
    }
}

/// Lines of `history` recorded before the case's first fault (workload start + its `at_ms`).
fn lines_before_first_fault(history: &str, seed: u64) -> usize {
    let case = find_case(CASE, seed).expect("the case is in the catalogue");
    let at_ns = case.schedule.steps[0].at_ms * 1_000_000;
    let times: Vec<u64> = history
        .lines()
        .map(|l| {
            let at = l.find("\"time_ns\":").expect("every event has its time") + 10;
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("time_ns is a number")
        })
        .collect();
    let start = times.first().copied().unwrap_or(0);
    times.iter().take_while(|&&t| t < start + at_ns).count()
}

fn run_child(out: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env(CHILD_OUT, out)
        .env("KV_SEED", seed().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "the child run failed: {status}");
}

#[test]
fn one_case_in_two_processes_writes_the_same_history() {
    let seed = seed();
    if let Some(out) = std::env::var_os(CHILD_OUT) {
        if std::env::var_os("RUST_LOG").is_some() {
            // Logs without wall-clock timestamps, so two children's logs diff line by line
            // (e.g. RUST_LOG=debug) and the first divergence shows where a run stopped repeating.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .without_time()
                .with_ansi(false)
                .with_test_writer()
                .try_init();
        }
        let case = find_case(CASE, seed).expect("the case is in the catalogue");
        let outcome = scenario::run(&case);
        outcome
            .history
            .save(Path::new(&out))
            .expect("writing the history");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kv-same-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    run_child(&a);
    run_child(&b);
    let (ta, tb) = (
        std::fs::read_to_string(&a).unwrap(),
        std::fs::read_to_string(&b).unwrap(),
    );
    let lines = ta.lines().count();
    let diff = first_difference(&ta, &tb);
    let before_fault = lines_before_first_fault(&ta, seed);
    eprintln!(
        "{CASE} seed {seed}: {lines} lines, {before_fault} before the first fault, first difference at line {diff:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        before_fault > 20,
        "a prefix this short compares nothing: {before_fault} lines"
    );
    // FIXME: assert `diff == None` once the drift described above is gone.
    assert!(
        diff.is_none_or(|line| line > before_fault),
        "{CASE} seed {seed}: the two processes' histories differ from line {diff:?} of {lines}, before the first fault (line {before_fault})"
    );
}

#[test]
fn first_difference_finds_the_line() {
    assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
    assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some(2));
    assert_eq!(first_difference("a\n", "a\nb\n"), Some(2));
}
