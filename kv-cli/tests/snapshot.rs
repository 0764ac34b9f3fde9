//! `kv snapshot save` / `restore` on real processes: a CP and an AP keyspace of one 3-node
//! cluster are saved and restored into a second, fresh cluster, and every key is compared
//! (binary keys, values large enough that one partition travels in several chunks, AP deletes
//! that must stay deleted, also over a newer delete on the target). Corrupted and truncated
//! files are refused with exit code 2 and change nothing.

mod common;

use common::*;

use kv_client::placement::partition_for_key;
use kv_client::{Client, ClientConfig, Options};
use kv_proto::v1 as pb;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Keys written to each keyspace (besides the large values).
const KEYS: usize = 200;
/// Size of each large value: three of them share one partition, so its snapshot takes
/// several 1 MiB chunks.
const LARGE_VALUE_BYTES: usize = 600 * 1024;

async fn client(dir: &Path) -> Client {
    let mut cfg = ClientConfig::new(addrs(dir));
    cfg.timeout = Duration::from_secs(10);
    Client::connect(cfg).await.expect("connecting")
}

/// Key `i`: binary (a zero byte and a non-UTF-8 byte) so base64 is exercised.
fn key(i: usize) -> Vec<u8> {
    let mut k = format!("key-{i:04}-").into_bytes();
    k.extend_from_slice(&[0, 0xff]);
    k
}

/// Writes the CP data set; returns every key with its value.
async fn fill_cp(c: &Client) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut expected = BTreeMap::new();
    for i in 0..KEYS {
        let value = format!("value {i}").into_bytes();
        c.put("cp", &key(i), &value, Options::default())
            .await
            .unwrap();
        expected.insert(key(i), value);
    }
    // Three large values in the partition of key 0.
    let p = partition_for_key(&key(0), 32);
    let mut big = 0;
    for j in 0.. {
        let k = format!("big-{j}").into_bytes();
        if partition_for_key(&k, 32) != p {
            continue;
        }
        let value = vec![(j % 251) as u8; LARGE_VALUE_BYTES];
        c.put("cp", &k, &value, Options::default()).await.unwrap();
        expected.insert(k, value);
        big += 1;
        if big == 3 {
            break;
        }
    }
    // An overwrite and a delete: only the last state is in the backup.
    c.put("cp", &key(1), b"second", Options::default())
        .await
        .unwrap();
    expected.insert(key(1), b"second".to_vec());
    c.delete("cp", &key(2), Options::default()).await.unwrap();
    expected.remove(&key(2));
    expected
}

/// Writes the AP data set (every tenth key deleted); returns the live keys with their values.
async fn fill_ap(c: &Client) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut expected = BTreeMap::new();
    for i in 0..KEYS {
        let value = format!("ap value {i}").into_bytes();
        c.put("ap", &key(i), &value, Options::default())
            .await
            .unwrap();
        if i % 10 == 0 {
            c.delete("ap", &key(i), Options::default()).await.unwrap();
        } else {
            expected.insert(key(i), value);
        }
    }
    expected
}

/// Checks that `keyspace` in the cluster of `c` holds exactly `expected` among keys 0..KEYS
/// and the large ones.
async fn compare(c: &Client, keyspace: &str, expected: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for i in 0..KEYS {
        let got = c.get(keyspace, &key(i), Options::default()).await.unwrap();
        let want = expected.get(&key(i));
        assert_eq!(got.value.as_ref(), want, "{keyspace} key {i} after restore");
    }
    for (k, v) in expected.iter().filter(|(k, _)| k.starts_with(b"big-")) {
        let got = c.get(keyspace, k, Options::default()).await.unwrap();
        assert!(got.value.as_ref() == Some(v), "{keyspace} large value");
    }
}

fn json_out(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(ok(&kv(dir, args)).trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_keyspace_restores_into_a_fresh_cluster_key_for_key_and_bad_files_change_nothing() {
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let (src, dst) = (source.path(), target.path());
    let _c1 = Cleanup(src);
    let _c2 = Cleanup(dst);
    ok(&kv(src, &["local", "up", "--base-port", "0"]));
    ok(&kv(dst, &["local", "up", "--base-port", "0"]));

    let c = client(src).await;
    let cp_expected = fill_cp(&c).await;
    let ap_expected = fill_ap(&c).await;

    let cp_file = src.join("cp.backup");
    let ap_file = src.join("ap.backup");
    let saved = json_out(
        src,
        &["snapshot", "save", cp_file.to_str().unwrap(), "-o", "json"],
    );
    assert_eq!(saved["records"], cp_expected.len() as u64, "{saved}");
    assert_eq!(saved["revisions"].as_array().unwrap().len(), 32, "{saved}");
    let saved = json_out(
        src,
        &[
            "-k",
            "ap",
            "snapshot",
            "save",
            ap_file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    // Live keys and tombstones both travel.
    assert_eq!(saved["records"], KEYS as u64, "{saved}");

    // Bad files first, against the fresh cluster: refused, exit 2, nothing created.
    let good = std::fs::read(&cp_file).unwrap();
    let corrupt = dst.join("corrupt.backup");
    let mut bytes = good.clone();
    // A letter in the middle (inside a value's base64): the file still parses, only the
    // checksum can tell.
    let at = (bytes.len() / 2..)
        .find(|i| bytes[*i].is_ascii_alphabetic())
        .unwrap();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&corrupt, &bytes).unwrap();
    let truncated = dst.join("truncated.backup");
    std::fs::write(&truncated, &good[..good.len() * 2 / 3]).unwrap();
    for (bad, why) in [(&corrupt, "checksum"), (&truncated, "truncated")] {
        let out = kv(
            dst,
            &[
                "snapshot",
                "restore",
                bad.to_str().unwrap(),
                "--into",
                "copy",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{why}: {err}");
        assert!(
            err.contains(why) && err.contains("Nothing was restored"),
            "{why}: {err}"
        );
    }
    let list = ok(&kv(dst, &["keyspace", "list", "-o", "json"]));
    assert!(
        !list.contains("\"copy\""),
        "a refused restore created a keyspace: {list}"
    );

    // The real restore, and a comparison of every key.
    let d = client(dst).await;
    let restored = json_out(
        dst,
        &[
            "snapshot",
            "restore",
            cp_file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(restored["records"], cp_expected.len() as u64, "{restored}");
    ok(&kv(
        dst,
        &["snapshot", "restore", ap_file.to_str().unwrap()],
    ));
    compare(&d, "cp", &cp_expected).await;
    compare(&d, "ap", &ap_expected).await;

    // The target's own backup matches the source's record for record (CP revisions aside:
    // they are the new cluster's log indexes).
    let again = dst.join("again.backup");
    ok(&kv(dst, &["snapshot", "save", again.to_str().unwrap()]));
    let keys_values = |path: &Path| -> Vec<(String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Some((
                    v["key"].as_str()?.to_string(),
                    v["value"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    assert_eq!(keys_values(&again), keys_values(&cp_file));

    // A delete on the target newer than the backup wins over a second restore: no key comes
    // back from the dead.
    d.delete("ap", &key(1), Options::default()).await.unwrap();
    ok(&kv(
        dst,
        &["snapshot", "restore", ap_file.to_str().unwrap()],
    ));
    let got = d.get("ap", &key(1), Options::default()).await.unwrap();
    assert!(
        got.value.is_none(),
        "an older backup brought back a deleted key"
    );
    let got = d.get("ap", &key(3), Options::default()).await.unwrap();
    assert!(
        got.value.is_some(),
        "a live key was lost by the second restore"
    );

    // Bad backup RPCs are refused with INVALID_ARGUMENT naming the problem, and write nothing.
    let mut g = pb::kv_client::KvClient::connect(format!("http://{}", addrs(dst)[0]))
        .await
        .unwrap();
    let record = |key: &[u8], physical_ms: Option<u64>| pb::SnapshotRecord {
        key: key.to_vec(),
        value: b"v".to_vec(),
        tombstone: false,
        version: physical_ms.map(|physical_ms| pb::Version {
            revision: 0,
            hlc: Some(pb::Hlc {
                physical_ms,
                logical: 0,
                node_id: 1,
            }),
        }),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let import = |keyspace: &str, records: Vec<pb::SnapshotRecord>| pb::ImportRecordsRequest {
        keyspace: keyspace.into(),
        records,
    };
    for (what, req, says) in [
        (
            "a timestamp an hour ahead",
            import(
                "ap",
                vec![
                    record(b"fresh", Some(now_ms)),
                    record(b"future", Some(now_ms + 3_600_000)),
                ],
            ),
            "maximum clock offset",
        ),
        (
            "no timestamp",
            import("ap", vec![record(b"fresh", None)]),
            "no timestamp",
        ),
        (
            "a CP keyspace",
            import("cp", vec![record(b"fresh", Some(now_ms))]),
            "is CP",
        ),
        (
            "too many records",
            import("ap", vec![record(b"fresh", Some(now_ms)); 1025]),
            "the limit is 1024",
        ),
    ] {
        let status = g.import_records(req).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }
    for key in [&b"fresh"[..], b"future"] {
        let got = d.get("ap", key, Options::default()).await.unwrap();
        assert!(got.value.is_none(), "a refused import wrote {key:?}");
    }
    let status = g
        .snapshot_partition(pb::SnapshotPartitionRequest {
            keyspace: "cp".into(),
            partition: 32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Q = 32"), "{}", status.message());

    // With one node of three down, both keyspaces still save, whole: CP partitions from
    // their (new) leaders, AP partitions from the two replicas that answer.
    ok(&kv(src, &["local", "kill", "n3"]));
    for (args, before) in [
        // Generous: the dead node's partitions elect new leaders first.
        (vec!["--timeout-ms", "30000", "snapshot", "save"], &cp_file),
        (vec!["-k", "ap", "snapshot", "save"], &ap_file),
    ] {
        let degraded = src.join("degraded.backup");
        let mut args = args;
        args.push(degraded.to_str().unwrap());
        ok(&kv(src, &args));
        assert_eq!(keys_values(&degraded), keys_values(before), "{args:?}");
    }
}
