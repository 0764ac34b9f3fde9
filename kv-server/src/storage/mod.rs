//! The storage seam: one `Engine` trait (named trees of ordered byte keys) with a sled engine
//! (default, on disk) and an in-memory engine (tests, simulation). Replication code sees only
//! these traits. **Architecture invariant:** nothing outside `storage/` names sled.

mod engine;
mod error;
pub mod group_commit;
pub mod memory;
pub mod record;
pub mod sled;

pub use engine::{BatchOp, Engine, Tree};
pub use error::{Result, StorageError};

use std::path::Path;
use std::sync::Arc;

/// Which storage engine a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// sled, on disk (the default).
    #[default]
    Sled,
    /// In memory: nothing survives the process (tests, simulations).
    Memory,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "sled" => Ok(EngineKind::Sled),
            "memory" => Ok(EngineKind::Memory),
            other => Err(format!(
                "unknown storage engine {other:?}: expected \"sled\" or \"memory\""
            )),
        }
    }
}

/// Opens the engine of this kind; sled needs a data directory, memory ignores it.
pub fn open_engine(kind: EngineKind, dir: Option<&Path>) -> Result<Arc<dyn Engine>> {
    match (kind, dir) {
        (EngineKind::Memory, _) => Ok(Arc::new(memory::MemoryEngine::new())),
        (EngineKind::Sled, Some(dir)) => Ok(Arc::new(self::sled::SledEngine::open(dir)?)),
        (EngineKind::Sled, None) => Err(StorageError::Engine {
            location: "(none)".to_string(),
            message: "the sled engine needs a data directory: pass --data-dir".to_string(),
        }),
    }
}
