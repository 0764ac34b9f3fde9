//! TLS on a node's listeners: the PEM files of `--tls-cert/--tls-key/--tls-ca`, the rustls
//! server configurations (the peer port demands a client certificate signed by the cluster CA,
//! the client port only proves the node to its clients), and the accepting side, which runs
//! each handshake off the accept loop and logs every refused one with the peer's address and
//! rustls's reason. The dialing side is `kv_core::net::TlsDialer`.

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one listener; further connections wait to start.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 256;
/// A refused handshake from one address is logged at most once per this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);
/// Most addresses remembered for the refusal log's rate limit.
const MAX_REFUSAL_LOG_ENTRIES: usize = 1024;

/// The PEM files a node's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This node's certificate chain (`--tls-cert`): its SANs must name the node.
    pub cert: PathBuf,
    /// Its private key (`--tls-key`).
    pub key: PathBuf,
    /// The cluster CA's certificate (`--tls-ca`): peers must present certificates it signed.
    pub ca: PathBuf,
}

/// Unusable TLS files, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

/// A node's TLS material, loaded and checked.
#[derive(Clone)]
pub struct NodeTls {
    /// The peer port's configuration (client certificates required).
    pub peer: Arc<ServerConfig>,
    /// The client port's configuration (no client certificate asked).
    pub client: Arc<ServerConfig>,
    /// The PEM texts, for the node's own dialer.
    pub pem: TlsPem,
}

/// The PEM texts of a node's TLS files.
#[derive(Debug, Clone)]
pub struct TlsPem {
    /// Certificate chain.
    pub cert: String,
    /// Private key.
    pub key: String,
    /// CA certificate.
    pub ca: String,
}

fn read(path: &Path, what: &str) -> Result<String, TlsError> {
    std::fs::read_to_string(path)
        .map_err(|e| TlsError(format!("cannot read {what} {}: {e}", path.display())))
}

impl TlsFiles {
    /// Reads the files and builds both server configurations.
    pub fn load(&self) -> Result<NodeTls, TlsError> {
        let pem = TlsPem {
            cert: read(&self.cert, "--tls-cert")?,
            key: read(&self.key, "--tls-key")?,
            ca: read(&self.ca, "--tls-ca")?,
        };
        let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("{}: {e}", self.cert.display())))?;
        if chain.is_empty() {
            return Err(TlsError(format!(
                "{} holds no certificate",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
            .map_err(|e| TlsError(format!("{}: no private key ({e})", self.key.display())))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pem.ca.as_bytes()) {
            let ca = ca.map_err(|e| TlsError(format!("{}: {e}", self.ca.display())))?;
            roots
                .add(ca)
                .map_err(|e| TlsError(format!("{}: {e}", self.ca.display())))?;
        }
        if roots.is_empty() {
            return Err(TlsError(format!(
                "{} holds no CA certificate",
                self.ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", self.ca.display())))?;
        let config = |client_auth: bool| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?;
            let builder = if client_auth {
                builder.with_client_cert_verifier(verifier.clone())
            } else {
                builder.with_no_client_auth()
            };
            let mut cfg = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    TlsError(format!(
                        "{} and {} do not make a usable identity: {e}",
                        self.cert.display(),
                        self.key.display()
                    ))
                })?;
            // gRPC runs over HTTP/2 only.
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            Ok(Arc::new(cfg))
        };
        Ok(NodeTls {
            peer: config(true)?,
            client: config(false)?,
            pem,
        })
    }
}

/// Logs refused handshakes, at most once per `REFUSAL_LOG_PERIOD` per address.
#[derive(Default)]
struct RefusalLog {
    last: Mutex<BTreeMap<IpAddr, Instant>>,
}

impl RefusalLog {
    fn refused(&self, port: &str, remote: Option<std::net::SocketAddr>, reason: &str) {
        let now = Instant::now();
        if let Some(ip) = remote.map(|r| r.ip()) {
            let mut last = self.last.lock().expect("refusal log lock");
            if last
                .get(&ip)
                .is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_PERIOD)
            {
                return;
            }
            if last.len() >= MAX_REFUSAL_LOG_ENTRIES {
                last.clear();
            }
            last.insert(ip, now);
        }
        let remote = remote.map_or("an unknown address".to_string(), |r| r.to_string());
        tracing::warn!(
            port,
            %remote,
            "refused a TLS connection from {remote} on the {port} port: {reason}"
        );
    }
}

/// The TLS connections of `incoming`, each handshake run in its own task (a slow client holds
/// up nobody) within `HANDSHAKE_TIMEOUT`; refused ones are logged and dropped. `port` names the
/// listener in the log ("peer" or "client").
pub fn tls_incoming(
    mut incoming: TcpIncoming,
    config: Arc<ServerConfig>,
    port: &'static str,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES_IN_FLIGHT);
    let acceptor = TlsAcceptor::from(config);
    let log = Arc::new(RefusalLog::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let tcp = match conn {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::warn!(port, "accepting a connection failed: {e}");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (acceptor, sender, log) = (acceptor.clone(), tx.clone(), log.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let remote = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => log.refused(port, remote, &e.to_string()),
                    Err(_) => log.refused(
                        port,
                        remote,
                        &format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                    ),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}
