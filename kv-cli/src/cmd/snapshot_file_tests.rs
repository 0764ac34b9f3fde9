use super::*;

fn header(mode: &str) -> Header {
    Header {
        keyspace: "cp".into(),
        mode: mode.into(),
        replicas: 3,
        partitions: 4,
        created_ms: 1,
    }
}

fn cp_items() -> Vec<Item> {
    vec![
        Item::Partition {
            partition: 0,
            revision: 9,
            served_by: "n1".into(),
        },
        Item::Record(Record {
            key: b"a".to_vec(),
            value: Some(vec![0, 255, 10, 13]),
            revision: 7,
            hlc: None,
        }),
        Item::Partition {
            partition: 3,
            revision: 4,
            served_by: "n2".into(),
        },
        Item::Record(Record {
            key: "ключ\n".as_bytes().to_vec(),
            value: Some(Vec::new()),
            revision: 4,
            hlc: None,
        }),
    ]
}

fn write(dir: &Path, h: &Header, items: &[Item]) -> PathBuf {
    let path = dir.join("backup.jsonl");
    let mut w = Writer::create(&path, h).unwrap();
    for i in items {
        w.item(i).unwrap();
    }
    w.finish().unwrap();
    path
}

fn read_all(path: &Path) -> Result<(Header, Vec<Item>), FileError> {
    let mut r = Reader::open(path)?;
    let mut items = Vec::new();
    while let Some(i) = r.next_item()? {
        items.push(i);
    }
    Ok((r.header, items))
}

#[test]
fn a_written_backup_reads_back_exactly_binary_keys_and_empty_values_included() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &header("cp"), &cp_items());
    assert_eq!(read_all(&path).unwrap(), (header("cp"), cp_items()));
    assert_eq!(verify(&path).unwrap().1, 2);
    assert!(!dir.path().join("backup.jsonl.partial").exists());
}

#[test]
fn ap_tombstones_and_timestamps_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![
        Item::Partition {
            partition: 1,
            revision: 0,
            served_by: "n1,n2".into(),
        },
        Item::Record(Record {
            key: b"gone".to_vec(),
            value: None,
            revision: 0,
            hlc: Some((1_700_000_000_000, 3, 2)),
        }),
        Item::Record(Record {
            key: b"here".to_vec(),
            value: Some(b"v".to_vec()),
            revision: 0,
            hlc: Some((1_700_000_000_001, 0, 1)),
        }),
    ];
    let path = write(dir.path(), &header("ap"), &items);
    assert_eq!(read_all(&path).unwrap().1, items);
}

fn refused(contents: &[u8], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, contents).unwrap();
    match verify(&path) {
        Err(FileError::Invalid { reason, .. }) => {
            assert!(reason.contains(what), "{reason:?} should mention {what:?}")
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn truncated_altered_and_foreign_files_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(write(dir.path(), &header("cp"), &cp_items())).unwrap();
    // Cut anywhere: mid-line, or cleanly before the end line.
    refused(&good[..good.len() - 5], "truncated");
    let before_end = good[..good.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap();
    refused(&good[..=before_end], "no end line");
    // One flipped digit inside a record, still valid JSON and base64.
    let text = String::from_utf8(good.clone()).unwrap();
    refused(
        text.replacen("\"revision\":7", "\"revision\":8", 1)
            .as_bytes(),
        "checksum mismatch",
    );
    refused(
        text.replacen("AP8KDQ==", "AP8K!Q==", 1).as_bytes(),
        "base64",
    );
    let mut extra = good.clone();
    extra.extend_from_slice(b"{\"key\":\"YQ==\",\"value\":\"YQ==\",\"revision\":1}\n");
    refused(&extra, "after the end line");
    refused(b"", "empty");
    refused(b"{\"hello\":1}\n", "not a kv backup");
    refused(b"\xff\xfe garbage\n", "line 1");
}

#[test]
fn base64_decodes_the_rfc_4648_vectors_and_refuses_the_rest() {
    for (plain, enc) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes(), "{enc}");
        assert_eq!(crate::output::base64(plain.as_bytes()), enc);
    }
    for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "é"] {
        assert_eq!(base64_decode(bad), None, "{bad}");
    }
}
