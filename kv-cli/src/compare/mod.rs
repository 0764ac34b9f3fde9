//! `kv compare`'s parts below the command (`cmd/compare.rs`): the same register and
//! append-set workload (`jepsen::workload`) and the same fault schedule run against the `cp`
//! and `ap` keyspaces side by side, on real processes (`real`, through `chaos::scenario::SimKv`) or in the
//! turmoil simulation (`sim`, through `chaos::scenario`); the judgement (`judge`, with the
//! `jepsen` checkers) and the self-contained HTML report (`html`).
//!
//! Both runners produce a [`Comparison`]: everything the table and the report are made of.

pub mod html;
pub mod judge;
pub mod real;
pub mod sim;

use judge::ModeRun;
use std::path::{Path, PathBuf};

/// A fault as the report shades it: from when it was applied until it was healed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpan {
    /// Applied, ns since the run started.
    pub from_ns: u64,
    /// Healed, ns since the run started (the run's end when never healed).
    pub to_ns: u64,
    /// What it was, for people.
    pub label: String,
}

/// What one comparison produced.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// One run per mode, CP first.
    pub runs: Vec<ModeRun>,
    /// The faults applied.
    pub spans: Vec<FaultSpan>,
    /// When the workload stopped, ns since the run started.
    pub workload_end_ns: u64,
    /// The node cut off.
    pub minority: String,
    /// Where it ran: "real processes (...)" or "turmoil simulation".
    pub cluster: String,
}

impl Comparison {
    /// Writes each mode's history as JSON lines into `dir` (`cp.jsonl`, `ap.jsonl`); returns
    /// the files.
    pub fn save_histories(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = Vec::new();
        for run in &self.runs {
            let path = dir.join(history_file(run.mode));
            jepsen::file::save(&path, &run.history, run.ap_input.as_ref())
                .with_context(|| format!("writing {}", path.display()))?;
            files.push(path);
        }
        Ok(files)
    }
}

/// The history file name of `mode`.
pub fn history_file(mode: chaos::scenario::Mode) -> String {
    format!("{}.jsonl", mode.name())
}
