//! The stored record format: a value or tombstone with its version, protected by a crc32 that is
//! checked on every read. **Architecture invariant:** a record whose checksum fails is reported
//! as `StorageError::Corrupt` (naming key, tree and data directory) and never returned.
//!
//! Layout (format 1), all integers big-endian:
//! `[format u8 = 1][version kind u8: 1 revision | 2 hlc][revision u64 | physical_ms u64, logical u32, node_id u64]`
//! `[tombstone u8][value_len u32][value bytes][crc32 u32 of everything before it]`

use super::engine::Tree;
use super::error::{Result, StorageError};
use crate::types::{Hlc, Version};
use std::sync::Arc;

/// Current on-disk record format.
pub const RECORD_FORMAT: u8 = 1;

/// A stored value (or tombstone) with the version it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Revision (CP) or HLC timestamp (AP).
    pub version: Version,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Encodes a record with its checksum.
pub fn encode(record: &StoredRecord) -> Vec<u8> {
    let value_len = record.value.as_ref().map_or(0, |v| v.len());
    let mut out = Vec::with_capacity(40 + value_len);
    out.push(RECORD_FORMAT);
    match record.version {
        Version::Revision(r) => {
            out.push(1);
            out.extend_from_slice(&r.to_be_bytes());
        }
        Version::Hlc(h) => {
            out.push(2);
            out.extend_from_slice(&h.physical_ms.to_be_bytes());
            out.extend_from_slice(&h.logical.to_be_bytes());
            out.extend_from_slice(&h.node_id.to_be_bytes());
        }
    }
    out.push(u8::from(record.value.is_none()));
    out.extend_from_slice(&(value_len as u32).to_be_bytes());
    if let Some(v) = &record.value {
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Why a record failed to decode (the caller adds key and location).
fn decode_inner(bytes: &[u8]) -> std::result::Result<StoredRecord, String> {
    if bytes.len() < 4 {
        return Err(format!("record too short ({} bytes)", bytes.len()));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored_crc = u32::from_be_bytes(crc_bytes.try_into().expect("4 bytes"));
    let crc = crc32fast::hash(body);
    if crc != stored_crc {
        return Err(format!(
            "checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    let mut r = Reader { buf: body };
    let format = r.u8()?;
    if format != RECORD_FORMAT {
        return Err(format!("unknown record format {format}"));
    }
    let version = match r.u8()? {
        1 => Version::Revision(r.u64()?),
        2 => Version::Hlc(Hlc {
            physical_ms: r.u64()?,
            logical: r.u32()?,
            node_id: r.u64()?,
        }),
        k => return Err(format!("unknown version kind {k}")),
    };
    let tombstone = r.u8()? != 0;
    let len = r.u32()? as usize;
    let value = r.take(len)?.to_vec();
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes", r.buf.len()));
    }
    Ok(StoredRecord {
        version,
        value: if tombstone { None } else { Some(value) },
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "truncated record (wanted {n} bytes, {} left)",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// Decodes a record, checking its checksum; errors name the key, tree and location.
pub fn decode(bytes: &[u8], key: &[u8], tree: &str, location: &str) -> Result<StoredRecord> {
    decode_inner(bytes).map_err(|reason| StorageError::Corrupt {
        location: location.to_string(),
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    })
}

/// One page of a scrub's walk over a tree of records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubPage {
    /// Records checked in this page.
    pub checked: usize,
    /// Keys (as the caller names them) of the corrupt ones.
    pub corrupt: Vec<Vec<u8>>,
    /// Where the next page starts, `None` at the end.
    pub resume_after: Option<Vec<u8>>,
}

/// A tree of checksummed records.
#[derive(Clone)]
pub struct RecordTree {
    tree: Arc<dyn Tree>,
    location: String,
}

impl RecordTree {
    /// Wraps a tree; `location` is the engine's data location, used in errors.
    pub fn new(tree: Arc<dyn Tree>, location: &str) -> Self {
        Self {
            tree,
            location: location.to_string(),
        }
    }

    /// Reads and verifies one record.
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredRecord>> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, key, self.tree.name(), &self.location).map(Some),
        }
    }

    /// Writes one record.
    pub fn put(&self, key: &[u8], record: &StoredRecord) -> Result<()> {
        self.tree.insert(key, &encode(record))
    }

    /// The underlying tree.
    pub fn raw(&self) -> &Arc<dyn Tree> {
        &self.tree
    }

    /// Where the data lives.
    pub fn location(&self) -> &str {
        &self.location
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{memory::MemoryEngine, Engine};

    fn sample() -> StoredRecord {
        StoredRecord {
            version: Version::Hlc(Hlc {
                physical_ms: 7,
                logical: 2,
                node_id: 3,
            }),
            value: Some(b"hello".to_vec()),
        }
    }

    #[test]
    fn round_trips_values_tombstones_and_both_version_kinds() {
        for rec in [
            sample(),
            StoredRecord {
                version: Version::Revision(42),
                value: None,
            },
            StoredRecord {
                version: Version::Revision(1),
                value: Some(vec![]),
            },
        ] {
            assert_eq!(decode(&encode(&rec), b"k", "t", "memory").unwrap(), rec);
        }
    }

    #[test]
    fn every_single_bit_flip_is_reported_as_corrupt() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let err = decode(&b, b"the-key", "data", "/var/kv").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("the-key") && msg.contains("/var/kv"), "{msg}");
        }
    }

    #[test]
    fn corrupt_bytes_in_a_tree_are_never_returned() {
        let engine = MemoryEngine::new();
        let tree = engine.open_tree("data").unwrap();
        let records = RecordTree::new(tree.clone(), engine.location());
        records.put(b"k", &sample()).unwrap();
        let mut raw = tree.get(b"k").unwrap().unwrap();
        raw[10] ^= 0xff;
        tree.insert(b"k", &raw).unwrap();
        assert!(matches!(
            records.get(b"k"),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
