//! `kv server`: runs one node until SIGTERM or Ctrl-C, then flushes its data.

use crate::cli::ServerArgs;
use crate::output::{CliError, Exit};
use anyhow::{anyhow, bail, Context, Result};
use kv_server::security::{AuthTable, Security, TlsFiles};
use kv_server::{config, node, server};
use std::path::PathBuf;
use std::sync::Arc;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// Runs the node; returns when it has stopped (its start-up errors are the command's errors).
pub async fn run(args: ServerArgs) -> Result<Exit, CliError> {
    init_tracing();
    serve(args).await?;
    Ok(Exit::Ok)
}

async fn serve(args: ServerArgs) -> Result<()> {
    let peers = config::parse_peers(&args.peers)?;
    let mut cfg = config::NodeConfig::new(&args.name, &args.cluster_name, peers);
    cfg.data_dir = args.data_dir;
    cfg.partitions = args.partitions;
    cfg.max_value_bytes = args.max_value_bytes;
    cfg.chaos = args.chaos;
    cfg.anti_entropy_interval_ms = args.anti_entropy_interval_ms;
    let me = cfg.validate()?;
    let listen = args.listen.unwrap_or(me.addr.clone());
    kv_client::net::validate_addr(&listen).map_err(anyhow::Error::msg)?;
    let peer_listen = args.peer_listen.unwrap_or(me.peer_addr.clone());
    kv_client::net::validate_addr(&peer_listen).map_err(anyhow::Error::msg)?;
    let security = security(&args.auth_file, &args.tls_cert, &args.tls_key, &args.tls_ca)?;
    warn_if_exposed(&security, &listen, &peer_listen);
    let dialer: Arc<dyn kv_client::net::Dialer> = match &security.tls {
        Some(tls) => Arc::new(kv_core::net::TlsDialer::new(
            &tls.pem.ca,
            Some((&tls.pem.cert, &tls.pem.key)),
        )),
        None => Arc::new(kv_client::net::TcpDialer),
    };
    let engine = node::open_engine(&cfg)?;
    let clock = Arc::new(kv_server::clock::SystemClock::default());
    let node = node::Node::new(cfg, engine, dialer, clock)?;
    let cp_config = kv_server::cp::CpConfig {
        cluster_name: node.config.cluster_name.clone(),
        ..Default::default()
    };
    node.start_cp(cp_config).await?;
    let _background = node.start_background();
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr} (is another process using the port?)"))
    };
    let client_listener = bind(listen.clone()).await?;
    let peer_listener = if peer_listen == listen {
        None
    } else {
        Some(bind(peer_listen.clone()).await?)
    };
    tracing::info!(node = %me.name, %listen, %peer_listen, tls = security.tls.is_some(), auth = security.auth.is_some(), "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow!("installing the SIGTERM handler: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    let heartbeats = tokio::spawn(server::heartbeat_loop(node.clone()));
    let engine = node.engine.clone();
    tokio::select! {
        r = server::serve_node(node, security, client_listener, peer_listener, shutdown) => r?,
        r = heartbeats => {
            if let Ok(Err(msg)) = r {
                bail!("{msg}");
            }
        }
    }
    engine.flush()?;
    Ok(())
}

/// The node's security settings from its flags (clap makes the three TLS flags go together).
fn security(
    auth_file: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    ca: &Option<PathBuf>,
) -> Result<Security> {
    let auth = match auth_file {
        Some(path) => Some(Arc::new(AuthTable::load(path)?)),
        None => None,
    };
    let tls = match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }
            .load()?,
        ),
        _ => None,
    };
    Ok(Security { auth, tls })
}

/// Warns when a port reachable from other machines runs without TLS: tokens and data would
/// cross the network in clear, and anyone reaching the peer port could act as a node.
fn warn_if_exposed(security: &Security, listen: &str, peer_listen: &str) {
    if security.tls.is_some() {
        return;
    }
    for (what, addr) in [("client", listen), ("peer", peer_listen)] {
        if !is_loopback(addr) {
            tracing::warn!(
                "the {what} port {addr} is not on loopback and runs without TLS: traffic is readable and anyone who reaches the peer port can act as a node; pass --tls-cert/--tls-key/--tls-ca (docs/security.md)"
            );
        }
    }
    if security.auth.is_some() {
        tracing::warn!(
            "--auth-file without TLS: tokens cross the network in clear, and the peer port checks no certificate (docs/security.md)"
        );
    }
}

/// True when `addr` ("host:port") names a loopback address.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_addresses_are_told_apart() {
        for a in ["127.0.0.1:7001", "[::1]:7001", "localhost:1", "127.1.2.3:5"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:7001",
            "10.0.0.1:7001",
            "example.com:1",
            "[::]:7001",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
