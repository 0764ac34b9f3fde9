//! gRPC metadata names that client and node agree on, and how to read a failed dial.

use tonic::Status;

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;

/// Metadata key a node sets on every status it sends, naming itself.
pub const NODE_HEADER: &str = "kv-node";
/// Metadata key holding the leader's address on an `ABORTED` (not leader) status.
pub const LEADER_HEADER: &str = "kv-leader";
/// Metadata key set (to "true") on an `UNAVAILABLE` status when the node knows the request was
/// not applied: it refused before proposing anything (no leader reachable) or could not send
/// it on. Without it, an `UNAVAILABLE` write's outcome is unknown.
pub const NOT_APPLIED_HEADER: &str = "kv-not-applied";

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

/// True when a status says the connection could not be made, so the request was certainly not
/// sent. Decided from the error's type, never its text: tonic wraps every failure of its
/// connector (refused, unreachable, DNS, connect timeout) in `tonic::ConnectError`, while a
/// connection that breaks after the request left ("connection reset", "connection closed before
/// message completed") surfaces as a hyper or h2 error — the request may have been applied.
pub fn is_connect_failure(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}
