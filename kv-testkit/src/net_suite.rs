//! The network conformance suite: what every carrier of kv's network seam (a `Dialer` on the
//! client side, a stream of accepted connections on the server side) must do, written once and
//! run on real TCP (`kv_core::net::TcpDialer` + a TCP listener, through a proxy that can cut the
//! link: `crate::tcp_proxy::TcpNet`) and on turmoil (`crate::sim::TurmoilDialer` +
//! `crate::sim::incoming`: [`run_on_turmoil`]).
//!
//! The server side is a small echo service behind the internal gRPC API (`Internal.Raft` sends
//! its payload back, `Internal.ApWrite` is accepted, the batch calls are UNIMPLEMENTED as on a
//! build from before them), so the cases test the carrier, not a node. Every call has a deadline; a
//! case fails rather than hang.

use crate::sim::{incoming, TurmoilDialer, SIM_PORT};
use kv_core::limits::{DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES};
use kv_core::net::{Dialer, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
use kv_proto::internal as ipb;
use kv_proto::internal::internal_client::InternalClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

/// Deadline of an ordinary call in the suite.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a call made while the link is cut, and of each attempt after the heal.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts after a heal (attempts fail fast while the channel reconnects).
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Latest a call may succeed after a heal: keep-alive must have declared the old connection
/// dead (one interval plus its timeout) and a new one must be dialed, plus scheduling slack.
pub const RECOVERY_MAX: Duration = Duration::from_millis(
    (KEEP_ALIVE_INTERVAL.as_millis() + KEEP_ALIVE_TIMEOUT.as_millis() + CONNECT_TIMEOUT.as_millis())
        as u64
        + 3_000,
);
/// Size of the large message: the largest value plus the largest key.
pub const LARGE_MESSAGE_BYTES: usize = DEFAULT_MAX_VALUE_BYTES + MAX_KEY_BYTES;
/// Concurrent calls multiplexed on one channel in the round-trip case.
pub const CONCURRENT_CALLS: usize = 16;

/// A network under test, seen from the client's host.
pub trait NetUnderTest: Send + Sync {
    /// The dialer of this network.
    fn dialer(&self) -> Arc<dyn Dialer>;
    /// "host:port" of the echo server.
    fn echo_addr(&self) -> String;
    /// "host:port" where nothing listens.
    fn refused_addr(&self) -> String;
    /// Cuts the link between client and echo server: packets on it are lost until the heal,
    /// and a connection that was open across the cut may never deliver again (the TCP harness
    /// makes sure it does not; a turmoil partition leaves it usable).
    fn cut(&self);
    /// Restores the link for new connections.
    fn heal(&self);
}

/// The echo side of the suite: `Raft` answers with its payload, `Handshake` with the cluster
/// name it was sent; everything else is unimplemented.
#[derive(Debug, Default, Clone)]
pub struct EchoService;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the echo server serves Raft and Handshake only",
    ))
}

#[tonic::async_trait]
impl ipb::internal_server::Internal for EchoService {
    async fn handshake(
        &self,
        request: Request<ipb::HandshakeRequest>,
    ) -> Result<Response<ipb::HandshakeResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(ipb::HandshakeResponse {
            cluster_name: r.cluster_name,
            node_id: r.node_id,
        }))
    }
    async fn raft(
        &self,
        request: Request<ipb::RaftRequest>,
    ) -> Result<Response<ipb::RaftResponse>, Status> {
        Ok(Response::new(ipb::RaftResponse {
            payload: request.into_inner().payload,
        }))
    }
    async fn raft_batch(
        &self,
        _: Request<ipb::RaftBatchRequest>,
    ) -> Result<Response<ipb::RaftBatchResponse>, Status> {
        unimplemented()
    }
    async fn ap_write(
        &self,
        _: Request<ipb::ApWriteRequest>,
    ) -> Result<Response<ipb::ApWriteResponse>, Status> {
        // Accepted and dropped: a peer that knows single AP writes but not their batches.
        Ok(Response::new(ipb::ApWriteResponse {}))
    }
    async fn ap_write_batch(
        &self,
        _: Request<ipb::ApWriteBatchRequest>,
    ) -> Result<Response<ipb::ApWriteBatchResponse>, Status> {
        unimplemented()
    }
    async fn ap_read(
        &self,
        _: Request<ipb::ApReadRequest>,
    ) -> Result<Response<ipb::ApReadResponse>, Status> {
        unimplemented()
    }
    async fn merkle_tree(
        &self,
        _: Request<ipb::MerkleTreeRequest>,
    ) -> Result<Response<ipb::MerkleTreeResponse>, Status> {
        unimplemented()
    }
    async fn merkle_range(
        &self,
        _: Request<ipb::MerkleRangeRequest>,
    ) -> Result<Response<ipb::MerkleRangeResponse>, Status> {
        unimplemented()
    }
    async fn gossip(
        &self,
        _: Request<ipb::GossipPacket>,
    ) -> Result<Response<ipb::GossipAck>, Status> {
        unimplemented()
    }
    async fn chaos(
        &self,
        _: Request<ipb::ChaosRequest>,
    ) -> Result<Response<ipb::ChaosResponse>, Status> {
        unimplemented()
    }
    async fn cp_record(
        &self,
        _: Request<ipb::CpRecordRequest>,
    ) -> Result<Response<ipb::CpRecordResponse>, Status> {
        unimplemented()
    }
}

/// Serves the echo service on `incoming` with the keep-alive settings nodes use, until
/// `shutdown` fires.
pub async fn serve_echo<I, IO, IE>(
    incoming: I,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Server::builder()
        .http2_keepalive_interval(Some(KEEP_ALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEP_ALIVE_TIMEOUT))
        .add_service(ipb::internal_server::InternalServer::new(EchoService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// One echo call bounded by `timeout` (also sent as the gRPC deadline).
pub async fn echo(
    client: &mut InternalClient<Channel>,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Status> {
    let mut req = Request::new(ipb::RaftRequest {
        group: 0,
        kind: 0,
        payload,
    });
    req.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.raft(req)).await {
        Ok(answer) => answer.map(|r| r.into_inner().payload),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

fn client(net: &dyn NetUnderTest, addr: &str) -> InternalClient<Channel> {
    let channel = net
        .dialer()
        .channel(addr)
        .unwrap_or_else(|e| panic!("dialing {addr}: {e}"));
    InternalClient::new(channel)
}

/// A payload whose bytes depend on `seed` and position, so a mixed-up answer is noticed.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// A call goes there and back; concurrent calls on one channel each get their own answer.
pub async fn round_trip(net: &dyn NetUnderTest) {
    let mut c = client(net, &net.echo_addr());
    let answer = echo(&mut c, b"ping".to_vec(), CALL_TIMEOUT).await;
    assert_eq!(answer.expect("echo"), b"ping".to_vec());
    let calls = (0..CONCURRENT_CALLS).map(|i| {
        let mut c = c.clone();
        async move {
            let sent = payload(i as u8, 64 + i);
            let got = echo(&mut c, sent.clone(), CALL_TIMEOUT).await;
            (sent, got)
        }
    });
    for (sent, got) in futures::future::join_all(calls).await {
        assert_eq!(got.expect("concurrent echo"), sent, "answers mixed up");
    }
    let hs = c
        .handshake(ipb::HandshakeRequest {
            cluster_name: "suite".into(),
            node_id: 7,
            peers: vec![],
        })
        .await
        .expect("handshake");
    assert_eq!(hs.into_inner().cluster_name, "suite");
}

/// A message as large as the largest value plus the largest key arrives whole, both ways.
pub async fn large_message(net: &dyn NetUnderTest) {
    let mut c = client(net, &net.echo_addr());
    let sent = payload(9, LARGE_MESSAGE_BYTES);
    let got = echo(&mut c, sent.clone(), CALL_TIMEOUT)
        .await
        .expect("large echo");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the large message came back altered");
}

/// Dialing an address where nothing listens fails fast, as a connect failure (so a client
/// knows the request was not sent and may retry even a write).
pub async fn refused_is_a_connect_failure(net: &dyn NetUnderTest) {
    let mut c = client(net, &net.refused_addr());
    let started = Instant::now();
    let status = echo(&mut c, b"anyone?".to_vec(), CALL_TIMEOUT)
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(
        kv_core::headers::is_connect_failure(&status),
        "not classified as a connect failure: {:?} {}",
        status.code(),
        kv_core::headers::describe(&status)
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(
        took <= CONNECT_TIMEOUT + Duration::from_secs(1),
        "a refused dial took {took:?}"
    );
}

/// A malformed address is refused by the dialer itself, naming the problem.
pub async fn malformed_address_is_refused(net: &dyn NetUnderTest) {
    for bad in ["no-port", "http://host:1", "host:0"] {
        let err = net
            .dialer()
            .channel(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        assert!(err.contains("malformed address"), "{bad}: {err}");
    }
}

/// While the link is cut a call fails by its deadline (never hangs); after the heal the same
/// channel recovers within `RECOVERY_MAX` — which needs HTTP/2 keep-alive, since the
/// connection that crossed the cut never delivers again.
pub async fn recovers_after_heal(net: &dyn NetUnderTest) {
    let mut c = client(net, &net.echo_addr());
    echo(&mut c, b"before".to_vec(), CALL_TIMEOUT)
        .await
        .expect("echo before the cut");
    net.cut();
    let started = Instant::now();
    let during = echo(&mut c, b"during".to_vec(), PROBE_TIMEOUT).await;
    let took = started.elapsed();
    assert!(during.is_err(), "a call crossed a cut link");
    assert!(
        took <= PROBE_TIMEOUT + Duration::from_secs(1),
        "a call on a cut link took {took:?}"
    );
    net.heal();
    let healed = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match echo(&mut c, b"after".to_vec(), PROBE_TIMEOUT).await {
            Ok(answer) => {
                assert_eq!(answer, b"after".to_vec());
                break;
            }
            Err(status) => assert!(
                healed.elapsed() <= RECOVERY_MAX,
                "no answer {:?} after the heal ({attempts} attempts); last: {}",
                healed.elapsed(),
                kv_core::headers::describe(&status)
            ),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Host name of the echo server in turmoil runs.
pub const TURMOIL_SERVER: &str = "echo";
/// Host name of the client in turmoil runs.
pub const TURMOIL_CLIENT: &str = "client";
/// Port on the echo host where nothing listens.
pub const TURMOIL_REFUSED_PORT: u16 = SIM_PORT + 1;

/// The turmoil network, seen from the client host of [`run_on_turmoil`].
#[derive(Debug, Default, Clone)]
pub struct TurmoilNet;

impl NetUnderTest for TurmoilNet {
    fn dialer(&self) -> Arc<dyn Dialer> {
        Arc::new(TurmoilDialer)
    }
    fn echo_addr(&self) -> String {
        format!("{TURMOIL_SERVER}:{SIM_PORT}")
    }
    fn refused_addr(&self) -> String {
        format!("{TURMOIL_SERVER}:{TURMOIL_REFUSED_PORT}")
    }
    fn cut(&self) {
        turmoil::partition(TURMOIL_CLIENT, TURMOIL_SERVER);
    }
    fn heal(&self) {
        turmoil::repair(TURMOIL_CLIENT, TURMOIL_SERVER);
    }
}

/// Runs `case` on a client host of a turmoil simulation (seeded with `seed`) whose echo host
/// serves the echo service through `sim::incoming`.
pub fn run_on_turmoil<F, Fut>(seed: u64, case: F)
where
    F: FnOnce(TurmoilNet) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(seed)
        .build();
    sim.host(TURMOIL_SERVER, || async {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SIM_PORT)).await?;
        serve_echo(incoming(listener), std::future::pending()).await?;
        Ok(())
    });
    sim.client(TURMOIL_CLIENT, async move {
        case(TurmoilNet).await;
        Ok(())
    });
    if let Err(e) = sim.run() {
        panic!("simulation failed (reproduce with seed {seed}): {e}");
    }
}
