//! The HTTP port of each local node (`kv server --http-listen`: metrics, health, status page,
//! JSON API). Unlike the gRPC address it is not part of the cluster's identity (no peer dials
//! it), so a node whose recorded HTTP port is taken when it starts simply gets a new one.

use super::{process, LocalNode};
use anyhow::Result;

/// Gives `node` an HTTP address that is free right now: its recorded one when still free,
/// else a new free port that is none of the cluster's gRPC ports `avoid` (recorded by the
/// caller's save of `cluster.json`).
pub fn ensure_http_port(
    node: &mut LocalNode,
    avoid: &[u16],
    progress: &dyn Fn(&str),
) -> Result<()> {
    if let Some(addr) = &node.http_addr {
        if process::port_free(addr) {
            return Ok(());
        }
        progress(&format!(
            "{}: HTTP port {addr} is in use; picking another",
            node.name
        ));
    }
    node.http_addr = Some(format!(
        "127.0.0.1:{}",
        process::pick_free_port_avoiding(avoid)?
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(http_addr: Option<String>) -> LocalNode {
        LocalNode {
            name: "n1".into(),
            addr: "127.0.0.1:1".into(),
            peer_addr: None,
            pid: None,
            start_ticks: None,
            http_addr,
        }
    }

    #[test]
    fn a_node_without_or_with_a_busy_http_port_gets_a_free_one() {
        let mut n = node(None);
        ensure_http_port(&mut n, &[], &|_| {}).unwrap();
        let first = n.http_addr.clone().unwrap();
        assert!(process::port_free(&first), "{first}");
        ensure_http_port(&mut n, &[], &|_| {}).unwrap();
        assert_eq!(
            n.http_addr.as_deref(),
            Some(first.as_str()),
            "kept when free"
        );
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut n = node(Some(busy.local_addr().unwrap().to_string()));
        ensure_http_port(&mut n, &[], &|_| {}).unwrap();
        assert_ne!(n.http_addr, Some(busy.local_addr().unwrap().to_string()));
    }
}
