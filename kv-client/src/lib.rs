//! Async client library for kv: discovers the ring from any seed, routes requests token-aware
//! (default), round-robin or to the node with the fewest outstanding requests, applies a deadline
//! to every request, retries with backoff only where it is safe, and returns typed errors.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::connect(kv_client::ClientConfig::new(["127.0.0.1:7001"])).await?;
//! client.put("cp", b"greeting", b"hello", Default::default()).await?;
//! let got = client.get("cp", b"greeting", Default::default()).await?;
//! assert_eq!(got.value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod options;
mod ring_view;
pub use kv_core::{net, placement};

pub use client::Client;
pub use error::Error;
pub use kv_proto::v1::Consistency;
pub use options::{CasResult, ClientConfig, Expected, GetResult, Options, Routing, WriteResult};
