//! Helpers shared by the real-process tests: run the `kv` binary, stop the cluster on drop.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `kv ARGS` in `dir`, ignoring any `KV_ENDPOINTS` of the environment.
pub fn kv(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .current_dir(dir)
        .env_remove("KV_ENDPOINTS")
        .output()
        .expect("running kv")
}

/// The command's stdout; fails the test (showing both streams) if it did not succeed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kv failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the local cluster in its folder even when an assertion fails.
pub struct Cleanup<'a>(pub &'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = kv(self.0, &["local", "down", "--purge"]);
    }
}

/// The local cluster's `cluster.json`.
pub fn cluster(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(".kv-local/cluster.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The nodes' addresses from `cluster.json`, in peer-list order.
pub fn addrs(dir: &Path) -> Vec<String> {
    cluster(dir)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .collect()
}
