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
                .put("cp", format!("key-{i}").as_bytes(), format!("v{i}").as_bytes(), Default::default())
                .await?;
        }
        for reader_addr in ["n2:7000", "n3:7000"] {
            let reader = client(&[reader_addr], Duration::from_secs(5)).await?;
            for i in 0..20 {
                let got = reader.get("cp", format!("key-{i}").as_bytes(), Default::default()).await?;
                assert_eq!(got.value, Some(format!("v{i}").into_bytes()), "via {reader_addr}");
            }
        }
        Ok(())
    });
    sim.run().unwrap();
}
