//! Shared harness for the workspace integration tests: simulated networks and clusters.
