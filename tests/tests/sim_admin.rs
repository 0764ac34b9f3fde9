//! Cluster administration in simulation: keyspaces created through the metadata Raft group are
//! seen by every node; fault injection is refused without `--chaos` and partitions with it.

use chaos::faults::{FaultClient, FaultError};
use kv_testkit::sim::{add_seeded_nodes, client, eventually, SimOptions, TurmoilDialer};
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
    let mut sim = sim();
    // n1 and n2 allow fault injection; n3 does not.
    let opts = SimOptions {
        tweak: Arc::new(|cfg| cfg.chaos = cfg.name != "n3"),
        ..SimOptions::default()
    };
    add_seeded_nodes(&mut sim, &opts, SEED);
    sim.client("chaos", async {
        let peers = [("n1", "n1:7000"), ("n2", "n2:7000"), ("n3", "n3:7000")];
        let mut faults = FaultClient::new(peers, TurmoilDialer)?;
        let err = faults.partition_one_way("n3", "n1").await.unwrap_err();
        assert!(
            matches!(&err, FaultError::NotEnabled { node, .. } if node == "n3"),
            "{err}"
        );
        assert!(err.to_string().contains("--chaos"), "{err}");
        assert!(faults.faults().node("n3").is_clear());
        // A client that believes in a fourth node names a peer id n1 does not know.
        let mut ghost =
            FaultClient::new(peers.into_iter().chain([("n9", "n9:7000")]), TurmoilDialer)?;
        let err = ghost.partition_one_way("n1", "n9").await.unwrap_err();
        assert!(
            matches!(&err, FaultError::Rejected { node, .. } if node == "n1"),
            "{err}"
        );
        assert!(err.to_string().contains("not a member"), "{err}");
        let err = faults.slow("n1", "n2", 3_600_000).await.unwrap_err();
        assert!(
            matches!(&err, FaultError::Rejected { node, .. } if node == "n1"),
            "{err}"
        );
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert!(faults.faults().node("n1").is_clear());

        // n1 drops its traffic to n2 and n3 (one way: n3 takes no faults), so it hears no
        // answer from either and cannot reach any majority.
        faults.partition_one_way("n1", "n2").await?;
        faults.partition_one_way("n1", "n3").await?;
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
        assert!(
            matches!(
                err,
                kv_client::Error::Unavailable(_) | kv_client::Error::NotApplied(_)
            ),
            "{err}"
        );

        // Healing clears the faults (n3, without --chaos, holds none), and CP serves n1 again.
        faults.heal_all().await?;
        assert!(faults.faults().node("n1").is_clear());
        eventually(Duration::from_secs(30), || async {
            c.put("cp", b"k", b"v", Default::default()).await
        })
        .await;

        // A clock pushed a minute ahead on n2, beyond the 500 ms maximum clock offset: n1 and
        // n3 refuse n2's timestamps, so a write through n2 at `all` fails quoting the refusal,
        // n1 counts it, and n1's clock does not move.
        faults.skew("n2", 60_000).await?;
        let via_n2 = client(&["n2:7000"], Duration::from_secs(2)).await?;
        let all = kv_client::Options {
            consistency: kv_client::Consistency::All,
            ..Default::default()
        };
        let err = via_n2
            .put("ap", b"skewed", b"from the future", all.clone())
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
            err.to_string().contains("maximum clock offset of 500 ms"),
            "{err}"
        );
        let status = c.status(Some("n1:7000")).await?;
        assert!(status.clock_skew_events > 0, "n1 counted no skew");
        // At `one` n2's own replica is enough: its version shows n2's skewed clock, and n1's
        // next write is stamped by n1's own clock, not dragged a minute ahead.
        let one = kv_client::Options {
            consistency: kv_client::Consistency::One,
            ..Default::default()
        };
        let skewed = via_n2.put("ap", b"probe", b"v", one).await?;
        let skewed_ms = skewed.version.and_then(|v| v.hlc).expect("hlc").physical_ms;
        let mine = c.put("ap", b"after", b"v", all).await?;
        let mine_ms = mine.version.and_then(|v| v.hlc).expect("hlc").physical_ms;
        assert!(
            mine_ms + 30_000 < skewed_ms,
            "{mine_ms} vs n2's {skewed_ms}"
        );

        // A partition both ways needs both sides: n1 takes its half, n3 refuses its own, and
        // the client remembers exactly that (the skew on n2 stays in place).
        let err = faults.partition(&["n1"], &["n3"]).await.unwrap_err();
        assert!(
            matches!(&err, FaultError::NotEnabled { node, .. } if node == "n3"),
            "{err}"
        );
        assert_eq!(faults.faults().request("n1").drop_to, [3]);
        assert_eq!(faults.faults().request("n2").clock_skew_ms, 60_000);
        assert!(faults.faults().node("n3").is_clear());
        faults.heal_all().await?;
        assert!(faults.faults().node("n1").is_clear() && faults.faults().node("n2").is_clear());
        Ok(())
    });
    sim.run().unwrap();
}
