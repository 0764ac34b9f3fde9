//! The AP engine (Dynamo-style): HLC timestamps, last-write-wins records, the local replica
//! store, durable hints, per-partition Merkle trees and the coordinator/replica `ApEngine`.
//! **Architecture invariant:** every AP record and hint is stored through `RecordTree`, so every
//! read is checksum-verified; no AP code names a storage engine or a wire format.
//!
//! Layering (each line depends only on the ones before it):
//! - `hlc` → `lww` → `merkle` → `store` → `hints` → `flush`: timestamps, records, their storage
//!   and its group commit;
//! - `error`, `seams`, `config`: what the engine reports, what it is plugged into (network,
//!   failure detector, ring) and how it is configured;
//! - `plan`: the pure decisions (write plan and fallbacks, quorum counting, read plan and
//!   repair, hint actions, anti-entropy peers), no I/O — the "engine" of openraft's
//!   engine/runtime split, driven from tables in `plan_tests`;
//! - `engine` (`ApEngine`, its shared state) and the runtime that carries out `plan`'s decisions,
//!   one `impl ApEngine` per file: `replica`, `coordinator`, `background` (hint replay,
//!   anti-entropy and tombstone purge, each its own task); `stragglers`, the one task that
//!   finishes the sends a write leaves running after its caller was answered; `repair` (a
//!   corrupt local record replaced from the other replicas, for the scrub).

pub mod background;
pub mod config;
mod coordinator;
pub mod engine;
pub mod error;
pub mod flush;
pub mod hints;
pub mod hlc;
pub mod lww;
pub mod merkle;
pub mod plan;
pub mod repair;
mod replica;
pub mod seams;
pub mod store;
mod stragglers;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod testkit;

pub use background::{AntiEntropyStats, ReplayStats};
pub use config::{ApConfig, Consistency, RequestOptions};
pub use engine::{ApEngine, ApStatus};
pub use error::{ApError, TransportError};
pub use hlc::HlcError;
pub use lww::ApRecord;
pub use seams::{ApRing, ApTransport, Liveness};
pub use store::RangePage;
