//! The AP engine (Dynamo-style): HLC timestamps, last-write-wins records, the local replica
//! store, durable hints, per-partition Merkle trees and the coordinator/replica `ApEngine`.
//! **Architecture invariant:** every AP record and hint is stored through `RecordTree`, so every
//! read is checksum-verified; no AP code names a storage engine or a wire format.
//!
//! Layering (each file depends only on the ones before it): `hlc` → `lww` → `merkle` → `store`
//! → `hints` → `engine`. Cores without I/O (`lww::merge`, `merkle::diff`, `engine::plan_write`,
//! `engine::resolve_quorums`) are plain functions that tests drive directly.

pub mod engine;
pub mod hints;
pub mod hlc;
pub mod lww;
pub mod merkle;
pub mod store;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod testkit;

pub use engine::{
    AntiEntropyStats, ApConfig, ApEngine, ApError, ApRing, ApStatus, ApTransport, Consistency,
    Liveness, ReplayStats, RequestOptions, TransportError,
};
pub use lww::ApRecord;
