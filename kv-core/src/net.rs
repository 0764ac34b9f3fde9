//! The client side of the network seam: every outgoing gRPC connection (client to node, and node
//! to node) is made by a `Dialer`, so the same code runs on real TCP and inside turmoil.

use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive ping interval. Keep-alive is what lets a pooled connection notice a dead
/// link and reconnect after a partition heals (turmoil never retransmits, so without it a connection stays dead after a heal).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// How long to wait for a keep-alive ping's answer before the connection is declared dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Makes lazy gRPC channels to `host:port` addresses.
pub trait Dialer: Send + Sync + 'static {
    /// A channel to `addr` ("host:port"); connects on first use.
    fn channel(&self, addr: &str) -> Result<Channel, String>;

    /// A channel to the peer port `addr` of node `name`: a TLS dialer checks that the node's
    /// certificate names `name`, so one node cannot answer for another.
    fn peer_channel(&self, name: &str, addr: &str) -> Result<Channel, String> {
        let _ = name;
        self.channel(addr)
    }
}

impl Dialer for std::sync::Arc<dyn Dialer> {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        (**self).channel(addr)
    }

    fn peer_channel(&self, name: &str, addr: &str) -> Result<Channel, String> {
        (**self).peer_channel(name, addr)
    }
}

/// Applies the settings every kv connection uses, whatever carries it.
pub fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
}

/// Parses "host:port" into an endpoint, with a clear error for anything else.
pub fn endpoint_for(addr: &str) -> Result<Endpoint, String> {
    validate_addr(addr)?;
    Endpoint::from_shared(format!("http://{addr}"))
        .map(configure)
        .map_err(|e| format!("malformed address {addr:?}: {e}"))
}

/// Checks that `addr` looks like "host:port" with a numeric port.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "malformed address {addr:?}: expected host:port, e.g. 127.0.0.1:7001"
        ));
    };
    if host.is_empty() || addr.contains("://") || addr.contains('/') {
        return Err(format!(
            "malformed address {addr:?}: expected host:port without a scheme, e.g. 127.0.0.1:7001"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "malformed address {addr:?}: port {port:?} is not a number in 1..=65535"
        )),
    }
}

/// Dials real TCP.
#[derive(Debug, Default, Clone)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        Ok(endpoint_for(addr)?.connect_lazy())
    }
}

/// Dials real TCP with TLS: verifies nodes against one CA and, for node-to-node traffic,
/// presents this node's certificate (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsDialer {
    ca: Certificate,
    identity: Option<Identity>,
}

impl TlsDialer {
    /// Trusts the CA certificate `ca_pem`; presents `identity` (certificate and key, PEM) when
    /// given.
    pub fn new(ca_pem: &str, identity: Option<(&str, &str)>) -> Self {
        Self {
            ca: Certificate::from_pem(ca_pem),
            identity: identity.map(|(cert, key)| Identity::from_pem(cert, key)),
        }
    }

    fn endpoint(&self, addr: &str, name: Option<&str>) -> Result<Endpoint, String> {
        validate_addr(addr)?;
        let mut tls = ClientTlsConfig::new().ca_certificate(self.ca.clone());
        if let Some(identity) = &self.identity {
            tls = tls.identity(identity.clone());
        }
        if let Some(name) = name {
            tls = tls.domain_name(name);
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(tls))
            .map(configure)
            .map_err(|e| format!("TLS endpoint for {addr}: {e}"))
    }
}

impl Dialer for TlsDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        Ok(self.endpoint(addr, None)?.connect_lazy())
    }

    fn peer_channel(&self, name: &str, addr: &str) -> Result<Channel, String> {
        Ok(self.endpoint(addr, Some(name))?.connect_lazy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        for bad in [
            "",
            "localhost",
            "http://a:1",
            "a:0",
            "a:99999",
            ":7001",
            "a:port",
        ] {
            let err = validate_addr(bad).unwrap_err();
            assert!(err.contains("malformed address"), "{bad}: {err}");
        }
        validate_addr("127.0.0.1:7001").unwrap();
        validate_addr("[::1]:7001").unwrap();
    }
}
