//! The commands, one file per group: `server` (run a node), `local` (local clusters), `data`
//! (put, get, delete, cas), `admin` (ring, status, keyspaces, completion), `check` (history
//! files), `chaos` (faults on a running cluster), `demo` (CP and AP side by side), `snapshot` (backups;
//! their file format in `snapshot_file`), `compare` (one workload and fault schedule on both
//! modes, checked). Each returns the exit code of its answer or a `CliError`; `output` prints and ends.

pub mod admin;
pub mod chaos;
pub mod check;
pub mod compare;
pub mod data;
pub mod demo;
pub mod local;
pub mod server;
pub mod snapshot;
pub mod snapshot_file;

use crate::cli::{Global, RoutingArg};
use crate::local::secure::SecureFiles;
use crate::local::{ClusterDir, LocalCluster};
use crate::output::{CliError, Printer, Stage};
use kv_client::{Client, ClientConfig, Routing};
use std::sync::Arc;
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
        Client::connect(self.client_config()?)
            .await
            .map_err(CliError::client(Stage::Connect))
    }

    /// The settings of `client`: seeds, deadline, routing, and how to reach the nodes (TLS and
    /// token from the flags, else from a `--secure` local cluster).
    pub fn client_config(&self) -> Result<ClientConfig, CliError> {
        // A local cluster's token and CA are used only with it, never sent to --endpoints.
        let mut secure = None;
        let (seeds, seeds_only) = if !self.global.endpoints.is_empty() {
            (self.global.endpoints.clone(), true)
        } else {
            let dir = self.dir();
            match LocalCluster::load(&dir.path)? {
                Some(c) => {
                    if c.secure {
                        secure = Some(SecureFiles::of(&dir.path));
                    }
                    (c.endpoints(), false)
                }
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
        cfg.token = self.global.token.clone();
        if let Some(path) = &self.global.ca_cert {
            let ca = std::fs::read_to_string(path).map_err(|e| {
                CliError::BadInput(format!("cannot read --ca-cert {}: {e}", path.display()))
            })?;
            cfg.dialer = Arc::new(kv_core::net::TlsDialer::new(&ca, None));
        } else if let Some(files) = secure {
            files.configure(&mut cfg)?;
        }
        Ok(cfg)
    }
}
