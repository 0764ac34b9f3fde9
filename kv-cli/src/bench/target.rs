//! The stores `kv bench` can load, behind one `Target`: kv through kv-client (with the
//! server-side hop measurement), and, with `--features etcd`, etcd's gRPC KV API.

use super::args::Op;
use super::stats::{Answer, Done, Failure};
use kv_client::placement::partition_for_key;
use kv_client::{Client, Consistency, Expected, Options};
use std::collections::BTreeSet;

/// How hops are measured (printed with the figure): kv-client does not say which node it sent
/// a request to, so the benchmark computes the client's token-aware first choice itself.
pub const HOP_METHOD: &str = "served_by differs from the client's token-aware first choice: \
the first node of the key's partition preference list (from the ring read at start) that the \
client may use; a CP request served elsewhere was forwarded by that node to its leader";

/// A store under load.
pub enum Target {
    /// kv, through one `Client` per connection set.
    Kv(KvTarget),
    /// etcd v3.
    #[cfg(feature = "etcd")]
    Etcd(super::etcd::EtcdTarget),
}

impl Target {
    /// Sends one request of kind `op` for `key` (writes carry `value`, and a compare-and-swap
    /// expects it) on connection set `conn`.
    pub async fn send(
        &self,
        conn: usize,
        op: Op,
        key: &[u8],
        value: &[u8],
    ) -> Result<Done, Failure> {
        match self {
            Target::Kv(t) => t.send(conn, op, key, value).await,
            #[cfg(feature = "etcd")]
            Target::Etcd(t) => t.send(conn, op, key, value).await,
        }
    }

    /// How hops are measured, when they are.
    pub fn hop_method(&self) -> Option<&'static str> {
        match self {
            Target::Kv(t) => t.first_choice.is_some().then_some(HOP_METHOD),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => None,
        }
    }

    /// Number of connection sets.
    pub fn connections(&self) -> usize {
        match self {
            Target::Kv(t) => t.clients.len(),
            #[cfg(feature = "etcd")]
            Target::Etcd(t) => t.connections(),
        }
    }
}

/// kv through kv-client.
pub struct KvTarget {
    /// One client per connection set (clients share nothing).
    pub clients: Vec<Client>,
    /// The keyspace.
    pub keyspace: String,
    /// Options of every request.
    pub options: Options,
    /// Per partition, the name of the node token-aware routing sends to first; `None` when
    /// hops are not measured (another routing policy).
    pub first_choice: Option<Vec<Option<String>>>,
    /// Partitions of the ring.
    pub partition_count: u32,
}

impl KvTarget {
    /// The first choice of token-aware routing for every partition of `ring`, among the
    /// nodes at `allowed` addresses (every member when empty), as kv-client picks it.
    pub fn first_choices(
        ring: &kv_proto::v1::RingResponse,
        allowed: &[String],
    ) -> Vec<Option<String>> {
        let allowed: BTreeSet<&str> = allowed.iter().map(String::as_str).collect();
        ring.partitions
            .iter()
            .map(|p| {
                p.preference.iter().find_map(|id| {
                    ring.members
                        .iter()
                        .find(|m| m.id == *id)
                        .filter(|m| allowed.is_empty() || allowed.contains(m.address.as_str()))
                        .map(|m| m.name.clone())
                })
            })
            .collect()
    }

    async fn send(&self, conn: usize, op: Op, key: &[u8], value: &[u8]) -> Result<Done, Failure> {
        let client = &self.clients[conn % self.clients.len()];
        let ks = &self.keyspace;
        let opts = self.options.clone();
        let (answer, served_by) = match op {
            Op::Get => client.get(ks, key, opts).await.map(|r| {
                let answer = match r.value {
                    Some(_) => Answer::Ok,
                    None => Answer::NotFound,
                };
                (answer, r.served_by)
            }),
            Op::Put => client
                .put(ks, key, value, opts)
                .await
                .map(|r| (Answer::Ok, r.served_by)),
            Op::Delete => client
                .delete(ks, key, opts)
                .await
                .map(|r| (Answer::Ok, r.served_by)),
            Op::Cas => client
                .cas(ks, key, Expected::Value(value.to_vec()), value, opts)
                .await
                .map(|r| {
                    let answer = if r.succeeded {
                        Answer::Ok
                    } else {
                        Answer::CasMismatch
                    };
                    (answer, r.served_by)
                }),
        }
        .map_err(|e| Failure {
            kind: error_kind(&e),
            message: e.to_string(),
        })?;
        let hop = self.first_choice.as_ref().and_then(|firsts| {
            let partition = partition_for_key(key, self.partition_count) as usize;
            let first = firsts.get(partition)?.as_deref()?;
            Some(first != served_by)
        });
        Ok(Done {
            answer,
            served_by: Some(served_by),
            hop,
        })
    }
}

/// Request options from the bench flags.
pub fn kv_options(consistency: Option<crate::arg_enums::ConsistencyArg>, stale: bool) -> Options {
    use crate::arg_enums::ConsistencyArg as C;
    Options {
        consistency: match consistency {
            None => Consistency::Default,
            Some(C::One) => Consistency::One,
            Some(C::Quorum) => Consistency::Quorum,
            Some(C::All) => Consistency::All,
        },
        stale,
        ..Options::default()
    }
}

/// The report's name of a client error's kind.
pub fn error_kind(e: &kv_client::Error) -> &'static str {
    use kv_client::Error as E;
    match e {
        E::InvalidArgument(_) => "invalid_argument",
        E::KeyspaceNotFound(_) => "keyspace_not_found",
        E::FailedPrecondition(_) => "failed_precondition",
        E::AlreadyExists(_) => "already_exists",
        E::Unavailable(_) | E::NotApplied(_) => "unavailable",
        E::DeadlineExceeded { .. } => "deadline_exceeded",
        E::NotLeader { .. } => "not_leader",
        E::DataLoss(_) => "data_loss",
        E::Connect { .. } => "connect",
        E::Transport { .. } => "transport",
        E::Config(_) => "config",
        E::Other { .. } => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::v1 as pb;

    #[test]
    fn the_first_choice_is_the_first_allowed_node_of_the_preference_list() {
        let member = |id: u64, name: &str| pb::Member {
            id,
            name: name.into(),
            address: format!("127.0.0.1:700{id}"),
        };
        let ring = pb::RingResponse {
            partition_count: 2,
            members: vec![member(1, "n1"), member(2, "n2"), member(3, "n3")],
            partitions: vec![
                pb::Partition {
                    id: 0,
                    preference: vec![2, 3, 1],
                },
                pb::Partition {
                    id: 1,
                    preference: vec![1, 2, 3],
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            KvTarget::first_choices(&ring, &[]),
            [Some("n2".to_string()), Some("n1".to_string())]
        );
        assert_eq!(
            KvTarget::first_choices(&ring, &["127.0.0.1:7003".to_string()]),
            [Some("n3".to_string()), Some("n3".to_string())]
        );
        assert_eq!(
            KvTarget::first_choices(&ring, &["10.0.0.1:1".to_string()]),
            [None, None]
        );
    }
}
