//! Histories, workloads, nemesis schedules and checkers for kv.
