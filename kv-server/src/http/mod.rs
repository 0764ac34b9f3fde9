//! The node's HTTP port (`--http-listen`): Prometheus metrics (`/metrics`), liveness and
//! readiness for orchestrators (`/healthz`, `/readyz`), the live status page (`/`) with the
//! JSON it polls (`/v1/cluster`), and the HTTP/JSON API over the public gRPC service
//! (`/v1/kv/get|put|delete|cas`, docs/http-api.md).
//!
//! **Architecture invariant:** the HTTP API is a thin adapter: every data request runs through
//! the same `KvService` handlers as gRPC (validation, routing, forwarding, metrics), so both
//! APIs answer the same input the same way; only the encoding differs.

mod api;
mod cluster;
mod prometheus;

use crate::node::Node;
use crate::security::GatePolicy;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use api::{http_status, MAX_HTTP_BODY_SLACK_BYTES};
pub use prometheus::render_metrics;

/// The status page: one HTML file with its script inline (no external assets).
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the HTTP port on `listener` until `shutdown` fires.
/// `gate` is the client port's: with `--auth-file`, the JSON API needs the same tokens and
/// grants as gRPC (the metrics, health and status routes are open, as etcd's `/metrics` is).
pub async fn serve_http(
    node: Arc<Node>,
    gate: Arc<GatePolicy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, gate))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every route of the HTTP port.
pub fn router(node: Arc<Node>, gate: Arc<GatePolicy>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/kv/get", post(api::get))
        .route("/v1/kv/put", post(api::put))
        .route("/v1/kv/delete", post(api::delete))
        .route("/v1/kv/cas", post(api::cas))
        .fallback(not_found)
        .layer(axum::Extension(gate))
        .with_state(node)
}

type NodeState = axum::extract::State<Arc<Node>>;

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
        .into_response()
}

async fn metrics(axum::extract::State(node): NodeState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render_metrics(&node),
    )
        .into_response()
}

/// Liveness: the process answers HTTP. Nothing else is checked, so a node that is only cut
/// off from its peers is not restarted by an orchestrator for it.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Readiness: the node's Raft groups run, so it can take requests (serving them may still
/// need a quorum). A quorum is deliberately not required: an orchestrator that starts nodes
/// one at a time until each is ready would otherwise never start the second.
async fn readyz(axum::extract::State(node): NodeState) -> Response {
    match node.cp() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    api::error_response(
        tonic::Code::NotFound,
        &format!(
            "no such HTTP endpoint {}: try /metrics, /healthz, /readyz, / (status page), /v1/cluster, or POST /v1/kv/get|put|delete|cas (docs/http-api.md)",
            crate::error::truncate(uri.path(), 200)
        ),
    )
}
