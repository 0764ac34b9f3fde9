//! Keyspace administration: `CreateKeyspace` (validation of the definition, each limit named
//! in its refusal, then id allocation through the metadata group) and `ListKeyspaces`.

use super::convert::{cp_error, keyspace_pb};
use super::forward::{hop, pause_for_election, Ctx, MAX_FORWARD_HOPS};
use crate::cp::{CpError, KeyspaceOutcome, Request as CpRequest, Response as CpResponse};
use crate::error::{echo, NodeError, NodeResult};
use crate::node::{Node, CP_REPLICAS};
use crate::types::{KeyspaceDef, Mode};
use kv_proto::v1 as pb;

/// Most ids one keyspace creation tries before giving up.
const MAX_KEYSPACE_ID_ATTEMPTS: usize = 8;
pub use kv_core::limits::MAX_KEYSPACE_NAME_BYTES;

/// Validates a CreateKeyspace request into a definition (id still unassigned).
pub(super) fn keyspace_def(
    node: &Node,
    req: &pb::CreateKeyspaceRequest,
) -> NodeResult<KeyspaceDef> {
    let Some(k) = &req.keyspace else {
        return Err(NodeError::InvalidArgument(
            "CreateKeyspace needs a keyspace".into(),
        ));
    };
    let name_ok = !k.name.is_empty()
        && k.name.len() <= MAX_KEYSPACE_NAME_BYTES
        && k.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(NodeError::InvalidArgument(format!(
            "keyspace name {:?} is invalid: 1 to {MAX_KEYSPACE_NAME_BYTES} characters of a-z, A-Z, 0-9, _ and -",
            echo(&k.name)
        )));
    }
    let mode = match pb::Mode::try_from(k.mode) {
        Ok(pb::Mode::Cp) => Mode::Cp,
        Ok(pb::Mode::Ap) => Mode::Ap,
        _ => {
            return Err(NodeError::InvalidArgument(
                "keyspace mode must be cp or ap".into(),
            ))
        }
    };
    let n_nodes = node.config.peers.len() as u32;
    let replicas = if k.replicas == 0 {
        3.min(n_nodes)
    } else {
        k.replicas
    };
    if mode == Mode::Cp && replicas != CP_REPLICAS.min(n_nodes) {
        return Err(NodeError::InvalidArgument(format!(
            "CP keyspaces share the Raft groups of the built-in `cp` keyspace, so --replicas must be {} in this release (got {replicas})",
            CP_REPLICAS.min(n_nodes)
        )));
    }
    if replicas == 0 || replicas > n_nodes {
        return Err(NodeError::InvalidArgument(format!(
            "--replicas {replicas} must be between 1 and the number of nodes ({n_nodes})"
        )));
    }
    if k.read_replicas > replicas || k.write_replicas > replicas {
        return Err(NodeError::InvalidArgument(format!(
            "default R={} and W={} must not exceed --replicas {replicas}",
            k.read_replicas, k.write_replicas
        )));
    }
    Ok(KeyspaceDef {
        name: k.name.clone(),
        id: 0,
        mode,
        replicas,
        read_replicas: k.read_replicas,
        write_replicas: k.write_replicas,
    })
}

/// Creates a keyspace through the metadata group (forwarded to its leader when this node is
/// not it); creating one that exists with the same definition succeeds.
pub(super) async fn create_keyspace(
    node: &Node,
    ctx: Ctx,
    body: pb::CreateKeyspaceRequest,
) -> NodeResult<pb::CreateKeyspaceResponse> {
    let def = keyspace_def(node, &body)?;
    let cp = node.cp()?;
    // Ids are taken in order; a concurrent create of another keyspace may take the id
    // first, and then the next one is tried.
    let mut id_attempts = 0;
    while id_attempts < MAX_KEYSPACE_ID_ATTEMPTS {
        let _ = node.refresh_keyspaces().await;
        let next_id = node
            .keyspaces
            .read()
            .expect("keyspace lock")
            .values()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            + 1;
        let def = KeyspaceDef {
            id: next_id,
            ..def.clone()
        };
        let outcome = cp
            .execute(
                crate::cp::META_KEYSPACE,
                crate::cp::META_PARTITION,
                CpRequest::CreateKeyspace(def.clone()),
                ctx.deadline,
            )
            .await;
        match outcome {
            Ok(CpResponse::Keyspace(KeyspaceOutcome::Created)) => {
                node.keyspaces
                    .write()
                    .expect("keyspace lock")
                    .insert(def.name.clone(), def.clone());
                return Ok(pb::CreateKeyspaceResponse {
                    keyspace: Some(keyspace_pb(&def)),
                });
            }
            Ok(CpResponse::Keyspace(KeyspaceOutcome::NameExists(existing))) => {
                if (KeyspaceDef {
                    id: existing.id,
                    ..def.clone()
                }) == existing
                {
                    return Ok(pb::CreateKeyspaceResponse {
                        keyspace: Some(keyspace_pb(&existing)),
                    });
                }
                return Err(NodeError::AlreadyExists(format!(
                    "keyspace {:?} already exists as mode {:?} with {} replicas",
                    existing.name, existing.mode, existing.replicas
                )));
            }
            Ok(CpResponse::Keyspace(KeyspaceOutcome::IdTaken(_))) => id_attempts += 1,
            Ok(other) => {
                return Err(NodeError::Internal(format!(
                    "metadata group answered {other:?}"
                )))
            }
            Err(CpError::NotLeader {
                leader: Some(leader),
                ..
            }) if ctx.hops < MAX_FORWARD_HOPS => {
                let forwarded = hop(
                    node,
                    leader,
                    crate::cp::META_PARTITION,
                    ctx,
                    body.clone(),
                    |mut c, r| async move { c.create_keyspace(r).await },
                )
                .await;
                match forwarded {
                    // The leader this node knows is down: wait out the election, as a data
                    // write does, rather than fail while a majority is up.
                    Err(NodeError::NotSent(msg)) => {
                        let last =
                            NodeError::NotApplied(format!("{msg}; the keyspace was not created"));
                        pause_for_election(ctx, last).await?
                    }
                    // Creating is idempotent (the same definition again answers with the
                    // keyspace), so a create whose connection broke after sending is sent again.
                    Err(NodeError::Interrupted(msg)) => {
                        pause_for_election(ctx, NodeError::Unavailable(msg)).await?
                    }
                    other => return other,
                }
            }
            Err(e) => return Err(cp_error(node, e, "(metadata)")),
        }
    }
    Err(NodeError::Unavailable(
        "could not allocate a keyspace id: concurrent creations kept taking it; retry".into(),
    ))
}

/// Every keyspace, after re-reading the metadata (a failed re-read lists what is known).
pub(super) async fn list_keyspaces(node: &Node) -> pb::ListKeyspacesResponse {
    let _ = node.refresh_keyspaces().await;
    let keyspaces = node
        .keyspaces
        .read()
        .expect("keyspace lock")
        .values()
        .map(keyspace_pb)
        .collect();
    pb::ListKeyspacesResponse { keyspaces }
}
