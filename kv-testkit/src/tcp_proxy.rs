//! `TcpNet`: real TCP on loopback for the network conformance suite — an echo server on a TCP
//! listener (accepted as kv's server accepts: `TcpListenerStream`) reached through a proxy that
//! can cut the link. A cut parks every connection it catches: their sockets stay open and
//! nothing is forwarded or closed, so neither end ever hears of it (a dropped link, a silent
//! middlebox); connections that crossed a cut stay dead after the heal, as on turmoil, and only
//! keep-alive can tell a client to dial again. Ports are chosen at run time.

use crate::net_suite::{serve_echo, NetUnderTest};
use kv_core::net::{Dialer, TcpDialer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// Loopback TCP with an echo server behind a cuttable proxy. Dropping it stops both.
pub struct TcpNet {
    dialer: Arc<dyn Dialer>,
    proxy: SocketAddr,
    refused: SocketAddr,
    cut: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpNet {
    /// Starts the echo server and the proxy on free loopback ports (call inside a runtime).
    pub async fn start() -> std::io::Result<TcpNet> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let server_addr = server.local_addr()?;
        let serve = tokio::spawn(async move {
            if let Err(e) = serve_echo(TcpListenerStream::new(server), std::future::pending()).await
            {
                panic!("echo server failed: {e}");
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await?;
        let proxy_addr = proxy.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let parked = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = proxy.accept().await {
                tokio::spawn(forward(conn, server_addr, cut_rx.clone(), parked.clone()));
            }
        });
        // A port that was free a moment ago and is closed again: connecting is refused.
        let refused = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        Ok(TcpNet {
            dialer: Arc::new(TcpDialer),
            proxy: proxy_addr,
            refused,
            cut,
            tasks: vec![serve, accept],
        })
    }
}

impl TcpNet {
    /// The same network dialed by `dialer` instead of `TcpDialer` (to show that a dialer
    /// lacking kv's settings fails the suite).
    pub fn with_dialer(mut self, dialer: Arc<dyn Dialer>) -> TcpNet {
        self.dialer = dialer;
        self
    }
}

impl Drop for TcpNet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Forwards one proxied connection until the link is cut, then parks both sockets.
async fn forward(
    mut client: TcpStream,
    server: SocketAddr,
    mut cut: watch::Receiver<bool>,
    parked: Arc<Mutex<Vec<TcpStream>>>,
) {
    let park = |s: TcpStream| parked.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    if *cut.borrow() {
        park(client);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(server).await else {
        // Dropping the client's socket tells it the dial failed, as the server would.
        return;
    };
    // Nagle would add delayed-ACK stalls to every small gRPC frame.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.wait_for(|c| *c) => {
            park(client);
            park(upstream);
        }
    }
}

impl NetUnderTest for TcpNet {
    fn dialer(&self) -> Arc<dyn Dialer> {
        self.dialer.clone()
    }
    fn echo_addr(&self) -> String {
        self.proxy.to_string()
    }
    fn refused_addr(&self) -> String {
        self.refused.to_string()
    }
    fn cut(&self) {
        self.cut.send_replace(true);
    }
    fn heal(&self) {
        self.cut.send_replace(false);
    }
}
