//! `kv demo`'s parts below the narrative (which is `cmd/demo.rs`): the throwaway cluster
//! folder that is removed however the demo ends, the clients' workload (`workload`), and the
//! judgement of what they saw (`report`).

pub mod report;
pub mod workload;

use crate::local;
use anyhow::Context;
use std::path::PathBuf;

/// A fresh folder under the system's temporary directory holding the demo's cluster. Dropping
/// it (an error, a panic) stops the cluster and deletes the folder; [`DemoFolder::remove`] does
/// the same and says how it went.
pub struct DemoFolder {
    /// The folder.
    pub path: PathBuf,
    removed: bool,
}

impl DemoFolder {
    /// Creates `$TMPDIR/kv-demo-PID-NANOS`.
    pub fn create() -> anyhow::Result<DemoFolder> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("kv-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(DemoFolder {
            path,
            removed: false,
        })
    }

    /// Stops the cluster's nodes and deletes the folder.
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.removed = true;
        remove(&self.path)
    }
}

impl Drop for DemoFolder {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove(&self.path);
        }
    }
}

/// Stops every node of the cluster in `path` and deletes the folder. When a node cannot be
/// stopped the folder stays, so that its pid is not forgotten.
fn remove(path: &std::path::Path) -> anyhow::Result<()> {
    local::down(path, true).with_context(|| {
        format!(
            "cleaning up {}; stop what remains with `kv local down --purge --dir {}`",
            path.display(),
            path.display()
        )
    })?;
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("deleting {}", path.display()))?;
    }
    Ok(())
}
