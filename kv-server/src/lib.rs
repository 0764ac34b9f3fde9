//! The kv node: ring, storage, CP engine (multi-Raft), AP engine (Dynamo), membership, gRPC
//! services and configuration. A library first; `src/main.rs` (the `kv` binary) is thin.

pub mod clock;
pub mod cp;
pub mod storage;
pub mod types;
