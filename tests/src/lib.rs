//! Shared harness for the workspace integration tests: the turmoil side of the network seam
//! (a `Dialer` and a connection stream over turmoil's simulated TCP) and simulated clusters of
//! real `kv_server::Node`s.

pub mod scenario;

use hyper_util::rt::TokioIo;
use kv_client::net::Dialer;
use kv_client::{Client, ClientConfig};
use kv_server::config::NodeConfig;
use kv_server::node::Node;
use kv_server::storage::memory::MemoryEngine;
use kv_server::types::Member;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Uri};

/// Port every simulated node listens on.
pub const SIM_PORT: u16 = 7000;
/// Wall-clock time at the start of every simulation (2026-01-01), so runs repeat exactly.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;
/// Cluster name of simulated clusters.
pub const SIM_CLUSTER: &str = "sim";

/// A turmoil TCP stream that tonic's server accepts (it needs `Connected`).
pub struct SimStream(pub turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of a turmoil listener, as a stream for `kv_server::server::serve`.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl futures::Stream<Item = Result<SimStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| SimStream(s));
        Some((r, l))
    })
}

/// Dials turmoil's simulated TCP.
#[derive(Debug, Default, Clone)]
pub struct TurmoilDialer;

impl Dialer for TurmoilDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let endpoint = kv_client::net::endpoint_for(addr)?;
        let target = addr.to_string();
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri: Uri| {
                let target = target.clone();
                async move {
                    let stream = turmoil::net::TcpStream::connect(target.as_str()).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            })),
        )
    }
}

/// The members of a simulated cluster of `n` nodes named n1..nN.
pub fn members(n: usize) -> Vec<Member> {
    (1..=n)
        .map(|i| Member {
            id: i as u64,
            name: format!("n{i}"),
            addr: format!("n{i}:{SIM_PORT}"),
        })
        .collect()
}

/// Settings of a simulated cluster.
#[derive(Clone)]
pub struct SimOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Partitions Q (small keeps simulations fast).
    pub partitions: u32,
    /// Adjusts each node's config before it starts.
    pub tweak: Arc<dyn Fn(&mut NodeConfig) + Send + Sync>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            partitions: 8,
            tweak: Arc::new(|_| {}),
        }
    }
}

/// Adds `opts.nodes` node hosts to `sim`. Each node's memory engine lives outside the host
/// closure, so it survives `sim.crash` + `sim.bounce` like a disk would.
pub fn add_nodes(sim: &mut turmoil::Sim<'_>, opts: &SimOptions) -> Vec<Member> {
    let peers = members(opts.nodes);
    for m in &peers {
        let engine = MemoryEngine::new();
        let peers = peers.clone();
        let name = m.name.clone();
        let opts = opts.clone();
        sim.host(m.name.as_str(), move || {
            let engine = engine.clone();
            let peers = peers.clone();
            let name = name.clone();
            let opts = opts.clone();
            async move {
                let mut cfg = NodeConfig::new(&name, SIM_CLUSTER, peers);
                cfg.partitions = opts.partitions;
                (opts.tweak)(&mut cfg);
                let clock = Arc::new(kv_server::clock::TokioClock::new(SIM_EPOCH_MS));
                let node = Node::new(cfg, Arc::new(engine), Arc::new(TurmoilDialer), clock)?;
                node.start_cp(kv_server::cp::CpConfig::default()).await?;
                let _background = node.start_background();
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SIM_PORT)).await?;
                let heartbeats = tokio::spawn(kv_server::server::heartbeat_loop(node.clone()));
                tokio::select! {
                    r = kv_server::server::serve(node, incoming(listener), std::future::pending()) => r?,
                    r = heartbeats => {
                        if let Ok(Err(msg)) = r {
                            return Err(msg.into());
                        }
                    }
                }
                Ok(())
            }
        });
    }
    peers
}

/// A client inside the simulation that talks only to `seeds`.
pub async fn client(seeds: &[&str], timeout: Duration) -> Result<Client, kv_client::Error> {
    let mut cfg = ClientConfig::new(seeds.iter().map(|s| s.to_string()));
    cfg.seeds_only = true;
    cfg.timeout = timeout;
    cfg.dialer = Arc::new(TurmoilDialer);
    Client::connect(cfg).await
}

/// Retries `f` until it succeeds or `deadline` of simulated time passes.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > deadline => {
                panic!("condition not met within {deadline:?}: last error {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
