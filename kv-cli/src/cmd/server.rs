//! `kv server`: runs one node until SIGTERM or Ctrl-C, then flushes its data; serves its HTTP
//! port when `--http-listen` is given; writes one log line per event, naming the node (and,
//! through the request's span, the operation, partition and request id), as text or JSON.

use crate::arg_enums::LogFormat;
use crate::cli::ServerArgs;
use crate::output::{CliError, Exit};
use anyhow::{anyhow, bail, Context, Result};
use kv_server::security::{Api, AuthTable, Security, TlsFiles};
use kv_server::{config, node, server};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

fn init_tracing(node: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: `kv local` sends the output to a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder
            .event_format(TextWithNode {
                node: node.to_string(),
                inner: Format::default(),
            })
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine {
                node: node.to_string(),
            })
            .init(),
    }
}

/// The default text line with `node=NAME` after the timestamp's place: one process runs one
/// node, so every line (from any task, spawned or not) names it.
struct TextWithNode {
    node: String,
    inner: Format,
}

impl<S, N> FormatEvent<S, N> for TextWithNode
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "node={} ", self.node)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// One JSON object per event: `timestamp`, `level`, `node`, `target`, `message`, the event's
/// fields, and the fields of its spans (innermost wins), all at the top level so a log
/// collector can filter on `partition` or `request_id` directly.
struct JsonLine {
    node: String,
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = serde_json::Map::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        line.insert("timestamp".into(), ts.into());
        line.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        line.insert("node".into(), self.node.clone().into());
        line.insert("target".into(), event.metadata().target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<serde_json::Value>(fields)
                {
                    line.extend(map);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Runs the node; returns when it has stopped (its start-up errors are the command's errors).
pub async fn run(args: ServerArgs) -> Result<Exit, CliError> {
    init_tracing(&args.name, args.log_format);
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
    if let Some(http) = &args.http_listen {
        kv_client::net::validate_addr(http).map_err(|e| anyhow!("--http-listen: {e}"))?;
    }
    let engine = node::open_engine(&cfg)?;
    let clock = Arc::new(kv_server::clock::SystemClock::default());
    let node = node::Node::new(cfg, engine, dialer, clock)?;
    // The HTTP port opens before the Raft groups start, so /healthz answers (and /readyz says
    // "not ready") while they do.
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match &args.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("listening for HTTP on {addr} (is another process using the port?)")
            })?;
            tracing::info!(http = %addr, "serving HTTP (metrics, status page, JSON API)");
            let gate = Arc::new(server::gate_policy(&node, Api::Client, &security));
            let node = node.clone();
            Some(tokio::spawn(kv_server::http::serve_http(
                node,
                gate,
                listener,
                async move {
                    let _ = http_stopped.await;
                },
            )))
        }
        None => None,
    };
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
    let _ = stop_http.send(());
    if let Some(http) = http {
        // An HTTP client holding a connection open must not delay the flush below.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http).await;
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
