//! `kv compare --sim`: the comparison inside the turmoil simulation, through the partition
//! suite's runner (`chaos::scenario`): one case per mode with the same seed, the same
//! workload and the same schedule (the last node cut off, then healed). Deterministic: one
//! seed writes byte-identical histories in two processes (tests/tests/same_seed.rs, and
//! `kv compare --sim` itself in kv-cli/tests/compare_report.rs; docs/compare.md says what it
//! took).

use super::judge::{check_ap_report, check_cp, ModeRun};
use super::{Comparison, FaultSpan};
use anyhow::anyhow;
use chaos::scenario::{run_with, Case, Mode, Outcome, Settings, Side, NODES};
use jepsen::nemesis::{Fault, Schedule};
use std::time::Duration;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimPlan {
    /// Seeds the simulation (network, scheduler, elections) and the workload.
    pub seed: u64,
    /// How long the workload runs (simulated time).
    pub duration: Duration,
    /// Register-workload clients per mode, spread over the nodes (rounded up to a multiple
    /// of the node count).
    pub clients: usize,
    /// Hot keys of the register workload.
    pub keys: usize,
    /// Operations per second per register client.
    pub rate: f64,
    /// When the last node is cut off, from the workload's start.
    pub partition_at: Duration,
    /// How long it stays cut off.
    pub partition_for: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The case of `mode` for `plan`.
pub fn case(mode: Mode, plan: &SimPlan) -> (Case, Settings) {
    let mut schedule = Schedule::isolate_one(
        NODES,
        NODES - 1,
        ms(plan.partition_at),
        ms(plan.partition_for),
    );
    schedule.name = "compare".into();
    let settings = Settings {
        clients_per_node: plan.clients.div_ceil(NODES).max(1),
        register_rate: plan.rate,
        keys: plan.keys,
        tail_ms: ms(plan.duration).saturating_sub(schedule.heal_ms()),
        ..Settings::default()
    };
    let case = Case {
        mode,
        schedule,
        seed: plan.seed,
        target_leader: false,
        skip_read_index: false,
    };
    (case, settings)
}

/// Node `i`'s host name in the simulation.
fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

fn label(fault: &Fault) -> String {
    let names = |g: &[usize]| g.iter().map(|&i| host(i)).collect::<Vec<_>>().join(", ");
    match fault {
        Fault::Partition(groups) if groups.len() == 2 => {
            format!("{} cut off from {}", names(&groups[0]), names(&groups[1]))
        }
        other => format!("{other:?}"),
    }
}

/// Runs both cases (on two threads: each simulation is its own world) and judges them.
pub fn run(plan: &SimPlan) -> anyhow::Result<Comparison> {
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = [Mode::Cp, Mode::Ap]
            .into_iter()
            .map(|mode| {
                s.spawn(move || {
                    let (case, settings) = case(mode, plan);
                    run_with(&case, &settings)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a simulation panicked")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut runs = Vec::new();
    let mut spans = Vec::new();
    let mut workload_end_ns = 0;
    for o in &outcomes {
        if let Some(problem) = o
            .failures
            .iter()
            .find(|f| f.starts_with("warm-up") || f.starts_with("simulation error"))
        {
            return Err(anyhow!(
                "the {} simulation did not run: {problem}",
                o.case.mode.name()
            ));
        }
        let minority = NODES - 1;
        let heal_ns = o
            .windows
            .iter()
            .find(|w| w.fault == Some(Fault::Heal))
            .map(|w| w.from_ns);
        let checked = match (o.case.mode, &o.ap) {
            (Mode::Cp, _) => check_cp(
                &o.history,
                heal_ns.and_then(|heal| {
                    o.calls
                        .iter()
                        .filter(|c| c.node == minority && c.served && c.start_ns >= heal)
                        .map(|c| c.end_ns.saturating_sub(heal) / 1_000_000)
                        .min()
                }),
            ),
            (Mode::Ap, Some(report)) => check_ap_report(report, o.lost_to_lww),
            (Mode::Ap, None) => {
                return Err(anyhow!(
                    "the AP simulation was not checked: {}",
                    o.failures.join("; ")
                ))
            }
        };
        workload_end_ns =
            workload_end_ns.max(o.calls.iter().map(|c| c.start_ns).max().unwrap_or(0));
        if spans.is_empty() {
            for (i, w) in o.windows.iter().enumerate() {
                if let Some(f) = w.fault.as_ref().filter(|f| **f != Fault::Heal) {
                    let to_ns = o.windows.get(i + 1).map_or(w.from_ns, |n| n.from_ns);
                    spans.push(FaultSpan {
                        from_ns: w.from_ns,
                        to_ns,
                        label: label(f),
                    });
                }
            }
        }
        let sides = o
            .availability
            .iter()
            .filter(|(s, _)| **s != Side::Down)
            .map(|(s, v)| (*s, *v))
            .collect();
        runs.push(ModeRun {
            mode: o.case.mode,
            history: o.history.clone(),
            sides,
            ap_input: o.ap_input.clone(),
            checked,
        });
    }
    Ok(Comparison {
        runs,
        spans,
        workload_end_ns,
        minority: host(NODES - 1),
        cluster: format!("turmoil simulation, {NODES} nodes, seed {}", plan.seed),
    })
}
