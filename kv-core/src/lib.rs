//! What the kv client and the kv node both need, and nothing else: the placement hash, the
//! client half of the network seam (`net::Dialer`), the gRPC header names, and shared limits.
//!
//! **Architecture invariant:** this crate depends on no other kv crate except through `tonic`
//! types; it must never depend on `kv-server`, `kv-client`, `jepsen` or `chaos`.

pub mod headers;
pub mod limits;
pub mod net;
pub mod placement;
