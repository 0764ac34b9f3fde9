//! The `jepsen` client of a case: `kv_client::Client` pinned to one node, logging every
//! request it sends (for availability and the minority check). The simulation connects it to a
//! simulated host; `kv compare` on real processes builds it over its own client and clock.

use super::{host_addr, now_ns, Call, Mode};
use jepsen::history::Clock;
use jepsen::workload::{self, CasResult, ClientError, KvClient, ReadResult};
use kv_testkit::sim::client;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `jepsen` client over `kv_client::Client`, pinned to one node.
#[derive(Clone)]
pub struct SimKv {
    client: kv_client::Client,
    mode: Mode,
    node: usize,
    options: kv_client::Options,
    calls: Arc<Mutex<Vec<Call>>>,
    clock: Clock,
}

impl SimKv {
    /// A client of `mode`'s keyspace talking only to host `node` (AP requests at consistency
    /// one, so a lone node can serve them).
    pub async fn connect(
        mode: Mode,
        node: usize,
        timeout: Duration,
        calls: Arc<Mutex<Vec<Call>>>,
    ) -> Result<SimKv, kv_client::Error> {
        let client = client(&[host_addr(node).as_str()], timeout).await?;
        Ok(SimKv::new(client, mode, node, calls, Arc::new(now_ns)))
    }

    /// A client of `mode`'s keyspace through `client` (pinned to node index `node`), timing
    /// its calls with `clock`; AP requests ask for consistency one.
    pub fn new(
        client: kv_client::Client,
        mode: Mode,
        node: usize,
        calls: Arc<Mutex<Vec<Call>>>,
        clock: Clock,
    ) -> SimKv {
        let options = match mode {
            Mode::Cp => kv_client::Options::default(),
            Mode::Ap => kv_client::Options {
                consistency: kv_client::Consistency::One,
                ..Default::default()
            },
        };
        SimKv {
            client,
            mode,
            node,
            options,
            calls,
            clock,
        }
    }

    fn log(&self, start_ns: u64, served: bool) {
        let call = Call {
            node: self.node,
            start_ns,
            end_ns: (self.clock)(),
            served,
        };
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

/// A kv version as the history's revision (CP) and timestamp (AP).
pub fn versions(v: Option<&kv_proto::v1::Version>) -> (Option<u64>, Option<jepsen::Hlc>) {
    match v {
        None => (None, None),
        Some(v) => (
            (v.revision > 0).then_some(v.revision),
            v.hlc
                .as_ref()
                .map(|h| (h.physical_ms, h.logical, h.node_id)),
        ),
    }
}

/// A write's error: definite failure only when the request certainly had no effect.
pub fn write_error(e: kv_client::Error) -> ClientError {
    use kv_client::Error as E;
    match e {
        E::InvalidArgument(_)
        | E::KeyspaceNotFound(_)
        | E::FailedPrecondition(_)
        | E::Connect { .. }
        | E::NotLeader { .. }
        | E::Config(_) => ClientError::Fail(e.to_string()),
        _ => ClientError::Info(e.to_string()),
    }
}

/// Bytes as the history's text (lossy UTF-8).
pub fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl KvClient for SimKv {
    async fn get(&self, key: &str) -> Result<ReadResult, ClientError> {
        let start = (self.clock)();
        let r = self
            .client
            .get(self.mode.name(), key.as_bytes(), self.options.clone())
            .await;
        self.log(start, r.is_ok());
        // A failed read has no effect: always a definite failure.
        let r = r.map_err(|e| ClientError::Fail(e.to_string()))?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(ReadResult {
            value: text(r.value),
            version,
            timestamp,
        })
    }

    async fn put(&self, key: &str, value: &str) -> Result<workload::WriteResult, ClientError> {
        let start = (self.clock)();
        let r = self
            .client
            .put(
                self.mode.name(),
                key.as_bytes(),
                value.as_bytes(),
                self.options.clone(),
            )
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(workload::WriteResult { version, timestamp })
    }

    async fn delete(&self, key: &str) -> Result<workload::WriteResult, ClientError> {
        let start = (self.clock)();
        let r = self
            .client
            .delete(self.mode.name(), key.as_bytes(), self.options.clone())
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(workload::WriteResult { version, timestamp })
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<CasResult, ClientError> {
        if self.mode == Mode::Ap {
            // AP keyspaces refuse cas by design; not sent, so not counted as a request.
            return Err(ClientError::Fail("cas is CP-only".into()));
        }
        let expected = match expected {
            None => kv_client::Expected::Absent,
            Some(v) => kv_client::Expected::Value(v.as_bytes().to_vec()),
        };
        let start = (self.clock)();
        let r = self
            .client
            .cas(
                self.mode.name(),
                key.as_bytes(),
                expected,
                new.as_bytes(),
                self.options.clone(),
            )
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        if !r.succeeded {
            return Ok(CasResult::Mismatch);
        }
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(CasResult::Applied(workload::WriteResult {
            version,
            timestamp,
        }))
    }
}
