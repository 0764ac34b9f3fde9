//! Conversions the services share: request deadlines from `grpc-timeout`, engine types to
//! protobuf, AP request options, AP engine errors to node errors, and the stored key of a CP
//! keyspace's key.

use crate::ap::{ApError, Consistency as ApConsistency, RequestOptions as ApOptions};
use crate::cp::CpError;
use crate::error::{NodeError, NodeResult};
use crate::node::Node;
use crate::types::{KeyspaceDef, Mode, Version};
use kv_proto::v1 as pb;
use std::time::Duration;
use tonic::Request;

/// Longest request deadline honoured; a longer `grpc-timeout` is cut to this.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads the request deadline from the `grpc-timeout` header (or the node default), at most
/// `MAX_REQUEST_TIMEOUT`.
pub fn request_timeout<T>(node: &Node, req: &Request<T>) -> Duration {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(node.config.default_timeout)
        .min(MAX_REQUEST_TIMEOUT)
}

/// Parses gRPC's timeout format: digits followed by H, M, S, m, u or n.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || !s.is_char_boundary(s.len() - 1) {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The key under which a CP keyspace's key lives in the shared Raft groups: keyspace id first,
/// so keyspaces sharing a group never collide.
pub fn cp_key(keyspace_id: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&keyspace_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// A version in its wire form.
pub(super) fn version_pb(v: Version) -> pb::Version {
    match v {
        Version::Revision(r) => pb::Version {
            revision: r,
            hlc: None,
        },
        Version::Hlc(h) => pb::Version {
            revision: 0,
            hlc: Some(pb::Hlc {
                physical_ms: h.physical_ms,
                logical: h.logical,
                node_id: h.node_id,
            }),
        },
    }
}

/// A keyspace definition in its wire form.
pub(super) fn keyspace_pb(k: &KeyspaceDef) -> pb::Keyspace {
    pb::Keyspace {
        name: k.name.clone(),
        mode: match k.mode {
            Mode::Cp => pb::Mode::Cp as i32,
            Mode::Ap => pb::Mode::Ap as i32,
        },
        replicas: k.replicas,
        read_replicas: k.read_replicas,
        write_replicas: k.write_replicas,
    }
}

/// The AP engine's options for a request.
pub(super) fn ap_options(o: &Option<pb::RequestOptions>) -> NodeResult<ApOptions> {
    let Some(o) = o else {
        return Ok(ApOptions::default());
    };
    if o.read_replicas > 0 || o.write_replicas > 0 {
        return Ok(ApOptions {
            consistency: Some(ApConsistency::Explicit {
                r: if o.read_replicas > 0 {
                    o.read_replicas
                } else {
                    o.write_replicas
                },
                w: if o.write_replicas > 0 {
                    o.write_replicas
                } else {
                    o.read_replicas
                },
            }),
        });
    }
    let consistency = match pb::Consistency::try_from(o.consistency) {
        Ok(pb::Consistency::Default) => None,
        Ok(pb::Consistency::One) => Some(ApConsistency::One),
        Ok(pb::Consistency::Quorum) => Some(ApConsistency::Quorum),
        Ok(pb::Consistency::All) => Some(ApConsistency::All),
        Err(_) => {
            return Err(NodeError::InvalidArgument(format!(
                "unknown consistency level {}; use one, quorum or all",
                o.consistency
            )))
        }
    };
    Ok(ApOptions { consistency })
}

impl From<ApError> for NodeError {
    fn from(e: ApError) -> Self {
        match e {
            ApError::InvalidArgument(m) => NodeError::InvalidArgument(m),
            e @ ApError::UnknownHintOwner { .. } => NodeError::InvalidArgument(e.to_string()),
            // Not INVALID_ARGUMENT: the same timestamp is accepted once the clocks agree.
            e @ ApError::Clock(_) => NodeError::FailedPrecondition(e.to_string()),
            e @ ApError::Overloaded { .. } => NodeError::ResourceExhausted(e.to_string()),
            ApError::Storage(s) => s.into(),
            e @ ApError::Lost { .. } => NodeError::DataLoss(e.to_string()),
            e @ (ApError::Unavailable { .. }
            | ApError::HintsFull { .. }
            | ApError::Transport(_)) => NodeError::Unavailable(e.to_string()),
        }
    }
}

/// Converts a CP engine error, naming the keyspace and the leader's address.
pub(super) fn cp_error(node: &Node, e: CpError, keyspace: &str) -> NodeError {
    match e {
        CpError::NotLeader { partition, leader } => NodeError::NotLeader {
            partition,
            leader: leader.and_then(|l| node.member(l)).map(|m| m.addr.clone()),
        },
        CpError::Unavailable { partition, reason } => NodeError::Unavailable(format!(
            "keyspace {keyspace} partition {partition} is unavailable on node {}: {reason}",
            node.me.name
        )),
        CpError::NoLeader { partition, reason } => NodeError::NotApplied(format!(
            "keyspace {keyspace} partition {partition} is unavailable on node {}: {reason}; the request was not applied",
            node.me.name
        )),
        CpError::DeadlineExceeded {
            partition, reason, ..
        } => NodeError::DeadlineExceeded(format!(
            "keyspace {keyspace} partition {partition} on node {}: {reason}; a write's outcome is unknown",
            node.me.name
        )),
        CpError::Storage(s) => s.into(),
        other => NodeError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_nonsense_is_ignored() {
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        for bad in ["", "m", "12", "12x", "-1S", "1é", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        // A huge value saturates instead of overflowing.
        assert!(parse_grpc_timeout("18446744073709551615H").is_some());
    }
}
