//! Starting a node: the server side of the network seam (`serve` takes any stream of
//! connections: real TCP or turmoil's), gRPC reflection, and the heartbeat task that checks
//! peers' liveness and cluster identity.

use crate::node::Node;
use crate::service::{InternalService, KvService};
use kv_proto::internal as ipb;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::Server;

/// Serves the public and internal APIs (plus reflection) on `incoming` until `shutdown` fires.
pub async fn serve<I, IO, IE>(
    node: Arc<Node>,
    incoming: I,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    Server::builder()
        .http2_keepalive_interval(Some(kv_core::net::KEEP_ALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(kv_core::net::KEEP_ALIVE_TIMEOUT))
        .add_service(kv_proto::v1::kv_server::KvServer::new(KvService::new(
            node.clone(),
        )))
        .add_service(ipb::internal_server::InternalServer::new(
            InternalService::new(node),
        ))
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Heartbeats every peer forever. Returns an error only when a peer refuses this node's
/// identity (different cluster name or peer list): the node must not join that cluster.
pub async fn heartbeat_loop(node: Arc<Node>) -> Result<(), String> {
    use crate::membership::{HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT};
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let peers: Vec<_> = node
            .config
            .peers
            .iter()
            .filter(|m| m.id != node.me.id && !node.faults.drops(m.id))
            .map(|m| m.id)
            .collect();
        let calls = peers.into_iter().map(|id| {
            let node = node.clone();
            async move {
                let mut client = node.internal_client(id).map_err(|e| e.to_string())?;
                let mut req = tonic::Request::new(ipb::HandshakeRequest {
                    cluster_name: node.config.cluster_name.clone(),
                    node_id: node.me.id,
                    peers: node.config.peer_strings(),
                });
                req.set_timeout(HEARTBEAT_TIMEOUT);
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.handshake(req)).await {
                    Ok(Ok(_)) => {
                        node.membership.heard_from(id);
                        Ok(())
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => Err(format!(
                        "node {} refused this node: {}",
                        node.describe(id),
                        s.message()
                    )),
                    _ => Ok(()),
                }
            }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
    }
}
