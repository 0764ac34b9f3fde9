//! Writes, reads and compare-and-swaps a key through the client library.
//!
//! Run against a local cluster: `kv local up`, then
//! `cargo run -p kv-client --example basic -- 127.0.0.1:7001`.

use kv_client::{Client, ClientConfig, Expected, Options, Routing};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), kv_client::Error> {
    let seed = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".into());
    let mut config = ClientConfig::new([seed]);
    config.routing = Routing::TokenAware;
    config.timeout = Duration::from_secs(2);
    let client = Client::connect(config).await?;

    let written = client
        .put("cp", b"example:counter", b"1", Options::default())
        .await?;
    println!(
        "put committed at {:?} via {}",
        written.version, written.served_by
    );

    let got = client
        .get("cp", b"example:counter", Options::default())
        .await?;
    println!(
        "get -> {:?}",
        got.value.as_deref().map(String::from_utf8_lossy)
    );

    let swapped = client
        .cas(
            "cp",
            b"example:counter",
            Expected::Value(b"1".to_vec()),
            b"2",
            Options::default(),
        )
        .await?;
    println!("cas 1 -> 2 succeeded: {}", swapped.succeeded);

    match client.put("cp", b"", b"x", Options::default()).await {
        Err(e) => println!("an empty key is refused: {e}"),
        Ok(_) => unreachable!("the server refuses empty keys"),
    }
    Ok(())
}
