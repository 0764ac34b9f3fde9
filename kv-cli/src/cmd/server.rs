//! `kv server`: runs one node until SIGTERM or Ctrl-C, then flushes its data.

use crate::cli::ServerArgs;
use crate::output::{CliError, Exit};
use anyhow::{anyhow, bail, Context, Result};
use kv_server::{config, node, server};
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
    let engine = node::open_engine(&cfg)?;
    let clock = Arc::new(kv_server::clock::SystemClock::default());
    let node = node::Node::new(cfg, engine, Arc::new(kv_client::net::TcpDialer), clock)?;
    let cp_config = kv_server::cp::CpConfig {
        cluster_name: node.config.cluster_name.clone(),
        ..Default::default()
    };
    node.start_cp(cp_config).await?;
    let _background = node.start_background();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen} (is another process using the port?)"))?;
    tracing::info!(node = %me.name, %listen, "serving");
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
        r = server::serve_tcp(node, listener, shutdown) => r?,
        r = heartbeats => {
            if let Ok(Err(msg)) = r {
                bail!("{msg}");
            }
        }
    }
    engine.flush()?;
    Ok(())
}
