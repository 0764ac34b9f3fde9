//! The `jepsen` client of `kv compare` on real processes: a `kv_client::Client` pinned to one
//! node, logging every request it sends (node, times, served) for availability per side. The
//! same mapping of errors to outcomes as the simulation's client (`chaos::scenario::SimKv`).

use chaos::scenario::{text, versions, write_error, Call, Mode};
use jepsen::history::Clock;
use jepsen::workload::{CasResult, ClientError, KvClient, ReadResult, WriteResult};
use std::sync::{Arc, Mutex};

/// A `jepsen` client of one keyspace through one node.
#[derive(Clone)]
pub struct RealKv {
    client: kv_client::Client,
    mode: Mode,
    node: usize,
    options: kv_client::Options,
    calls: Arc<Mutex<Vec<Call>>>,
    clock: Clock,
}

impl RealKv {
    /// A client of `mode`'s keyspace through `client` (pinned to node index `node`); AP
    /// requests ask for consistency one, so a lone node can serve them.
    pub fn new(
        client: kv_client::Client,
        mode: Mode,
        node: usize,
        calls: Arc<Mutex<Vec<Call>>>,
        clock: Clock,
    ) -> RealKv {
        let options = match mode {
            Mode::Cp => kv_client::Options::default(),
            Mode::Ap => kv_client::Options {
                consistency: kv_client::Consistency::One,
                ..Default::default()
            },
        };
        RealKv {
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

impl KvClient for RealKv {
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

    async fn put(&self, key: &str, value: &str) -> Result<WriteResult, ClientError> {
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
        Ok(WriteResult { version, timestamp })
    }

    async fn delete(&self, key: &str) -> Result<WriteResult, ClientError> {
        let start = (self.clock)();
        let r = self
            .client
            .delete(self.mode.name(), key.as_bytes(), self.options.clone())
            .await;
        self.log(start, r.is_ok());
        let r = r.map_err(write_error)?;
        let (version, timestamp) = versions(r.version.as_ref());
        Ok(WriteResult { version, timestamp })
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<CasResult, ClientError> {
        if self.mode == Mode::Ap {
            // AP keyspaces refuse cas by design: not sent, so not counted as a request.
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
        Ok(CasResult::Applied(WriteResult { version, timestamp }))
    }
}
