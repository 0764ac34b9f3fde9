//! The CP engine: one openraft group per partition of a CP keyspace (multi-Raft), all groups of a
//! node sharing one storage `Engine`. **Architecture invariant:** a CP write is acknowledged only
//! after a majority of its group has it durably in the log and it is applied; a linearizable read
//! goes through the leader's read index; a node without a quorum answers `Unavailable` within the
//! request deadline, never stale data.
//!
//! Map: `types` (openraft type config, requests and responses), `codec` (every bincode use),
//! `keys` (the trees' layout), `store` (the log store), `state_machine` (records, snapshots),
//! `sm_reader` (reads of the records, and the rewrite of a corrupt one from a peer's copy),
//! `snapshot` (snapshot bodies in chunks),
//! `dedup` (at-most-once request ids), `network` (the `RaftTransport` seam
//! and openraft's network on top of it), `runtime` (tokio with a seedable election RNG),
//! `config` (`CpConfig`), `error` (`CpError`), `group` (group ids, specs, status), `engine`
//! (`CpEngine`, the multi-Raft manager; its child `engine/backup.rs` takes the consistent cut of
//! a partition for backups), `balance` (owners take back the lead of their groups), `read_index` (leadership
//! confirmations shared by the reads waiting on them; `engine/read.rs` uses them), `batch`
//! (many groups' Raft messages to one peer in one call), `heartbeat` (one node-wide heartbeat
//! tick for every group led here).

pub mod balance;
pub mod batch;
pub mod codec;
pub mod config;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod group;
pub mod heartbeat;
pub mod keys;
pub mod network;
pub mod read_index;
pub mod runtime;
pub mod sm_reader;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod types;

pub use engine::{
    group_id, CpConfig, CpEngine, CpError, CpRepair, GroupSpec, GroupStatus, RecordFetcher,
    META_GROUP, META_KEYSPACE, META_PARTITION,
};
pub use network::{RaftKind, RaftTransport, TransportError};
pub use types::{CasOutcome, Expected, KeyspaceOutcome, Request, Response, TypeConfig};

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod metadata_tests;
#[cfg(test)]
mod store_tests;
