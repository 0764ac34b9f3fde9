//! The commands, one file per group: `server` (run a node), `local` (local clusters), `data`
//! (put, get, delete, cas), `admin` (ring, status, keyspaces, completion), `check` (history
//! files), `chaos` (faults on a running cluster), `demo` (CP and AP side by side), `compare`
//! (one workload and fault schedule on both modes, checked). Each returns the exit code of its
//! answer or a `CliError`; `output` prints and ends.

pub mod admin;
pub mod chaos;
pub mod check;
pub mod compare;
pub mod data;
pub mod demo;
pub mod local;
pub mod server;

use crate::cli::{Global, RoutingArg};
use crate::local::{ClusterDir, LocalCluster};
use crate::output::{CliError, Printer, Stage};
use kv_client::{Client, ClientConfig, Routing};
use std::time::Duration;

/// What every command gets: the global flags and the printer.
pub struct Ctx {
    /// Flags accepted anywhere on the command line.
    pub global: Global,
    /// Where results go.
    pub out: Printer,
}

impl Ctx {
    /// The local cluster's folder, as `--dir` / `KV_DIR` / the defaults choose it.
    pub fn dir(&self) -> ClusterDir {
        ClusterDir::resolve(self.global.dir.as_deref())
    }

    /// The request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.global.timeout_ms)
    }

    /// A client for `--endpoints` / `KV_ENDPOINTS`, else for the local cluster's nodes.
    pub async fn client(&self) -> Result<Client, CliError> {
        let (seeds, seeds_only) = if !self.global.endpoints.is_empty() {
            (self.global.endpoints.clone(), true)
        } else {
            let dir = self.dir();
            match LocalCluster::load(&dir.path)? {
                Some(c) => (c.endpoints(), false),
                None => {
                    return Err(CliError::BadInput(format!(
                        "no cluster to talk to: pass --endpoints host:port, set KV_ENDPOINTS, or start one with `kv local up` (no local cluster in {dir})"
                    )))
                }
            }
        };
        let mut cfg = ClientConfig::new(seeds);
        cfg.seeds_only = seeds_only;
        cfg.timeout = self.timeout();
        cfg.routing = match self.global.routing {
            RoutingArg::TokenAware => Routing::TokenAware,
            RoutingArg::RoundRobin => Routing::RoundRobin,
            RoutingArg::LeastOutstanding => Routing::LeastOutstanding,
        };
        Client::connect(cfg)
            .await
            .map_err(CliError::client(Stage::Connect))
    }
}
