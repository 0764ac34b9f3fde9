//! Faults and scenarios for kv clusters: fault injection against a running cluster
//! ([`faults`] through each node's `Chaos` call, [`process`] for local processes), and the
//! scenario runner (a workload, a nemesis schedule and the checkers, on a simulated cluster)
//! used by the partition suite, and next by `kv chaos`, `kv compare` and `kv demo`.
//!
//! **Architecture invariant:** `kv-server` never depends on this crate; the node keeps only the
//! mechanism that applies faults to its own links (`kv_server::faults`), driven from here.

pub mod faults;
pub mod process;
pub mod scenario;
