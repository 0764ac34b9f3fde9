//! `kv bench --target etcd` (built with `--features etcd`): the same requests sent to etcd's
//! v3 gRPC KV API, so both stores run one load generator. Gets are `Range` on one key
//! (linearizable, or serializable with `--stale`), puts `Put`, deletes `DeleteRange`, and a
//! compare-and-swap a `Txn` comparing the value. Connections are made like kv-client's (same
//! keep-alive, TCP_NODELAY, one HTTP/2 connection per endpoint per connection set); worker `w`
//! sends to endpoint `w mod endpoints`, as etcd's own benchmark spreads its clients, and etcd
//! forwards a follower's writes to its leader.

use super::args::Op;
use super::stats::{Answer, Done, Failure};
use kv_core::net::endpoint_for;
use std::time::Duration;
use tonic::transport::Channel;

/// The generated code of `rpc.proto` (package `etcdserverpb`).
#[allow(missing_docs, clippy::all)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;

/// etcd's KV API at a list of endpoints.
pub struct EtcdTarget {
    /// Channels: connection set `c`, endpoint `e` at `c * endpoints + e`.
    channels: Vec<KvClient<Channel>>,
    endpoints: usize,
    serializable: bool,
    timeout: Duration,
}

impl EtcdTarget {
    /// Lazy connections to `endpoints` ("host:port"), `connections` sets of them.
    pub fn new(
        endpoints: &[String],
        connections: usize,
        serializable: bool,
        timeout: Duration,
    ) -> Result<EtcdTarget, String> {
        if endpoints.is_empty() {
            return Err("--target etcd needs --endpoints host:port[,...] (etcd's client URLs without http://)".into());
        }
        let mut channels = Vec::with_capacity(connections * endpoints.len());
        for _ in 0..connections.max(1) {
            for addr in endpoints {
                let channel = endpoint_for(addr)?.connect_lazy();
                channels.push(KvClient::new(channel));
            }
        }
        Ok(EtcdTarget {
            channels,
            endpoints: endpoints.len(),
            serializable,
            timeout,
        })
    }

    /// Number of connection sets.
    pub fn connections(&self) -> usize {
        self.channels.len() / self.endpoints.max(1)
    }

    /// Sends one request for worker `worker`.
    pub async fn send(
        &self,
        worker: usize,
        op: Op,
        key: &[u8],
        value: &[u8],
    ) -> Result<Done, Failure> {
        // Worker w: endpoint w mod E, connection set (w / E) mod C.
        let endpoint = worker % self.endpoints;
        let set = (worker / self.endpoints) % self.connections().max(1);
        let mut client = self.channels[set * self.endpoints + endpoint].clone();
        let timeout = self.timeout;
        fn request<T>(body: T, timeout: Duration) -> tonic::Request<T> {
            let mut r = tonic::Request::new(body);
            r.set_timeout(timeout);
            r
        }
        let call = async {
            match op {
                Op::Get => {
                    let r = client
                        .range(request(
                            pb::RangeRequest {
                                key: key.to_vec(),
                                serializable: self.serializable,
                                ..Default::default()
                            },
                            timeout,
                        ))
                        .await?
                        .into_inner();
                    let answer = if r.kvs.is_empty() {
                        Answer::NotFound
                    } else {
                        Answer::Ok
                    };
                    Ok((answer, r.header))
                }
                Op::Put => {
                    let r = client
                        .put(request(
                            pb::PutRequest {
                                key: key.to_vec(),
                                value: value.to_vec(),
                                ..Default::default()
                            },
                            timeout,
                        ))
                        .await?
                        .into_inner();
                    Ok((Answer::Ok, r.header))
                }
                Op::Delete => {
                    let r = client
                        .delete_range(request(
                            pb::DeleteRangeRequest {
                                key: key.to_vec(),
                                ..Default::default()
                            },
                            timeout,
                        ))
                        .await?
                        .into_inner();
                    Ok((Answer::Ok, r.header))
                }
                Op::Cas => {
                    let compare = pb::Compare {
                        result: pb::compare::CompareResult::Equal as i32,
                        target: pb::compare::CompareTarget::Value as i32,
                        key: key.to_vec(),
                        target_union: Some(pb::compare::TargetUnion::Value(value.to_vec())),
                    };
                    let put = pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: key.to_vec(),
                            value: value.to_vec(),
                            ..Default::default()
                        })),
                    };
                    let r = client
                        .txn(request(
                            pb::TxnRequest {
                                compare: vec![compare],
                                success: vec![put],
                                failure: vec![],
                            },
                            timeout,
                        ))
                        .await?
                        .into_inner();
                    let answer = if r.succeeded {
                        Answer::Ok
                    } else {
                        Answer::CasMismatch
                    };
                    Ok((answer, r.header))
                }
            }
        };
        let result: Result<(Answer, Option<pb::ResponseHeader>), tonic::Status> =
            match tokio::time::timeout(self.timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
            };
        match result {
            Ok((answer, header)) => Ok(Done {
                answer,
                served_by: header.map(|h| format!("{:x}", h.member_id)),
                hop: None,
            }),
            Err(status) => Err(Failure {
                kind: status_kind(status.code()),
                message: kv_core::headers::describe(&status),
            }),
        }
    }
}

/// The report's name of a gRPC status code.
fn status_kind(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}
