//! The workspace integration tests live in `tests/`: the turmoil simulation suites and the
//! partition matrix. Their harness is `kv-testkit` (simulated clusters) and `chaos` (the
//! scenario runner); this library is empty.
