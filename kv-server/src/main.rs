//! The `kv` binary.
fn main() {}
