//! Histories, workloads, nemesis schedules and checkers for kv.
//!
//! The crate is generic: it knows neither kv-server nor kv-client, so the turmoil simulation
//! suite and the real-process suite share it. Workloads drive a [`workload::KvClient`] and
//! record into a [`history::Recorder`]; checkers read the resulting [`history::History`].

pub mod ap;
pub mod edn;
pub mod file;
pub mod history;
pub mod linearizability;
pub mod nemesis;
pub mod report;
pub mod simulate;
pub mod workload;

pub use history::{
    Event, EventType, History, HistoryError, Hlc, Op, OpId, OpKind, Operation, Outcome, Recorder,
};
