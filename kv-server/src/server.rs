//! Starting a node: the server side of the network seam (`serve` takes any stream of
//! connections: real TCP or turmoil's; `serve_tcp` is the real-TCP case), gRPC reflection, and
//! the heartbeat task that checks peers' liveness and cluster identity.

use crate::node::Node;
use crate::service::{InternalService, KvService};
use kv_proto::internal as ipb;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::transport::Server;

/// Serves the public and internal APIs (plus reflection) on `incoming` until `shutdown` fires.
pub async fn serve<I, IO, IE>(
    node: Arc<Node>,
    incoming: I,
    shutdown: impl Future<Output = ()>,
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

/// Serves the public and internal APIs on a bound TCP listener until `shutdown` fires, with
/// TCP_NODELAY on every accepted connection.
pub async fn serve_tcp(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve(node, tcp_incoming(listener), shutdown).await
}

/// The connections `listener` accepts, with Nagle's algorithm off. tonic sets TCP_NODELAY only
/// on listeners it binds itself; without it a lone request waits for the peer's delayed ACK
/// (p99 of 40 ms where p50 is 1 ms, see NOTES.md). A failure to set it is logged by tonic and
/// the connection kept.
fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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
            .filter(|m| m.id != node.me.id && !node.links.faults().drops(m.id))
            .map(|m| m.id)
            .collect();
        let calls = peers.into_iter().map(|id| {
            let node = node.clone();
            async move {
                // Heartbeats are never delayed by fault injection (only dropped, above), so
                // they take the channel directly rather than through `PeerLinks::open`.
                let channel = node.links.channel(id).map_err(|e| e.to_string())?;
                let mut client = ipb::internal_client::InternalClient::new(channel);
                let mut req = tonic::Request::new(ipb::HandshakeRequest {
                    cluster_name: node.config.cluster_name.clone(),
                    node_id: node.me.id,
                    peers: node.config.peer_strings(),
                });
                req.set_timeout(HEARTBEAT_TIMEOUT);
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.handshake(req)).await {
                    Ok(Ok(_)) => {
                        node.links.membership().heard_from(id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::NodeConfig;
    use crate::storage::memory::MemoryEngine;
    use crate::types::Member;
    use kv_core::net::{Dialer, TcpDialer};
    use kv_proto::v1::kv_client::KvClient;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    /// Generous bound on anything these tests wait for on loopback.
    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tcp_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = tokio::time::timeout(WAIT, incoming.next())
            .await
            .expect("a connection is accepted")
            .expect("the stream is open")
            .expect("accept succeeds");
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on accepted sockets"
        );
    }

    #[tokio::test]
    async fn serve_tcp_answers_on_the_listener_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peers = vec![Member {
            id: 1,
            name: "n1".into(),
            addr: addr.clone(),
        }];
        let node = Node::new(
            NodeConfig::new("n1", "c", peers),
            Arc::new(MemoryEngine::new()),
            Arc::new(TcpDialer),
            Arc::new(SystemClock::default()),
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tcp(node, listener, async {
            let _ = stopped.await;
        }));
        let mut client = KvClient::new(TcpDialer.channel(&addr).unwrap());
        let mut req = tonic::Request::new(kv_proto::v1::RingRequest {});
        req.set_timeout(WAIT);
        let ring = client
            .ring(req)
            .await
            .expect("the node answers")
            .into_inner();
        assert_eq!(ring.cluster_name, "c");
        assert_eq!(ring.members.len(), 1);
        drop(client);
        stop.send(()).unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
