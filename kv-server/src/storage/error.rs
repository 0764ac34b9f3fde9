//! The errors of the storage layer; every variant names where the data lives.

/// Errors of the storage layer. Every variant names where the data lives.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The engine failed (I/O error, sled error).
    #[error("storage engine error in {location}: {message}")]
    Engine {
        /// Data directory (or "memory").
        location: String,
        /// What the engine said.
        message: String,
    },
    /// A stored record failed its checksum or could not be decoded: it is never returned.
    #[error("corrupt record for key {key:?} in tree {tree} of {location}: {reason}; it is repaired from another replica when one holds a good copy (docs/operations.md, \"Corrupt records and the scrub\")")]
    Corrupt {
        /// Data directory (or "memory").
        location: String,
        /// Tree name.
        tree: String,
        /// The key, lossily printed.
        key: String,
        /// Which check failed.
        reason: String,
    },
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;
