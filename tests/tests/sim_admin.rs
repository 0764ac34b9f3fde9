//! Cluster administration in simulation: keyspaces created through the metadata Raft group are
//! seen by every node; fault injection is refused without `--chaos` and partitions with it.

use kv_testkit::sim::{add_seeded_nodes, client, eventually, SimOptions};
use std::sync::Arc;
use std::time::Duration;

const SEED: u64 = 7;

fn sim() -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(SEED)
        .build()
}

fn keyspace(name: &str, mode: kv_proto::v1::Mode, replicas: u32) -> kv_proto::v1::Keyspace {
    kv_proto::v1::Keyspace {
        name: name.into(),
        mode: mode as i32,
        replicas,
        read_replicas: 0,
        write_replicas: 0,
    }
}

#[test]
fn a_keyspace_created_through_one_node_is_served_by_every_node() {
    let mut sim = sim();
    add_seeded_nodes(&mut sim, &SimOptions::default(), SEED);
    sim.client("admin", async {
        let n1 = client(&["n1:7000"], Duration::from_secs(5)).await?;
        // The metadata group needs a leader first; creation is retried until it has one.
        let created = eventually(Duration::from_secs(30), || {
            n1.create_keyspace(keyspace("orders", kv_proto::v1::Mode::Ap, 2))
        })
        .await;
        assert_eq!(created.name, "orders");
        assert_eq!(created.replicas, 2);
        let cp = eventually(Duration::from_secs(30), || {
            n1.create_keyspace(keyspace("ledger", kv_proto::v1::Mode::Cp, 3))
        })
        .await;
        assert_eq!(cp.mode, kv_proto::v1::Mode::Cp as i32);

        // Creating the same definition again is a no-op; another definition is refused.
        n1.create_keyspace(keyspace("orders", kv_proto::v1::Mode::Ap, 2))
            .await?;
        let err = n1
            .create_keyspace(keyspace("orders", kv_proto::v1::Mode::Cp, 3))
            .await
            .unwrap_err();
        assert!(matches!(err, kv_client::Error::AlreadyExists(_)), "{err}");
        let err = n1
            .create_keyspace(keyspace("wide", kv_proto::v1::Mode::Cp, 5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must be 3"), "{err}");
        let err = n1
            .create_keyspace(keyspace("bad name!", kv_proto::v1::Mode::Ap, 3))
            .await
            .unwrap_err();
        assert!(matches!(err, kv_client::Error::InvalidArgument(_)), "{err}");

        // Every node learns the keyspaces and serves them.
        for addr in ["n2:7000", "n3:7000"] {
            let c = client(&[addr], Duration::from_secs(5)).await?;
            eventually(Duration::from_secs(30), || async {
                c.put("orders", b"o1", b"pending", Default::default()).await
            })
            .await;
            let got = c.get("orders", b"o1", Default::default()).await?;
            assert_eq!(got.value.as_deref(), Some(&b"pending"[..]));
            c.put("ledger", b"o1", addr.as_bytes(), Default::default())
                .await?;
            // CP keyspaces share Raft groups but never each other's keys.
            let in_cp = c.get("cp", b"o1", Default::default()).await?;
            assert_eq!(in_cp.value, None);
            let names: Vec<String> = c
                .list_keyspaces()
                .await?
                .into_iter()
                .map(|k| k.name)
                .collect();
            assert_eq!(names, ["ap", "cp", "ledger", "orders"]);
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn fault_injection_is_refused_without_chaos_and_partitions_with_it() {
    use kv_client::net::Dialer;
    use kv_proto::internal::internal_client::InternalClient;
    use kv_proto::internal::ChaosRequest;
    let mut sim = sim();
    // n1 and n2 allow fault injection; n3 does not.
    let opts = SimOptions {
        tweak: Arc::new(|cfg| cfg.chaos = cfg.name != "n3"),
        ..SimOptions::default()
    };
    add_seeded_nodes(&mut sim, &opts, SEED);
    sim.client("chaos", async {
        let internal = |addr: &str| {
            InternalClient::new(
                kv_testkit::sim::TurmoilDialer
                    .channel(addr)
                    .expect("address"),
            )
        };
        let isolate = |others: Vec<u64>| ChaosRequest {
            drop_to: others,
            ..Default::default()
        };
        let err = internal("n3:7000")
            .chaos(isolate(vec![1, 2]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("--chaos"), "{}", err.message());
        let err = internal("n1:7000")
            .chaos(isolate(vec![9]))
            .await
            .unwrap_err();
        assert!(err.message().contains("not a member"), "{}", err.message());

        // n1 drops its traffic to n2 and n3, and they drop theirs to n1 (n3 through n2's
        // view is enough for the test: n1 alone cannot reach any majority).
        internal("n1:7000").chaos(isolate(vec![2, 3])).await?;
        let c = client(&["n1:7000"], Duration::from_secs(2)).await?;
        eventually(Duration::from_secs(30), || async {
            let s = c.status(Some("n1:7000")).await.map_err(|e| e.to_string())?;
            let down = s
                .nodes
                .iter()
                .filter(|n| n.state == kv_proto::v1::NodeState::Down as i32)
                .count();
            if down == 2 {
                Ok(())
            } else {
                Err(format!("{down} down"))
            }
        })
        .await;
        // AP stays available at consistency one; CP refuses (n1 cannot reach a majority).
        let one = kv_client::Options {
            consistency: kv_client::Consistency::One,
            ..Default::default()
        };
        c.put("ap", b"k", b"v", one).await?;
        let err = c
            .put("cp", b"k", b"v", Default::default())
            .await
            .unwrap_err();
        assert!(matches!(err, kv_client::Error::Unavailable(_)), "{err}");

        // Healing: an empty request clears the faults, and CP serves n1 again.
        internal("n1:7000").chaos(ChaosRequest::default()).await?;
        eventually(Duration::from_secs(30), || async {
            c.put("cp", b"k", b"v", Default::default()).await
        })
        .await;

        // A clock pushed a minute ahead on n2: n1 accepts n2's writes (last-write-wins needs
        // every replica to take them), advances its clock, and counts the skew.
        internal("n2:7000")
            .chaos(ChaosRequest {
                clock_skew_ms: 60_000,
                ..Default::default()
            })
            .await?;
        let via_n2 = client(&["n2:7000"], Duration::from_secs(2)).await?;
        let all = kv_client::Options {
            consistency: kv_client::Consistency::All,
            ..Default::default()
        };
        let w = eventually(Duration::from_secs(30), || {
            via_n2.put("ap", b"skewed", b"from the future", all.clone())
        })
        .await;
        let skewed_ms = w
            .version
            .and_then(|v| v.hlc)
            .expect("an AP version")
            .physical_ms;
        let status = c.status(Some("n1:7000")).await?;
        assert!(status.clock_skew_events > 0, "n1 counted no skew");
        // n1's next write is ordered after the skewed one.
        let mine = c.put("ap", b"after", b"v", all).await?;
        assert!(mine.version.and_then(|v| v.hlc).expect("hlc").physical_ms >= skewed_ms);
        Ok(())
    });
    sim.run().unwrap();
}
