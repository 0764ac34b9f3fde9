//! Async client library for kv.

pub mod placement;
