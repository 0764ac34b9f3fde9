//! Async client library for kv.
