//! Generated protobuf and gRPC code for kv's public API (`kv.v1`) and node-to-node API
//! (`kv.internal.v1`). **Only this crate knows the .proto files.**

pub mod codec;

/// Package tree mirroring the protobuf packages, so cross-package references resolve.
pub mod kv {
    /// The public client API.
    pub mod v1 {
        tonic::include_proto!("kv.v1");
    }
    /// Node-to-node packages.
    pub mod internal {
        /// The node-to-node API.
        pub mod v1 {
            tonic::include_proto!("kv.internal.v1");
        }
    }
}

pub use kv::internal::v1 as internal;
pub use kv::v1;

/// Serialized file descriptors of both protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kv_descriptor");
