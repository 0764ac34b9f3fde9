//! gRPC metadata names that client and node agree on, and how to read a failed dial.

use tonic::Status;

/// Metadata key a node sets on every status it sends, naming itself.
pub const NODE_HEADER: &str = "kv-node";
/// Metadata key holding the leader's address on an `ABORTED` (not leader) status.
pub const LEADER_HEADER: &str = "kv-leader";

/// A status's message followed by each distinct cause in its source chain.
pub fn describe(status: &Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        // Transport errors repeat their cause's text at every level; keep each part once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// True when a status says the connection could not be made (so the request was not sent).
pub fn is_connect_failure(status: &Status) -> bool {
    // tonic reports a failed dial as Unavailable whose source chain is a connect error.
    // A dial that times out (the host is gone without a reset) surfaces as tower's "deadline
    // has elapsed" inside a transport error: only the connect timeout is set on endpoints
    // (`net::configure`), request deadlines are enforced separately.
    let text = describe(status).to_lowercase();
    text.contains("connect")
        || text.contains("connection refused")
        || text.contains("dns")
        || text.contains("deadline has elapsed")
}
