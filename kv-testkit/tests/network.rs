//! The network conformance suite on both carriers of kv's network seam: real TCP on loopback
//! (through a cuttable proxy) and turmoil's simulated network. One test per case and carrier;
//! plus a check that the suite can fail: a dialer without keep-alive never recovers a link.
//! (That check runs on TCP only: a turmoil partition loses packets but leaves connections
//! usable after the repair, so there even a channel without keep-alive recovers; both dialers
//! take their settings from `kv_core::net::endpoint_for`, which the TCP check covers.)

use futures::FutureExt;
use kv_core::net::{Dialer, CONNECT_TIMEOUT};
use kv_testkit::net_suite::{self, run_on_turmoil, NetUnderTest};
use kv_testkit::tcp_proxy::TcpNet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// Seed of the turmoil runs (each case is deterministic under it).
const SEED: u64 = 8;

macro_rules! on_both_networks {
    ($($case:ident),* $(,)?) => {
        mod tcp {
            use super::*;
            $(#[tokio::test]
            async fn $case() {
                let net = TcpNet::start().await.expect("loopback listeners");
                net_suite::$case(&net).await;
            })*
        }
        mod turmoil {
            use super::*;
            $(#[test]
            fn $case() {
                run_on_turmoil(SEED, |net| async move { net_suite::$case(&net).await });
            })*
        }
    };
}

on_both_networks!(
    round_trip,
    large_message,
    refused_is_a_connect_failure,
    malformed_address_is_refused,
    recovers_after_heal,
);

/// Dials TCP with a connect timeout but none of kv's HTTP/2 keep-alive settings.
struct NoKeepAliveDialer;

impl Dialer for NoKeepAliveDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let endpoint =
            Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
        Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy())
    }
}

/// Without keep-alive a pooled connection that crossed a cut stays dead after the heal: the
/// recovery case must catch that (it is what the suite exists for).
#[tokio::test]
async fn the_recovery_case_fails_for_a_dialer_without_keep_alive() {
    let net = TcpNet::start()
        .await
        .expect("loopback listeners")
        .with_dialer(Arc::new(NoKeepAliveDialer));
    let outcome = AssertUnwindSafe(net_suite::recovers_after_heal(&net as &dyn NetUnderTest))
        .catch_unwind()
        .await;
    let panic = outcome.expect_err("a channel without keep-alive recovered from a dead link");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("no answer"),
        "failed for another reason: {msg}"
    );
}
