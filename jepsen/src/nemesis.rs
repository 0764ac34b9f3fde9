//! Nemesis schedule descriptions: data only. A schedule is a named list of timed fault steps
//! over node indices `0..nodes`; the turmoil harness and the chaos runner interpret them.
//!
//! Invariant: every constructor ends its schedule with a step that restores full connectivity
//! and restarts crashed nodes, so a run always has a heal phase to measure convergence in.

use serde::{Deserialize, Serialize};

/// One fault (or repair) applied to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Groups of nodes that can talk only within their group.
    Partition(Vec<Vec<usize>>),
    /// Two sides that cannot talk to each other, except through `bridge`, which sees both.
    Bridge {
        /// One side (without the bridge node).
        left: Vec<usize>,
        /// The other side (without the bridge node).
        right: Vec<usize>,
        /// The node connected to both sides.
        bridge: usize,
    },
    /// Remove every partition and slow link.
    Heal,
    /// Stop a node abruptly.
    Crash(usize),
    /// Start a crashed node again.
    Restart(usize),
    /// Delay traffic between two nodes (both directions) by `delay_ms`.
    SlowLink(usize, usize, u64),
}

/// A fault at a time offset from the start of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds after the workload starts.
    pub at_ms: u64,
    /// What happens then.
    pub fault: Fault,
}

/// A named fault schedule for a cluster of `nodes` nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Name shown in reports.
    pub name: String,
    /// Cluster size the node indices refer to.
    pub nodes: usize,
    /// Steps sorted by `at_ms`.
    pub steps: Vec<Step>,
}

/// Flapping cycles allowed in one schedule (bounds schedule size).
pub const MAX_FLAPS: usize = 1_000;

fn step(at_ms: u64, fault: Fault) -> Step {
    Step { at_ms, fault }
}

fn others(nodes: usize, except: &[usize]) -> Vec<usize> {
    (0..nodes).filter(|n| !except.contains(n)).collect()
}

impl Schedule {
    /// No faults at all: the baseline.
    pub fn none(nodes: usize) -> Schedule {
        Schedule {
            name: "none".into(),
            nodes,
            steps: Vec::new(),
        }
    }

    /// Cut `node` off from every other node at `start_ms`, heal after `duration_ms`.
    pub fn isolate_one(nodes: usize, node: usize, start_ms: u64, duration_ms: u64) -> Schedule {
        Schedule {
            name: format!("isolate-n{node}"),
            nodes,
            steps: vec![
                step(
                    start_ms,
                    Fault::Partition(vec![vec![node], others(nodes, &[node])]),
                ),
                step(start_ms + duration_ms, Fault::Heal),
            ],
        }
    }

    /// Split into a majority (the first `nodes/2 + 1` nodes) and the minority rest.
    pub fn majority_minority(nodes: usize, start_ms: u64, duration_ms: u64) -> Schedule {
        let majority: Vec<usize> = (0..nodes / 2 + 1).collect();
        let minority = others(nodes, &majority);
        Schedule {
            name: "majority-minority".into(),
            nodes,
            steps: vec![
                step(start_ms, Fault::Partition(vec![majority, minority])),
                step(start_ms + duration_ms, Fault::Heal),
            ],
        }
    }

    /// Two halves that see each other only through node 0, the bridge.
    pub fn bridge(nodes: usize, start_ms: u64, duration_ms: u64) -> Schedule {
        let rest = others(nodes, &[0]);
        let (left, right) = rest.split_at(rest.len() / 2);
        Schedule {
            name: "bridge".into(),
            nodes,
            steps: vec![
                step(
                    start_ms,
                    Fault::Bridge {
                        left: left.to_vec(),
                        right: right.to_vec(),
                        bridge: 0,
                    },
                ),
                step(start_ms + duration_ms, Fault::Heal),
            ],
        }
    }

    /// Alternate isolating node `i % nodes` for `period_ms` and healing for `period_ms`,
    /// `flaps` times (at most [`MAX_FLAPS`]).
    pub fn flapping(nodes: usize, start_ms: u64, period_ms: u64, flaps: usize) -> Schedule {
        let mut steps = Vec::new();
        for i in 0..flaps.min(MAX_FLAPS) {
            let at = start_ms + 2 * period_ms * i as u64;
            let node = i % nodes.max(1);
            steps.push(step(
                at,
                Fault::Partition(vec![vec![node], others(nodes, &[node])]),
            ));
            steps.push(step(at + period_ms, Fault::Heal));
        }
        Schedule {
            name: "flapping".into(),
            nodes,
            steps,
        }
    }

    /// Crash `node` at `start_ms` and restart it after `down_ms`.
    pub fn crash_restart(nodes: usize, node: usize, start_ms: u64, down_ms: u64) -> Schedule {
        Schedule {
            name: format!("crash-restart-n{node}"),
            nodes,
            steps: vec![
                step(start_ms, Fault::Crash(node)),
                step(start_ms + down_ms, Fault::Restart(node)),
            ],
        }
    }

    /// Slow the link between `a` and `b` by `delay_ms` for `duration_ms`.
    pub fn slow_link(
        nodes: usize,
        (a, b): (usize, usize),
        delay_ms: u64,
        start_ms: u64,
        duration_ms: u64,
    ) -> Schedule {
        Schedule {
            name: format!("slow-link-n{a}-n{b}"),
            nodes,
            steps: vec![
                step(start_ms, Fault::SlowLink(a, b, delay_ms)),
                step(start_ms + duration_ms, Fault::Heal),
            ],
        }
    }

    /// Time of the last step: when the cluster is whole again.
    pub fn heal_ms(&self) -> u64 {
        self.steps.last().map_or(0, |s| s.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_whole(s: &Schedule) -> bool {
        s.steps
            .last()
            .is_none_or(|l| matches!(l.fault, Fault::Heal | Fault::Restart(_)))
    }

    #[test]
    fn constructors_cover_every_node_and_end_healed() {
        let all = [
            Schedule::none(3),
            Schedule::isolate_one(5, 2, 100, 1000),
            Schedule::majority_minority(5, 100, 1000),
            Schedule::bridge(5, 100, 1000),
            Schedule::flapping(3, 0, 200, 4),
            Schedule::crash_restart(3, 1, 100, 500),
            Schedule::slow_link(3, (0, 1), 50, 100, 1000),
        ];
        for s in &all {
            assert!(ends_whole(s), "{} does not end healed", s.name);
            assert!(
                s.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
                "{}",
                s.name
            );
            for st in &s.steps {
                if let Fault::Partition(groups) = &st.fault {
                    let mut nodes: Vec<usize> = groups.iter().flatten().copied().collect();
                    nodes.sort_unstable();
                    assert_eq!(nodes, (0..s.nodes).collect::<Vec<_>>(), "{}", s.name);
                }
            }
        }
        assert_eq!(
            Schedule::majority_minority(5, 0, 10).steps[0].fault,
            Fault::Partition(vec![vec![0, 1, 2], vec![3, 4]])
        );
        assert_eq!(
            Schedule::bridge(5, 0, 10).steps[0].fault,
            Fault::Bridge {
                left: vec![1, 2],
                right: vec![3, 4],
                bridge: 0
            }
        );
        assert_eq!(Schedule::flapping(3, 0, 200, 4).steps.len(), 8);
        assert_eq!(Schedule::flapping(3, 0, 200, 4).heal_ms(), 1400);
    }
}
