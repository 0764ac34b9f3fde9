//! Foundation simulation tests: three simulated hosts running real nodes over turmoil's network.

use kv_testkit::sim::{add_seeded_nodes, client, SimOptions};
use std::time::Duration;

const SEED: u64 = 1;

fn sim() -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .rng_seed(SEED)
        .build()
}

#[test]
fn put_through_one_node_is_read_through_every_other() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("client", async {
        let writer = client(&["n1:7000"], Duration::from_secs(5)).await?;
        for i in 0..20 {
            writer
                .put(
                    "cp",
                    format!("key-{i}").as_bytes(),
                    format!("v{i}").as_bytes(),
                    Default::default(),
                )
                .await?;
        }
        for reader_addr in ["n2:7000", "n3:7000"] {
            let reader = client(&[reader_addr], Duration::from_secs(5)).await?;
            for i in 0..20 {
                let got = reader
                    .get("cp", format!("key-{i}").as_bytes(), Default::default())
                    .await?;
                assert_eq!(
                    got.value,
                    Some(format!("v{i}").into_bytes()),
                    "via {reader_addr}"
                );
            }
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("client", async {
        let c = client(&["n1:7000"], Duration::from_secs(5)).await?;
        c.put("cp", b"kept", b"original", Default::default())
            .await?;

        let err = c
            .put("cp", b"", b"v", Default::default())
            .await
            .unwrap_err();
        assert!(matches!(err, kv_client::Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("key is empty"), "{err}");

        let long_key = vec![b'k'; 1025];
        let err = c
            .put("cp", &long_key, b"v", Default::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("1025 bytes, over the limit of 1024"),
            "{err}"
        );
        let err = c
            .get("cp", &long_key, Default::default())
            .await
            .unwrap_err();
        assert!(matches!(err, kv_client::Error::InvalidArgument(_)), "{err}");
        // A key of exactly the limit is fine.
        c.put("cp", &[b'k'; 1024], b"v", Default::default()).await?;

        let big = vec![0u8; kv_server::types::DEFAULT_MAX_VALUE_BYTES + 1];
        let err = c
            .put("cp", b"kept", &big, Default::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("over the limit of 1048576 bytes"),
            "{err}"
        );

        let err = c
            .put("nope", b"kept", b"v", Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, kv_client::Error::KeyspaceNotFound(_)),
            "{err}"
        );
        assert!(err.to_string().contains("\"nope\" does not exist"), "{err}");
        assert!(err.to_string().contains("ap, cp"), "{err}");

        let err = c
            .cas(
                "ap",
                b"kept",
                kv_client::Expected::Absent,
                b"v",
                Default::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, kv_client::Error::FailedPrecondition(_)),
            "{err}"
        );

        // A deadline far in the future is cut to the node's maximum, not an overflow.
        {
            use kv_client::net::Dialer;
            let mut raw = kv_proto::v1::kv_client::KvClient::new(
                kv_testkit::sim::TurmoilDialer.channel("n2:7000")?,
            );
            let mut req = tonic::Request::new(kv_proto::v1::GetRequest {
                keyspace: "cp".into(),
                key: b"kept".to_vec(),
                options: None,
            });
            req.metadata_mut()
                .insert("grpc-timeout", "99999999H".parse().unwrap());
            req.metadata_mut()
                .insert("kv-forwarded", "4294967295".parse().unwrap());
            // Past the hop limit a follower does not forward: it names the leader instead.
            match raw.get(req).await {
                Ok(got) => assert_eq!(got.into_inner().value, b"original"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
                    assert!(status.metadata().get("kv-leader").is_some(), "{status:?}");
                }
            }
        }

        // None of the refused writes changed the key.
        let got = c.get("cp", b"kept", Default::default()).await?;
        assert_eq!(got.value.as_deref(), Some(&b"original"[..]));
        Ok(())
    });
    sim.run().unwrap();
}

/// Waits until `observer` sees every node in `down` as down.
async fn wait_until_down(c: &kv_client::Client, observer: &str, down: &[&str]) {
    kv_testkit::sim::eventually(Duration::from_secs(30), || async {
        let status = c.status(Some(observer)).await.map_err(|e| e.to_string())?;
        for name in down {
            let n = status
                .nodes
                .iter()
                .find(|n| n.name == *name)
                .expect("listed");
            if n.state != kv_proto::v1::NodeState::Down as i32 {
                return Err(format!("{name} is {:?}", n.state));
            }
        }
        Ok(())
    })
    .await;
}

#[test]
fn one_node_down_serves_every_key_and_a_lost_majority_fails_fast_naming_the_partition() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("setup", async {
        let c = client(&["n1:7000"], Duration::from_secs(5)).await?;
        for i in 0..20 {
            c.put("cp", format!("k{i}").as_bytes(), b"v", Default::default())
                .await?;
            c.put("ap", format!("k{i}").as_bytes(), b"v", Default::default())
                .await?;
        }
        Ok(())
    });
    while !sim.step().unwrap() {}
    sim.crash("n3");
    sim.client("one-down", async {
        let c = client(&["n1:7000"], Duration::from_secs(5)).await?;
        wait_until_down(&c, "n1:7000", &["n3"]).await;
        // Both modes keep serving every key with one replica of three down.
        for ks in ["cp", "ap"] {
            for i in 0..20 {
                let got = c
                    .get(ks, format!("k{i}").as_bytes(), Default::default())
                    .await?;
                assert_eq!(got.value.as_deref(), Some(&b"v"[..]), "{ks} k{i}");
                c.put(ks, format!("k{i}").as_bytes(), b"w", Default::default())
                    .await?;
            }
        }
        Ok(())
    });
    while !sim.step().unwrap() {}
    sim.crash("n2");
    sim.client("majority-down", async {
        let deadline = Duration::from_secs(2);
        let c = client(&["n1:7000"], deadline).await?;
        wait_until_down(&c, "n1:7000", &["n2", "n3"]).await;
        for i in 0..5 {
            let key = format!("k{i}");
            let start = tokio::time::Instant::now();
            let err = c
                .get("cp", key.as_bytes(), Default::default())
                .await
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    kv_client::Error::Unavailable(_) | kv_client::Error::NotApplied(_)
                ),
                "{msg}"
            );
            assert!(
                msg.contains("partition"),
                "the error names the partition: {msg}"
            );
            assert!(
                start.elapsed() <= deadline,
                "not within the deadline: {:?}",
                start.elapsed()
            );
            let start = tokio::time::Instant::now();
            let err = c
                .put("cp", key.as_bytes(), b"x", Default::default())
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    kv_client::Error::Unavailable(_) | kv_client::Error::NotApplied(_)
                ),
                "{err}"
            );
            assert!(
                start.elapsed() <= deadline,
                "not within the deadline: {:?}",
                start.elapsed()
            );
            // AP stays available at consistency one, and says how many answered at quorum.
            let one = kv_client::Options {
                consistency: kv_client::Consistency::One,
                ..Default::default()
            };
            c.put("ap", key.as_bytes(), b"x", one).await?;
            let err = c
                .get("ap", key.as_bytes(), Default::default())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("1 of the 2 required"), "{err}");
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_node_with_another_peer_list_is_refused_at_handshake() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    // n4 believes the cluster is n1..n4: the others refuse it, and it stops with the reason.
    let peers = kv_testkit::sim::members(4);
    sim.host("n4", move || {
        let peers = peers.clone();
        async move {
            let cfg = kv_server::config::NodeConfig::new("n4", kv_testkit::sim::SIM_CLUSTER, peers);
            let node = kv_server::node::Node::new(
                cfg,
                std::sync::Arc::new(kv_server::storage::memory::MemoryEngine::new()),
                std::sync::Arc::new(kv_testkit::sim::TurmoilDialer),
                std::sync::Arc::new(kv_server::clock::TokioClock::new(
                    kv_testkit::sim::SIM_EPOCH_MS,
                )),
            )?;
            let err = kv_server::server::heartbeat_loop(node).await.unwrap_err();
            assert!(err.contains("refused this node"), "{err}");
            assert!(err.contains("peer list differs"), "{err}");
            assert!(err.contains("n4=n4:7000"), "{err}");
            Ok(())
        }
    });
    sim.run().unwrap();
}

#[test]
fn routing_policies_spread_or_target_requests() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("client", async {
        let mut coordinators = std::collections::BTreeMap::new();
        for routing in [
            kv_client::Routing::RoundRobin,
            kv_client::Routing::LeastOutstanding,
            kv_client::Routing::TokenAware,
        ] {
            let mut cfg = kv_client::ClientConfig::new(["n1:7000"]);
            cfg.routing = routing;
            cfg.dialer = std::sync::Arc::new(kv_testkit::sim::TurmoilDialer);
            let c = kv_client::Client::connect(cfg).await?;
            let ring = c.refresh_ring().await?;
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..30 {
                let key = format!("r{i}");
                // An AP write is coordinated by the node that receives it.
                let r = c
                    .put("ap", key.as_bytes(), b"v", Default::default())
                    .await?;
                if routing == kv_client::Routing::TokenAware {
                    let p = kv_client::placement::partition_for_key(
                        key.as_bytes(),
                        ring.partition_count,
                    );
                    let owner = ring.partitions[p as usize].preference[0];
                    let name = &ring.members.iter().find(|m| m.id == owner).unwrap().name;
                    assert_eq!(&r.served_by, name, "token-aware sends {key} to its owner");
                }
                seen.insert(r.served_by);
            }
            coordinators.insert(format!("{routing:?}"), seen);
        }
        // Discovery found all three nodes from one seed, and round-robin used them all.
        assert_eq!(coordinators["RoundRobin"].len(), 3, "{coordinators:?}");
        // Token-aware sends each key to its partition's first replica: several nodes own
        // partitions, so more than one node coordinates.
        assert!(coordinators["TokenAware"].len() > 1, "{coordinators:?}");
        // Least-outstanding spreads requests that are in flight together over every node.
        let mut cfg = kv_client::ClientConfig::new(["n1:7000"]);
        cfg.routing = kv_client::Routing::LeastOutstanding;
        cfg.dialer = std::sync::Arc::new(kv_testkit::sim::TurmoilDialer);
        let c = kv_client::Client::connect(cfg).await?;
        let puts = (0..30).map(|i| {
            let c = c.clone();
            async move {
                c.put("ap", format!("lo{i}").as_bytes(), b"v", Default::default())
                    .await
            }
        });
        let mut concurrent = std::collections::BTreeSet::new();
        for r in futures::future::join_all(puts).await {
            concurrent.insert(r?.served_by);
        }
        assert_eq!(concurrent.len(), 3, "{concurrent:?}");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn grpc_reflection_lists_the_public_api_only() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("grpcurl", async {
        use kv_client::net::Dialer;
        let channel = kv_testkit::sim::TurmoilDialer.channel("n2:7000")?;
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(futures::stream::iter(vec![request]))
            .await?
            .into_inner();
        let answer = stream.message().await?.expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected answer {answer:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"kv.v1.Kv".to_string()), "{names:?}");
        // Node-to-node traffic is no business of clients (issue 12).
        assert!(
            !names.iter().any(|n| n.starts_with("kv.internal")),
            "{names:?}"
        );
        Ok(())
    });
    sim.run().unwrap();
}
