//! Helpers shared by the real-process tests: run the `kv` binary, stop the cluster on drop.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The `kv` binary under test: the one cargo built, or `KV_TEST_BIN` (a copy of it, for runs
/// that must not see the target directory's binary replaced by another build meanwhile).
pub fn kv_bin() -> std::path::PathBuf {
    std::env::var_os("KV_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_kv").into())
}

/// `kv ARGS` run in `dir`, with the local cluster in `dir/.kv-local` and nothing of the
/// caller's environment that could point it elsewhere (endpoints, cluster folder, ports).
pub fn kv_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(kv_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("KV_ENDPOINTS")
        .env_remove("KV_BASE_PORT")
        .env("KV_DIR", dir.join(".kv-local"))
        .env("XDG_DATA_HOME", dir.join("xdg"));
    cmd
}

/// Runs `kv ARGS` in `dir` (see `kv_command`).
pub fn kv(dir: &Path, args: &[&str]) -> Output {
    kv_command(dir, args).output().expect("running kv")
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
