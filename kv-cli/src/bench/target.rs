//! The stores `kv bench` can load, behind one `Target`: kv through kv-client (with the
//! server-side hop measurement), and, with `--features etcd`, etcd's gRPC KV API.

use super::args::Op;
use super::stats::{Answer, Done, Failure};
use kv_client::{Client, Consistency, Expected, Options};

/// How hops are measured (printed with the figure).
pub const HOP_METHOD: &str = "served_by differs from the node kv-client sent the answered \
attempt to: that node forwarded the request (a CP request to its partition's leader)";

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
            Target::Kv(_) => Some(HOP_METHOD),
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
}

impl KvTarget {
    async fn send(&self, conn: usize, op: Op, key: &[u8], value: &[u8]) -> Result<Done, Failure> {
        let client = &self.clients[conn % self.clients.len()];
        let ks = &self.keyspace;
        let opts = self.options.clone();
        let (answer, served_by, sent_to) = match op {
            Op::Get => client.get(ks, key, opts).await.map(|r| {
                let answer = match r.value {
                    Some(_) => Answer::Ok,
                    None => Answer::NotFound,
                };
                (answer, r.served_by, r.sent_to)
            }),
            Op::Put => client
                .put(ks, key, value, opts)
                .await
                .map(|r| (Answer::Ok, r.served_by, r.sent_to)),
            Op::Delete => client
                .delete(ks, key, opts)
                .await
                .map(|r| (Answer::Ok, r.served_by, r.sent_to)),
            Op::Cas => client
                .cas(ks, key, Expected::Value(value.to_vec()), value, opts)
                .await
                .map(|r| {
                    let answer = if r.succeeded {
                        Answer::Ok
                    } else {
                        Answer::CasMismatch
                    };
                    (answer, r.served_by, r.sent_to)
                }),
        }
        .map_err(|e| Failure {
            kind: error_kind(&e),
            message: e.to_string(),
        })?;
        Ok(Done {
            answer,
            hop: Some(sent_to != served_by),
            served_by: Some(served_by),
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
