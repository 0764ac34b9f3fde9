//! Limits and defaults that client and node share, so both refuse the same inputs.

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default longest value accepted, in bytes (configurable per node with `--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Default number of fixed partitions Q (a power of two).
pub const DEFAULT_PARTITIONS: u32 = 32;
/// Default number of virtual tokens T per node.
pub const DEFAULT_TOKENS_PER_NODE: u32 = 64;
/// Default replication factor N.
pub const DEFAULT_REPLICAS: u32 = 3;
