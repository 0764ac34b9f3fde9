//! The sled engine (default, on disk): one sled database per data directory, one sled tree per
//! `Tree`. **Invariants:** every sled error becomes `StorageError::Engine` naming the data
//! directory; `apply_batch` is one `sled::Batch` (all or nothing, also across a crash); `flush`
//! returns only once earlier writes are on disk.

use super::engine::{BatchOp, Engine, Tree};
use super::error::{Result, StorageError};
use super::group_commit::GroupCommit;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Text sled 0.34.7 puts in the I/O error when another handle holds the directory's lock file.
const SLED_LOCK_ERROR: &str = "could not acquire lock";

/// An engine storing its trees in a sled database.
#[derive(Clone)]
pub struct SledEngine {
    db: ::sled::Db,
    location: String,
    commit: Arc<GroupCommit>,
}

impl SledEngine {
    /// Opens (creating if needed) the sled database in `dir`.
    ///
    /// A directory already opened by another kv process (or another handle in this one) is
    /// refused with an error that says so, rather than sled's raw lock error.
    pub fn open(dir: &Path) -> Result<SledEngine> {
        let location = dir.display().to_string();
        let db = ::sled::Config::new().path(dir).open().map_err(|e| {
            let message = match &e {
                ::sled::Error::Io(io) if io.to_string().contains(SLED_LOCK_ERROR) => format!(
                    "data directory {location} is in use by another kv process (lock held); \
                     stop it or choose another --data-dir"
                ),
                other => format!("cannot open sled database: {other}"),
            };
            StorageError::Engine {
                location: location.clone(),
                message,
            }
        })?;
        let flushed = db.clone();
        let flush_location = location.clone();
        let commit = GroupCommit::start("sled", move || {
            flushed
                .flush()
                .map(drop)
                .map_err(|e| engine_error(&flush_location, e))
        })
        .map_err(|e| StorageError::Engine {
            location: location.clone(),
            message: format!("cannot start the flush thread: {e}"),
        })?;
        Ok(SledEngine {
            db,
            location,
            commit: Arc::new(commit),
        })
    }
}

/// Converts a sled error, naming where the data lives.
fn engine_error(location: &str, err: ::sled::Error) -> StorageError {
    StorageError::Engine {
        location: location.to_string(),
        message: err.to_string(),
    }
}

impl Engine for SledEngine {
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
        let tree = self
            .db
            .open_tree(name)
            .map_err(|e| engine_error(&self.location, e))?;
        Ok(Arc::new(SledTree {
            tree,
            name: name.to_string(),
            location: self.location.clone(),
        }))
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| engine_error(&self.location, e))
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn group_commit(&self) -> Option<Arc<GroupCommit>> {
        Some(self.commit.clone())
    }

    fn tree_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// One sled tree.
pub struct SledTree {
    tree: ::sled::Tree,
    name: String,
    location: String,
}

impl SledTree {
    fn err(&self, e: ::sled::Error) -> StorageError {
        engine_error(&self.location, e)
    }
}

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree
            .insert(key, value)
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn remove(&self, key: &[u8]) -> Result<()> {
        self.tree.remove(key).map(drop).map_err(|e| self.err(e))
    }

    fn apply_batch(&self, ops: &[BatchOp]) -> Result<()> {
        let mut batch = ::sled::Batch::default();
        for op in ops {
            match op {
                BatchOp::Insert(k, v) => batch.insert(k.as_slice(), v.as_slice()),
                BatchOp::Remove(k) => batch.remove(k.as_slice()),
            }
        }
        self.tree.apply_batch(batch).map_err(|e| self.err(e))
    }

    fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .range::<&[u8], _>((start, end))
            .take(limit)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    fn last(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .tree
            .last()
            .map_err(|e| self.err(e))?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn clear(&self) -> Result<()> {
        self.tree.clear().map_err(|e| self.err(e))
    }

    fn flush(&self) -> Result<()> {
        self.tree.flush().map(drop).map_err(|e| self.err(e))
    }

    fn name(&self) -> &str {
        &self.name
    }
}
