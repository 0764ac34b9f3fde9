//! The simulation of one case: three seeded nodes, the workload host, and the step loop that
//! applies the schedule's faults through turmoil at their simulated times and records the
//! window each one opened; then the history is merged and handed to the checks.

use super::checks::{availability, check_ap, check_cp};
use super::workload_host::{workload_host, Shared};
use super::{
    host_name, now_ns, Call, Case, Mode, Outcome, Settings, Side, Window, AP_ANTI_ENTROPY_INTERVAL,
    NODES, WARMUP_MAX,
};
use jepsen::history::{History, Recorder};
use jepsen::nemesis::Fault;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Offset added to append-set event and process ids when merged into one history.
pub const SET_ID_OFFSET: u64 = 1 << 32;
/// Latency bounds turmoil uses by default; a healed slow link goes back to them.
const DEFAULT_LINK_LATENCY_MAX: Duration = Duration::from_millis(100);

/// Network state the step loop keeps while applying faults.
struct Net {
    cut: BTreeSet<(usize, usize)>,
    down: BTreeSet<usize>,
    slow: BTreeSet<(usize, usize)>,
}

impl Net {
    fn sides(&self) -> Vec<Side> {
        let faulty = !self.cut.is_empty() || !self.down.is_empty() || !self.slow.is_empty();
        (0..NODES)
            .map(|n| {
                if self.down.contains(&n) {
                    Side::Down
                } else if !faulty {
                    Side::Whole
                } else {
                    let reach = (0..NODES)
                        .filter(|&m| {
                            m == n
                                || (!self.down.contains(&m)
                                    && !self.cut.contains(&(n.min(m), n.max(m))))
                        })
                        .count();
                    if reach > NODES / 2 {
                        Side::Majority
                    } else {
                        Side::Minority
                    }
                }
            })
            .collect()
    }
}

fn apply_fault(sim: &mut turmoil::Sim<'_>, fault: &Fault, hosts: &[usize], net: &mut Net) {
    let h = |i: usize| hosts.get(i).copied().unwrap_or(i);
    let mut cut = |sim: &mut turmoil::Sim<'_>, a: usize, b: usize| {
        sim.partition(host_name(a), host_name(b));
        net.cut.insert((a.min(b), a.max(b)));
    };
    match fault {
        Fault::Partition(groups) => {
            for (i, g) in groups.iter().enumerate() {
                for other in &groups[i + 1..] {
                    for &a in g {
                        for &b in other {
                            cut(sim, h(a), h(b));
                        }
                    }
                }
            }
        }
        Fault::Bridge { left, right, .. } => {
            for &a in left {
                for &b in right {
                    cut(sim, h(a), h(b));
                }
            }
        }
        Fault::Heal => {
            for (a, b) in std::mem::take(&mut net.cut) {
                sim.repair(host_name(a), host_name(b));
            }
            for (a, b) in std::mem::take(&mut net.slow) {
                sim.set_link_latency(host_name(a), host_name(b), Duration::ZERO);
                sim.set_link_max_message_latency(
                    host_name(a),
                    host_name(b),
                    DEFAULT_LINK_LATENCY_MAX,
                );
            }
        }
        Fault::Crash(n) => {
            sim.crash(host_name(h(*n)));
            net.down.insert(h(*n));
        }
        Fault::Restart(n) => {
            sim.bounce(host_name(h(*n)));
            net.down.remove(&h(*n));
        }
        Fault::SlowLink(a, b, delay_ms) => {
            let (a, b) = (h(*a), h(*b));
            sim.set_link_latency(host_name(a), host_name(b), Duration::from_millis(*delay_ms));
            net.slow.insert((a.min(b), a.max(b)));
        }
    }
}

/// Runs one case with the default [`Settings`].
pub fn run(case: &Case) -> Outcome {
    run_with(case, &Settings::default())
}

/// Runs one case.
pub fn run_with(case: &Case, settings: &Settings) -> Outcome {
    let wall_start = Instant::now();
    let sim_limit = WARMUP_MAX
        + Duration::from_millis(case.schedule.heal_ms() + settings.tail_ms)
        + settings.convergence_bound
        + Duration::from_secs(120);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(sim_limit)
        .rng_seed(case.seed)
        .tcp_capacity(4096)
        .build();
    let skip = case.skip_read_index;
    let opts = kv_testkit::sim::SimOptions {
        tweak: Arc::new(move |cfg| {
            cfg.unsafe_skip_read_index = skip;
            cfg.anti_entropy_interval_ms = AP_ANTI_ENTROPY_INTERVAL.as_millis() as u64;
        }),
        ..kv_testkit::sim::SimOptions::default()
    };
    // Elections draw from the case's seed too, so a rerun repeats them.
    kv_testkit::sim::add_seeded_nodes(&mut sim, &opts, case.seed);

    let shared = Arc::new(Mutex::new(Shared::default()));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let clock: jepsen::history::Clock = Arc::new(now_ns);
    let register = Recorder::with_clock(clock.clone());
    let set = Recorder::with_clock(clock);
    sim.client(
        "workload",
        workload_host(
            case.clone(),
            settings.clone(),
            shared.clone(),
            calls.clone(),
            register.clone(),
            set.clone(),
        ),
    );

    // The step loop: applies the schedule's faults at workload start + at_ms. Bounded by the
    // simulation duration (turmoil fails the step past it).
    let mut net = Net {
        cut: BTreeSet::new(),
        down: BTreeSet::new(),
        slow: BTreeSet::new(),
    };
    let mut windows = vec![Window {
        from_ns: 0,
        fault: None,
        sides: vec![Side::Whole; NODES],
    }];
    let mut failures = Vec::new();
    let mut next_step = 0;
    loop {
        let (t0, hosts) = {
            let s = shared.lock().expect("shared lock");
            (s.t0_ns, s.hosts.clone())
        };
        if let Some(t0) = t0 {
            let now = u64::try_from(sim.elapsed().as_nanos()).unwrap_or(u64::MAX);
            while let Some(step) = case.schedule.steps.get(next_step) {
                if t0 + step.at_ms * 1_000_000 > now {
                    break;
                }
                apply_fault(&mut sim, &step.fault, &hosts, &mut net);
                windows.push(Window {
                    from_ns: now,
                    fault: Some(step.fault.clone()),
                    sides: net.sides(),
                });
                next_step += 1;
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                failures.push(format!("simulation error: {e}"));
                break;
            }
        }
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    drop(sim);
    if next_step < case.schedule.steps.len() {
        failures.push(format!(
            "only {next_step} of {} schedule steps were applied",
            case.schedule.steps.len()
        ));
    }

    let shared = std::mem::take(&mut *shared.lock().expect("shared lock"));
    let calls = std::mem::take(&mut *calls.lock().expect("calls lock"));
    failures.extend(shared.problems.iter().cloned());
    let history = merge(register.history(), set.history());
    let mut outcome = Outcome {
        case: case.clone(),
        history,
        lin: None,
        ap: None,
        ap_input: None,
        availability: availability(&calls, &windows, shared.t0_ns.unwrap_or(0), &shared),
        minority: None,
        lost_writes: 0,
        lost_to_lww: 0,
        converge_ms: None,
        anomalies: 0,
        violation_after_ms: None,
        windows,
        calls: Vec::new(),
        failures,
        sim_ms,
        wall: Duration::ZERO,
    };
    match case.mode {
        Mode::Cp => check_cp(&mut outcome, &calls, settings),
        Mode::Ap => check_ap(&mut outcome, &shared, settings),
    }
    outcome.calls = calls;
    outcome.wall = wall_start.elapsed();
    outcome
}

/// Merges the register and append-set histories (set ids and processes offset), by time.
pub fn merge(register: History, set: History) -> History {
    let mut set = set;
    for e in &mut set.events {
        e.id += SET_ID_OFFSET;
        e.process += SET_ID_OFFSET;
    }
    let mut events = Vec::with_capacity(register.events.len() + set.events.len());
    let (mut a, mut b) = (
        register.events.into_iter().peekable(),
        set.events.into_iter().peekable(),
    );
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.time_ns <= y.time_ns,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        events.extend(if take_a { a.next() } else { b.next() });
    }
    History { events }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(cut: &[(usize, usize)], down: &[usize], slow: &[(usize, usize)]) -> Net {
        Net {
            cut: cut.iter().copied().collect(),
            down: down.iter().copied().collect(),
            slow: slow.iter().copied().collect(),
        }
    }

    #[test]
    fn sides_follow_who_reaches_a_majority() {
        use Side::*;
        assert_eq!(net(&[], &[], &[]).sides(), [Whole, Whole, Whole]);
        // Node 0 isolated: it alone is the minority.
        assert_eq!(
            net(&[(0, 1), (0, 2)], &[], &[]).sides(),
            [Minority, Majority, Majority]
        );
        // A bridge (0 and 2 cut, 1 sees both): everyone still reaches two of three.
        assert_eq!(
            net(&[(0, 2)], &[], &[]).sides(),
            [Majority, Majority, Majority]
        );
        // A crashed node is down; the others reach each other.
        assert_eq!(net(&[], &[0], &[]).sides(), [Down, Majority, Majority]);
        // A slow link is a fault but cuts nothing.
        assert_eq!(
            net(&[], &[], &[(0, 1)]).sides(),
            [Majority, Majority, Majority]
        );
        // A crash during a partition: node 1 cut from 2 while 0 is down.
        assert_eq!(
            net(&[(1, 2)], &[0], &[]).sides(),
            [Down, Minority, Minority]
        );
    }
}
