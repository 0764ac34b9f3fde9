//! The turmoil side of the network seam (a `Dialer` and a connection stream over turmoil's
//! simulated TCP) and simulated clusters of real `kv_server::Node`s, for simulation tests and the
//! scenario runner.

use crate::disk::{SimDisk, SimEngine};
use hyper_util::rt::TokioIo;
use kv_client::{Client, ClientConfig};
use kv_core::net::Dialer;
use kv_server::config::NodeConfig;
use kv_server::node::Node;
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

/// How long a simulated client's HTTP/2 connection remembers a stream it reset: longer than
/// any simulation runs in real time (see `TurmoilDialer::channel`).
const RESET_STREAM_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Dials turmoil's simulated TCP.
#[derive(Debug, Default, Clone)]
pub struct TurmoilDialer;

impl Dialer for TurmoilDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        // h2 forgets a stream the client reset (a timed-out call) after `reset_stream_duration`
        // of *real* time (std `Instant`), and answers a late frame for a forgotten stream with
        // an extra RST_STREAM: one more simulated message, which shifts every later latency
        // draw, so how fast the machine ran the simulation changed its history. Remembering
        // resets for longer than any simulation leaves only h2's count bound, which is
        // deterministic.
        let endpoint =
            kv_core::net::endpoint_for(addr)?.http2_reset_stream_duration(RESET_STREAM_MEMORY);
        let target = addr.to_string();
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri: Uri| {
                let target = target.clone();
                async move {
                    let stream = turmoil::net::TcpStream::connect(target.as_str())
                        .await
                        .map_err(|e| {
                            // turmoil's refusal reads as a bare address; say what failed, as a
                            // real TCP dial does, so `is_connect_failure` reads both alike.
                            std::io::Error::new(
                                e.kind(),
                                format!("tcp connect error: {e} ({})", e.kind()),
                            )
                        })?;
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
            peer_addr: format!("n{i}:{SIM_PORT}"),
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
    /// Seed of the CP engines' election timeouts (None: OS randomness).
    pub cp_rng_seed: Option<u64>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            partitions: 8,
            tweak: Arc::new(|_| {}),
            cp_rng_seed: None,
        }
    }
}

/// Adds `opts.nodes` node hosts to `sim`, each on its own simulated disk that survives
/// `sim.crash` + `sim.bounce` like a disk would.
pub fn add_nodes(sim: &mut turmoil::Sim<'_>, opts: &SimOptions) -> Vec<Member> {
    add_nodes_on(sim, opts, &SimDisks::default())
}

/// Like `add_nodes`, but every node's CP engine draws its election timeouts from `cp_rng_seed`
/// (mixed with node and group ids), so with `Builder::rng_seed` the whole run repeats.
pub fn add_seeded_nodes(
    sim: &mut turmoil::Sim<'_>,
    opts: &SimOptions,
    cp_rng_seed: u64,
) -> Vec<Member> {
    let opts = SimOptions {
        cp_rng_seed: Some(cp_rng_seed),
        ..opts.clone()
    };
    seed_client_ids(cp_rng_seed);
    add_nodes_on(sim, &opts, &SimDisks::default())
}

thread_local! {
    /// State of the generator of client ids ([`client`]): the simulation runs its hosts on
    /// the thread that builds it, so a thread-local seeded per simulation repeats per seed.
    static CLIENT_IDS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes [`client`] draw client ids from `seed` on this thread (until the next call): without
/// it each client draws a random id, and its varint-encoded size changes message sizes, so
/// runs of one seed drift apart.
pub fn seed_client_ids(seed: u64) {
    CLIENT_IDS.with(|c| c.set(Some(seed ^ 0x6b76_5f63_6c69_656e)));
}

/// The next client id of this thread's seeded sequence (splitmix64), if seeded.
fn next_client_id() -> Option<u64> {
    CLIENT_IDS.with(|c| {
        let state = c.get()?.wrapping_add(0x9E37_79B9_7F4A_7C15);
        c.set(Some(state));
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Some((z ^ (z >> 31)).max(1))
    })
}

/// A client inside the simulation that talks only to `seeds`.
pub async fn client(seeds: &[&str], timeout: Duration) -> Result<Client, kv_client::Error> {
    let mut cfg = ClientConfig::new(seeds.iter().map(|s| s.to_string()));
    cfg.seeds_only = true;
    cfg.timeout = timeout;
    cfg.dialer = Arc::new(TurmoilDialer);
    cfg.client_id = next_client_id();
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

// ---- Helpers of the AP simulations (`tests/sim_ap.rs`) ----

/// The disks of a simulation's nodes, kept outside the host closures so they survive
/// `crash` + `bounce`. Each is a [`SimDisk`]: a node that restarts first loses every write it
/// had not flushed (a power loss at the crash), so the simulations check durability, not only
/// recovery; `wipe` followed by `sim.crash` + `sim.bounce` restarts a node on an empty disk.
/// Cloning shares the disks.
#[derive(Clone, Default)]
pub struct SimDisks(Arc<std::sync::Mutex<std::collections::BTreeMap<String, (SimDisk, bool)>>>);

impl SimDisks {
    /// Mounts node `name`'s disk (created empty on first use); every mount after the first is
    /// a restart, so the disk first loses what was not flushed.
    pub fn engine(&self, name: &str) -> SimEngine {
        let mut disks = self.0.lock().expect("disks lock");
        let (disk, mounted) = disks
            .entry(name.to_string())
            .or_insert_with(|| (SimDisk::new(&format!("simdisk:{name}")), false));
        if *mounted {
            disk.crash();
        }
        *mounted = true;
        disk.open()
    }

    /// Replaces node `name`'s disk with an empty one, used from its next (re)start.
    pub fn wipe(&self, name: &str) {
        self.0.lock().expect("disks lock").insert(
            name.to_string(),
            (SimDisk::new(&format!("simdisk:{name}")), false),
        );
    }

    /// Node `name`'s disk statistics (flushes, crashes, writes lost in the last crash).
    pub fn stats(&self, name: &str) -> Option<crate::disk::DiskStats> {
        let disks = self.0.lock().expect("disks lock");
        disks.get(name).map(|(disk, _)| disk.stats())
    }
}

/// Adds `opts.nodes` node hosts to `sim`; each node (re)starts on the engine `disks` holds for
/// it, and a restarted node's wall clock continues from the simulation's elapsed time.
pub fn add_nodes_on(
    sim: &mut turmoil::Sim<'_>,
    opts: &SimOptions,
    disks: &SimDisks,
) -> Vec<Member> {
    let peers = members(opts.nodes);
    for m in &peers {
        let peers = peers.clone();
        let name = m.name.clone();
        let opts = opts.clone();
        let disks = disks.clone();
        sim.host(m.name.as_str(), move || {
            let engine = disks.engine(&name);
            let peers = peers.clone();
            let name = name.clone();
            let opts = opts.clone();
            async move {
                let mut cfg = NodeConfig::new(&name, SIM_CLUSTER, peers);
                cfg.partitions = opts.partitions;
                (opts.tweak)(&mut cfg);
                let elapsed_ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
                let clock = Arc::new(kv_server::clock::TokioClock::new(SIM_EPOCH_MS + elapsed_ms));
                let node = Node::new(cfg, Arc::new(engine), Arc::new(TurmoilDialer), clock)?;
                let cp = kv_server::cp::CpConfig {
                    rng_seed: opts.cp_rng_seed,
                    ..Default::default()
                };
                node.start_cp(cp).await?;
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

/// Internal-API clients to every node of a simulation, for reading replicas directly (the
/// `ApRead` call reads one node's copy and repairs nothing).
pub struct ReplicaReader {
    clients: std::collections::BTreeMap<
        String,
        kv_proto::internal::internal_client::InternalClient<Channel>,
    >,
    timeout: Duration,
}

impl ReplicaReader {
    /// Clients to `addrs`, each call bounded by `timeout`.
    pub fn new(addrs: &[String], timeout: Duration) -> Self {
        let clients = addrs
            .iter()
            .map(|a| {
                let ch = TurmoilDialer.channel(a).expect("valid simulated address");
                (
                    a.clone(),
                    kv_proto::internal::internal_client::InternalClient::new(ch),
                )
            })
            .collect();
        Self { clients, timeout }
    }

    /// Node `addr`'s record of `key` in keyspace `keyspace_id` (tombstones included).
    pub async fn read(
        &self,
        addr: &str,
        keyspace_id: u32,
        key: &[u8],
    ) -> Result<Option<kv_proto::internal::Record>, String> {
        let mut client = self
            .clients
            .get(addr)
            .unwrap_or_else(|| panic!("no client for {addr}"))
            .clone();
        let mut req = tonic::Request::new(kv_proto::internal::ApReadRequest {
            keyspace: keyspace_id.to_string(),
            key: key.to_vec(),
        });
        req.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.ap_read(req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().record),
            Ok(Err(status)) => Err(format!("{addr}: {}", status.message())),
            Err(_) => Err(format!("{addr}: no answer within {:?}", self.timeout)),
        }
    }
}

/// Waits until node `observer` sees node `node` in `state`.
pub async fn wait_node_state(
    c: &Client,
    observer: &str,
    node: &str,
    state: kv_proto::v1::NodeState,
    deadline: Duration,
) {
    eventually(deadline, || async {
        let status = c.status(Some(observer)).await.map_err(|e| e.to_string())?;
        let seen = status
            .nodes
            .iter()
            .find(|n| n.name == node)
            .unwrap_or_else(|| panic!("{node} missing from {observer}'s status"));
        if seen.state == state as i32 {
            Ok(())
        } else {
            Err(format!(
                "{observer} sees {node} as {:?}",
                kv_proto::v1::NodeState::try_from(seen.state)
            ))
        }
    })
    .await
}

/// Hints node `holder` holds, per intended owner's name (as its `ClusterStatus` reports them).
pub async fn hints_held(
    c: &Client,
    holder: &str,
) -> Result<std::collections::BTreeMap<String, u64>, kv_client::Error> {
    let status = c.status(Some(holder)).await?;
    Ok(status
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.hints_pending))
        .collect())
}
