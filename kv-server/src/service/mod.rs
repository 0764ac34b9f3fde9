//! The gRPC services: the public `Kv` API and the node-to-node `Internal` API. Thin adapters:
//! they parse, validate, pick the path (serve here or forward) and convert errors to statuses
//! through `NodeError::into_status`. This file only declares and re-exports: no submodule
//! imports anything from it.
//!
//! Module order (each uses only those before it): `convert` (deadlines, conversions to
//! protobuf, AP options, CP errors) → `forward` (forwarding a request to a peer within its
//! deadline and hop budget) → `status` (`ClusterStatus`, `Ring`) → `keyspace` (`CreateKeyspace`,
//! `ListKeyspaces`) → `snapshot` (`SnapshotPartition`, `ImportRecords`: backups) → `kv` (the `Kv` service and its one CP routing function); `internal` (the
//! `Internal` service) uses none of them.

mod convert;
mod forward;
mod internal;
mod keyspace;
mod kv;
mod snapshot;
mod status;

pub use convert::{parse_grpc_timeout, request_timeout, MAX_REQUEST_TIMEOUT};
pub use forward::MAX_FORWARD_HOPS;
pub use internal::{check_handshake, InternalService};
pub use keyspace::MAX_KEYSPACE_NAME_BYTES;
pub use kv::{cp_key, KvService};
pub use snapshot::{MAX_IMPORT_RECORDS, SNAPSHOT_CHUNK_BYTES};
