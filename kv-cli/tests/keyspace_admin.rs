//! `kv keyspace list` and `kv keyspace create` on real processes with the first node of the
//! cluster killed (SIGKILL): both ask the next node instead of failing on the dead one, and the
//! created keyspace is listed and usable through the live nodes.

mod common;

use common::*;

use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The keyspace names in `kv keyspace list -o json`, which must succeed.
fn listed(dir: &std::path::Path) -> Vec<String> {
    // Generous: the metadata group may be electing a new leader on a loaded machine.
    let out = kv(
        dir,
        &["keyspace", "list", "-o", "json", "--timeout-ms", "20000"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["keyspaces"]
        .as_array()
        .expect("keyspaces")
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn keyspace_list_and_create_ask_the_next_node_when_the_first_is_dead() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    assert_eq!(listed(dir), ["ap", "cp"]);

    // SIGKILL the first node of the peer list: the one every admin call used to go to.
    let pid = cluster(dir)["nodes"][0]["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();

    assert_eq!(listed(dir), ["ap", "cp"]);
    let created = kv(
        dir,
        &[
            "keyspace",
            "create",
            "orders",
            "--mode",
            "ap",
            "--timeout-ms",
            "20000",
        ],
    );
    assert_eq!(created.status.code(), Some(0), "{}", text(&created));
    assert!(
        String::from_utf8_lossy(&created.stdout).contains("created keyspace orders"),
        "{}",
        text(&created)
    );
    assert_eq!(listed(dir), ["ap", "cp", "orders"]);
    // Usable: a write and a read through the live nodes.
    ok(&kv(dir, &["-k", "orders", "put", "o1", "shipped"]));
    let got = ok(&kv(dir, &["-k", "orders", "get", "o1"]));
    assert_eq!(got.trim(), "shipped");
    // Creating it again with the same definition is not an error; another definition is.
    ok(&kv(dir, &["keyspace", "create", "orders", "--mode", "ap"]));
    let other = kv(dir, &["keyspace", "create", "orders", "--mode", "cp"]);
    assert_ne!(other.status.code(), Some(0), "{}", text(&other));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("already exists"),
        "{}",
        text(&other)
    );
}
