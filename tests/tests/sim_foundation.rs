//! Foundation simulation tests: three simulated hosts running real nodes over turmoil's network.

use std::time::Duration;
use tests::{add_nodes, client, SimOptions};

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
    add_nodes(&mut sim, &SimOptions::default());
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
    add_nodes(&mut sim, &SimOptions::default());
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

        // None of the refused writes changed the key.
        let got = c.get("cp", b"kept", Default::default()).await?;
        assert_eq!(got.value.as_deref(), Some(&b"original"[..]));
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn keys_owned_by_a_down_node_fail_fast_naming_it_and_the_rest_are_served() {
    let mut sim = sim();
    add_nodes(&mut sim, &SimOptions::default());
    // Find keys owned by each node before the crash.
    sim.client("setup", async {
        let c = client(&["n1:7000"], Duration::from_secs(5)).await?;
        for i in 0..40 {
            c.put("cp", format!("k{i}").as_bytes(), b"v", Default::default())
                .await?;
        }
        Ok(())
    });
    while !sim.step().unwrap() {}
    sim.crash("n3");
    sim.client("after-crash", async {
        let c = client(&["n1:7000"], Duration::from_secs(5)).await?;
        // A crashed simulated host never resets connections, so wait until n1's heartbeats
        // mark n3 down (on real TCP a killed process's connections are refused at once).
        tests::eventually(Duration::from_secs(20), || async {
            let status = c.status(Some("n1:7000")).await.map_err(|e| e.to_string())?;
            let n3 = status
                .nodes
                .iter()
                .find(|n| n.name == "n3")
                .expect("n3 listed");
            if n3.state == kv_proto::v1::NodeState::Down as i32 {
                Ok(())
            } else {
                Err(format!("n3 is {:?}", n3.state))
            }
        })
        .await;
        let (mut served, mut refused) = (0, 0);
        for i in 0..40 {
            let start = tokio::time::Instant::now();
            match c
                .get("cp", format!("k{i}").as_bytes(), Default::default())
                .await
            {
                Ok(got) => {
                    assert_eq!(got.value.as_deref(), Some(&b"v"[..]));
                    assert_ne!(got.served_by, "n3");
                    served += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(matches!(e, kv_client::Error::Unavailable(_)), "{msg}");
                    assert!(
                        msg.contains("n3 (n3:7000)"),
                        "error must name the node: {msg}"
                    );
                    // Fast: well inside the 5 s deadline (the dial is refused at once).
                    assert!(
                        start.elapsed() < Duration::from_secs(2),
                        "took {:?}",
                        start.elapsed()
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            served > 0 && refused > 0,
            "served {served}, refused {refused}"
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_node_with_another_peer_list_is_refused_at_handshake() {
    let mut sim = sim();
    add_nodes(&mut sim, &SimOptions::default());
    // n4 believes the cluster is n1..n4: the others refuse it, and it stops with the reason.
    let peers = tests::members(4);
    sim.host("n4", move || {
        let peers = peers.clone();
        async move {
            let cfg = kv_server::config::NodeConfig::new("n4", tests::SIM_CLUSTER, peers);
            let node = kv_server::node::Node::new(
                cfg,
                std::sync::Arc::new(kv_server::storage::memory::MemoryEngine::new()),
                std::sync::Arc::new(tests::TurmoilDialer),
                std::sync::Arc::new(kv_server::clock::TokioClock::new(tests::SIM_EPOCH_MS)),
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
