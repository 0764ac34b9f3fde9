//! The `Client`'s cluster-wide calls: status, keyspace list and creation, each tried on the
//! nodes in turn until one answers.

use super::{Client, MIN_ATTEMPT_TIME};
use crate::error::Error;
use kv_proto::v1 as pb;
use kv_proto::v1::kv_client::KvClient;
use tokio::time::Instant;
use tonic::transport::Channel;

impl Client {
    /// The cluster as the first answering node sees it (or `node`, when given).
    pub async fn status(&self, node: Option<&str>) -> Result<pb::ClusterStatusResponse, Error> {
        let addrs = match node {
            Some(n) => vec![n.to_string()],
            None => self.allowed_nodes(),
        };
        let mut last = None;
        for addr in addrs {
            let mut grpc = self.grpc(&addr)?;
            let mut req = tonic::Request::new(pb::ClusterStatusRequest {});
            req.set_timeout(self.inner.config.timeout);
            self.inner.config.authorize(&mut req);
            match tokio::time::timeout(self.inner.config.timeout, grpc.cluster_status(req)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => last = Some(Error::from_status(s, &self.describe(&addr))),
                Err(_) => {
                    last = Some(Error::DeadlineExceeded {
                        elapsed_ms: self.inner.config.timeout.as_millis() as u64,
                        message: format!("{addr} did not answer"),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no endpoints".into())))
    }

    /// Lists keyspaces, asking each allowed node in turn until one answers (a listing
    /// changes nothing, so any failure moves on to the next node).
    pub async fn list_keyspaces(&self) -> Result<Vec<pb::Keyspace>, Error> {
        self.admin_call(
            pb::ListKeyspacesRequest {},
            |mut c, r| async move { c.list_keyspaces(r).await },
            |_| true,
        )
        .await
        .map(|r| r.keyspaces)
    }

    /// Creates a keyspace, asking each allowed node in turn until one answers. Creating a
    /// keyspace that exists with the same definition succeeds, so after a failure whose outcome
    /// is unknown the next node is asked too: its answer settles it. When no node settles it,
    /// the error says the keyspace may or may not have been created.
    pub async fn create_keyspace(&self, keyspace: pb::Keyspace) -> Result<pb::Keyspace, Error> {
        let req = pb::CreateKeyspaceRequest {
            keyspace: Some(keyspace),
        };
        // The first failure after which the request may have been applied: reported (rather
        // than a later node's "could not connect") when no node settles the outcome.
        let mut ambiguous: Option<Error> = None;
        let result = self
            .admin_call(
                req,
                |mut c, r| async move { c.create_keyspace(r).await },
                |e| {
                    if ambiguous.is_none() && !e.certainly_not_applied() {
                        ambiguous = Some(e.clone());
                    }
                    true
                },
            )
            .await;
        match (result, ambiguous) {
            (Ok(r), _) => Ok(r.keyspace.unwrap_or_default()),
            (Err(e), Some(first)) if Self::moves_on(&e) => Err(first.with_note(
                "the keyspace may or may not have been created (a node took the request but \
                 did not answer it): `kv keyspace list` shows whether it exists",
            )),
            (Err(e), _) => Err(e),
        }
    }

    /// True when an admin request that failed this way may get an answer from another node.
    fn moves_on(err: &Error) -> bool {
        err.is_retryable() || matches!(err, Error::DeadlineExceeded { .. })
    }

    /// Sends one cluster-wide admin request to each allowed node in turn (each attempt gets an
    /// equal share of the time left, so one hung node cannot use up the deadline) until one
    /// answers or gives a definite refusal (invalid argument, already exists...). `failed` sees
    /// every error that moves on to the next node and says whether to go on.
    async fn admin_call<Req, Resp, F, Fut>(
        &self,
        req: Req,
        send: F,
        mut failed: impl FnMut(&Error) -> bool,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(KvClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let nodes = self.allowed_nodes();
        let deadline = Instant::now() + self.inner.config.timeout;
        let mut last = None;
        for (i, addr) in nodes.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT_TIME {
                break;
            }
            let share = remaining / (nodes.len() - i) as u32;
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(share);
            self.inner.config.authorize(&mut request);
            let err = match tokio::time::timeout(share, send(self.grpc(addr)?, request)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => Error::from_status(status, &self.describe(addr)),
                Err(_) => Error::DeadlineExceeded {
                    elapsed_ms: share.as_millis() as u64,
                    message: format!("{} did not answer", self.describe(addr)),
                },
            };
            if !Self::moves_on(&err) || !failed(&err) {
                return Err(err);
            }
            tracing::debug!(%addr, error = %err, "admin request failed; asking the next node");
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| Error::DeadlineExceeded {
            elapsed_ms: self.inner.config.timeout.as_millis() as u64,
            message: "no time left to ask a node".into(),
        }))
    }
}
