//! The `Client`: ring discovery, routing, deadlines and safe retries (the admin calls are in
//! `client/admin.rs`).

mod admin;

use crate::error::Error;
use crate::net::validate_addr;
use crate::options::{CasResult, ClientConfig, Expected, GetResult, Options, Routing, WriteResult};
use crate::placement::partition_for_key;
use crate::ring_view::{describe, learn_leader, RingView, NO_LEADER};
use kv_proto::v1 as pb;
use kv_proto::v1::kv_client::KvClient;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Most attempts one request makes (the first try included).
pub const MAX_ATTEMPTS: u32 = 10;
/// Least time left for the client to start another attempt.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(20);
/// First backoff between attempts; doubles each retry.
pub const BACKOFF_START: Duration = Duration::from_millis(20);
/// Longest backoff between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Whether a request may be retried after an error of unknown outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotence {
    /// Reads: any retryable error may be retried.
    Safe,
    /// Writes carrying a request id: a CP keyspace applies them at most once per id, and an AP
    /// write applied twice is the same write at a later timestamp, so a write whose connection
    /// broke after it was sent may be retried too.
    Deduplicated,
}

/// An async kv client. Cheap to clone; clones share connections and the ring.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Replaced whole on each ring read; a request clones the `Arc` once.
    ring: RwLock<Arc<RingView>>,
    /// Channels by address, kept across ring reads (touched only when a view is built).
    channels: Mutex<BTreeMap<String, Channel>>,
    next: AtomicUsize,
    /// This client's id in every write's `RequestId` (random, never 0).
    client_id: u64,
    /// The sequence number of the next write.
    next_seq: AtomicU64,
}

impl Client {
    /// Connects: validates the seeds and discovers the ring from the first seed that answers.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        if config.seeds.is_empty() {
            return Err(Error::Config(
                "no endpoints: pass --endpoints host:port[,host:port...], set KV_ENDPOINTS, or start a local cluster with `kv local up`".into(),
            ));
        }
        for seed in &config.seeds {
            validate_addr(seed).map_err(Error::Config)?;
        }
        let client_id = config
            .client_id
            .filter(|&id| id != 0)
            .unwrap_or_else(|| rand::random::<u64>().max(1));
        let client = Client {
            inner: Arc::new(Inner {
                config,
                ring: RwLock::new(Arc::default()),
                channels: Mutex::new(BTreeMap::new()),
                next: AtomicUsize::new(0),
                client_id,
                next_seq: AtomicU64::new(1),
            }),
        };
        let seeds = client.inner.config.seeds.clone();
        let seed_view = RingView::build(
            0,
            seeds.iter().map(|a| (a.clone(), None)),
            Vec::new(),
            |a| client.channel(a),
        )?;
        client.set_view(seed_view);
        client.refresh_ring().await?;
        Ok(client)
    }

    /// Re-reads the ring from any seed that answers.
    pub async fn refresh_ring(&self) -> Result<pb::RingResponse, Error> {
        let mut last = None;
        for seed in self.inner.config.seeds.clone() {
            let mut grpc = self.grpc(&seed)?;
            let mut req = tonic::Request::new(pb::RingRequest {});
            req.set_timeout(self.inner.config.timeout);
            self.inner.config.authorize(&mut req);
            match tokio::time::timeout(self.inner.config.timeout, grpc.ring(req)).await {
                Ok(Ok(resp)) => {
                    let ring = resp.into_inner();
                    self.set_view(self.view_of(&ring)?);
                    return Ok(ring);
                }
                Ok(Err(status)) => last = Some(Error::from_status(status, &seed)),
                Err(_) => {
                    last = Some(Error::DeadlineExceeded {
                        elapsed_ms: self.inner.config.timeout.as_millis() as u64,
                        message: format!("seed {seed} did not answer"),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no seeds".into())))
    }

    /// The view of `ring`: its members (or the seeds, with `seeds_only`) as nodes to send to.
    fn view_of(&self, ring: &pb::RingResponse) -> Result<RingView, Error> {
        let config = &self.inner.config;
        RingView::of(ring, &config.seeds, config.seeds_only, |a| self.channel(a))
    }

    fn set_view(&self, view: RingView) {
        *self.inner.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }

    fn view(&self) -> Arc<RingView> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads a key.
    pub async fn get(&self, keyspace: &str, key: &[u8], opts: Options) -> Result<GetResult, Error> {
        let req = pb::GetRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            options: Some(opts.to_pb()),
        };
        let (resp, sent_to) = self
            .call(key, &opts, Idempotence::Safe, req, |mut c, r| async move {
                c.get(r).await
            })
            .await?;
        Ok(GetResult {
            value: resp.found.then_some(resp.value),
            version: if resp.found { resp.version } else { None },
            served_by: resp.served_by,
            maybe_stale: resp.maybe_stale,
            sent_to,
        })
    }

    /// Writes a key.
    pub async fn put(
        &self,
        keyspace: &str,
        key: &[u8],
        value: &[u8],
        opts: Options,
    ) -> Result<WriteResult, Error> {
        let req = pb::PutRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            value: value.to_vec(),
            options: Some(opts.to_pb()),
            request_id: Some(self.request_id()),
        };
        let (resp, sent_to) = self
            .call(
                key,
                &opts,
                Idempotence::Deduplicated,
                req,
                |mut c, r| async move { c.put(r).await },
            )
            .await?;
        Ok(WriteResult {
            version: resp.version,
            served_by: resp.served_by,
            sent_to,
        })
    }

    /// Deletes a key.
    pub async fn delete(
        &self,
        keyspace: &str,
        key: &[u8],
        opts: Options,
    ) -> Result<WriteResult, Error> {
        let req = pb::DeleteRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            options: Some(opts.to_pb()),
            request_id: Some(self.request_id()),
        };
        let (resp, sent_to) = self
            .call(
                key,
                &opts,
                Idempotence::Deduplicated,
                req,
                |mut c, r| async move { c.delete(r).await },
            )
            .await?;
        Ok(WriteResult {
            version: resp.version,
            served_by: resp.served_by,
            sent_to,
        })
    }

    /// Replaces a key's value if it holds what `expected` says (CP keyspaces only).
    pub async fn cas(
        &self,
        keyspace: &str,
        key: &[u8],
        expected: Expected,
        new_value: &[u8],
        opts: Options,
    ) -> Result<CasResult, Error> {
        let expected = match expected {
            Expected::Version(v) => pb::compare_and_swap_request::Expected::ExpectedVersion(v),
            Expected::Value(v) => pb::compare_and_swap_request::Expected::ExpectedValue(v),
            Expected::Absent => pb::compare_and_swap_request::Expected::ExpectAbsent(true),
        };
        let req = pb::CompareAndSwapRequest {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            expected: Some(expected),
            new_value: new_value.to_vec(),
            options: Some(opts.to_pb()),
            request_id: Some(self.request_id()),
        };
        let (resp, sent_to) = self
            .call(
                key,
                &opts,
                Idempotence::Deduplicated,
                req,
                |mut c, r| async move { c.compare_and_swap(r).await },
            )
            .await?;
        Ok(CasResult {
            succeeded: resp.succeeded,
            version: resp.version,
            current_value: resp.found.then_some(resp.current_value),
            served_by: resp.served_by,
            sent_to,
        })
    }

    /// The nodes this client may send requests to, in ring order.
    fn allowed_nodes(&self) -> Vec<String> {
        self.view().nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Picks the node (index into `view.nodes`) for attempt `attempt` of a request on
    /// partition `partition`, avoiding the nodes in `avoid` while others remain.
    fn pick(
        &self,
        view: &RingView,
        partition: Option<u32>,
        attempt: u32,
        avoid: &[usize],
    ) -> usize {
        let n = view.nodes.len();
        let usable = |i: &usize| !avoid.contains(i);
        let any_usable = (0..n).any(|i| usable(&i));
        let ok = |i: &usize| !any_usable || usable(i);
        // The k-th usable node, counting round the ring from `start`.
        let nth = |start: usize| (0..n).map(|k| (start + k) % n).find(|i| ok(i)).unwrap_or(0);
        match self.inner.config.routing {
            Routing::TokenAware => {
                if let Some(p) = partition {
                    let preferred = view.leader(p).into_iter().chain(
                        view.preference
                            .get(p as usize)
                            .into_iter()
                            .flatten()
                            .copied(),
                    );
                    for i in preferred {
                        if ok(&i) {
                            return i;
                        }
                    }
                }
                let i = self.inner.next.fetch_add(1, Ordering::Relaxed) + attempt as usize;
                nth(i % n)
            }
            Routing::RoundRobin => {
                let i = self.inner.next.fetch_add(1, Ordering::Relaxed);
                nth(i % n)
            }
            Routing::LeastOutstanding => (0..n)
                .filter(|i| ok(i))
                .min_by_key(|i| view.nodes[*i].outstanding.load(Ordering::Relaxed))
                .unwrap_or(0),
        }
    }

    /// The channel to `addr`, made once and kept.
    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .inner
            .config
            .dialer
            .channel(addr)
            .map_err(Error::Config)?;
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn grpc(&self, addr: &str) -> Result<KvClient<Channel>, Error> {
        Ok(KvClient::new(self.channel(addr)?))
    }

    /// Runs one request with routing, deadline and retries; returns the answer and the node
    /// (name, else address) the answering attempt was sent to.
    /// `send` is the one RPC (e.g. `|mut c, r| async move { c.get(r).await }`); each attempt
    /// sends a copy of `req` carrying the remaining deadline as `grpc-timeout`.
    async fn call<Req, Resp, F, Fut>(
        &self,
        key: &[u8],
        opts: &Options,
        idempotence: Idempotence,
        req: Req,
        send: F,
    ) -> Result<(Resp, String), Error>
    where
        Req: Clone,
        F: Fn(KvClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let timeout = opts.timeout.unwrap_or(self.inner.config.timeout);
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = BACKOFF_START;
        let view = self.view();
        if view.nodes.is_empty() {
            return Err(Error::Config("no endpoints".into()));
        }
        let partition =
            (view.partition_count > 0).then(|| partition_for_key(key, view.partition_count));
        let mut avoid: Vec<usize> = Vec::new();
        let mut leader_hint: Option<usize> = None;
        // The error to report if every attempt fails: a node's own answer says more (which
        // node owns the key and is down) than a transport failure does.
        let mut reported: Option<Error> = None;
        // Whether an earlier attempt of this write may have been applied (its connection broke
        // after sending, or a node could not say): then no later attempt's "not applied" can
        // speak for the request as a whole.
        let mut maybe_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let node_ix = leader_hint
                .take()
                .unwrap_or_else(|| self.pick(&view, partition, attempt, &avoid));
            let node = &view.nodes[node_ix];
            let addr = &node.addr;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT_TIME {
                // Too little time for another try: a node's definite answer (e.g. Unavailable)
                // says more than "deadline exceeded".
                if let (Idempotence::Safe, Some(r)) = (idempotence, reported) {
                    return Err(r);
                }
                return Err(Error::DeadlineExceeded {
                    elapsed_ms: start.elapsed().as_millis() as u64,
                    message: format!("{attempt} attempt(s), last to {addr}"),
                });
            }
            let grpc = KvClient::new(node.channel.clone());
            node.outstanding.fetch_add(1, Ordering::Relaxed);
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(remaining);
            self.inner.config.authorize(&mut request);
            let result = tokio::time::timeout(remaining, send(grpc, request)).await;
            node.outstanding.fetch_sub(1, Ordering::Relaxed);
            let err = match result {
                Ok(Ok(resp)) => {
                    if let Some(p) = partition {
                        learn_leader(&view, p, resp.metadata());
                    }
                    let sent_to = node.name.clone().unwrap_or_else(|| addr.clone());
                    return Ok((resp.into_inner(), sent_to));
                }
                Ok(Err(status)) => Error::from_status(status, &describe(node)),
                Err(_) => Error::DeadlineExceeded {
                    elapsed_ms: start.elapsed().as_millis() as u64,
                    message: format!("no answer from {addr} within the deadline"),
                },
            };
            if let Error::DeadlineExceeded { message, .. } = err {
                // A read that ran out of time on a retry reports the earlier definite answer;
                // a write never does: its last attempt's outcome is unknown.
                if let (Idempotence::Safe, Some(r)) = (idempotence, reported) {
                    return Err(r);
                }
                return Err(Error::DeadlineExceeded {
                    elapsed_ms: start.elapsed().as_millis() as u64,
                    message,
                });
            }
            let may_retry = match idempotence {
                Idempotence::Safe => err.is_retryable(),
                // A node's own Unavailable is its answer (e.g. the minority side of a
                // partition), not a lost message: it is reported, not retried, also when the
                // node says nothing was applied (`NotApplied`).
                Idempotence::Deduplicated => matches!(
                    err,
                    Error::Connect { .. } | Error::NotLeader { .. } | Error::Transport { .. }
                ),
            };
            if !may_retry || attempt >= MAX_ATTEMPTS {
                let last = match (reported, &err) {
                    (Some(r), Error::Connect { .. } | Error::Transport { .. }) => r,
                    _ => err,
                };
                return Err(match idempotence {
                    Idempotence::Deduplicated if maybe_applied && last.certainly_not_applied() => {
                        Error::Unavailable(format!(
                            "{last}; an earlier attempt of this write may have been applied, so its outcome is unknown"
                        ))
                    }
                    _ => last,
                });
            }
            if !err.certainly_not_applied() {
                maybe_applied = true;
            }
            if !matches!(err, Error::Connect { .. } | Error::Transport { .. }) {
                reported = Some(err.clone());
            }
            if let Error::NotLeader {
                leader: Some(leader),
                ..
            } = &err
            {
                // Only a node this client may use is followed; else the next pick decides.
                if let Some(i) = view.index_of(leader) {
                    if let Some(p) = partition {
                        view.set_leader(p, i);
                    }
                    leader_hint = Some(i);
                    continue;
                }
            }
            if matches!(err, Error::Connect { .. } | Error::Transport { .. }) {
                // A leader we cannot reach is no leader to prefer any more.
                for slot in &view.leaders {
                    let _ = slot.compare_exchange(
                        node_ix,
                        NO_LEADER,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            tracing::debug!(%addr, error = %err, attempt, "retrying");
            avoid.push(node_ix);
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// A fresh id for one logical write, kept on every retry of it.
    fn request_id(&self) -> pb::RequestId {
        pb::RequestId {
            client_id: self.inner.client_id,
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// "n2 (127.0.0.1:7002)" when the ring names the address, else the address.
    fn describe(&self, addr: &str) -> String {
        let view = self.view();
        match view.index_of(addr) {
            Some(i) => describe(&view.nodes[i]),
            None => addr.to_string(),
        }
    }
}
