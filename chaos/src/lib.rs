//! Faults and scenarios for kv clusters: the scenario runner (a workload, a nemesis schedule
//! and the checkers, on a simulated cluster) used by the partition suite, and next by
//! `kv compare` and `kv demo`.
//!
//! **Architecture invariant:** `kv-server` never depends on this crate; the node keeps only the
//! mechanism that applies faults to its own links (`kv_server::faults`), driven from here.

pub mod scenario;
