//! The kv node: ring, storage, CP engine (multi-Raft), AP engine (Dynamo), membership, gRPC
//! services and configuration. A library first; `src/main.rs` (the `kv` binary) is thin.

pub mod ap;
pub mod clock;
pub mod config;
pub mod cp;
pub mod error;
pub mod faults;
pub mod membership;
pub mod node;
pub mod ring;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
pub mod types;
