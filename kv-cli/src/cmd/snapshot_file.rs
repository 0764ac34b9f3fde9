//! The backup file of `kv snapshot save` / `restore`: JSON lines, keys and values in base64.
//! A header line (keyspace, mode, replicas, Q), then per partition a line with the revision it
//! was cut at followed by its records, then an end line with the record count and the CRC-32
//! of every byte before it. A file is trusted only when read to its end line with both
//! matching: a truncated, edited or corrupted file is refused before anything is written.
//! The format is in docs/operations.md ("Backups").

use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Version of the file format written in every header.
pub const FORMAT_VERSION: u64 = 1;
/// Longest line read (a record with a value at a 64 MiB limit fits with room to spare); a
/// longer line is a corrupted file, not a reason to run out of memory.
pub const MAX_LINE_BYTES: u64 = 128 * 1024 * 1024;

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The contents are not a complete, intact backup.
    #[error("{path} is not a complete kv backup: {reason}. Nothing was restored; use an intact copy of the file")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the line number.
        reason: String,
    },
}

/// What the header line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The keyspace saved.
    pub keyspace: String,
    /// "cp" or "ap".
    pub mode: String,
    /// Its replication factor N.
    pub replicas: u32,
    /// Q, the cluster's partition count.
    pub partitions: u32,
    /// When the save started (Unix ms).
    pub created_ms: u64,
}

/// One record of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// The value; `None` is a tombstone (AP only).
    pub value: Option<Vec<u8>>,
    /// CP: the revision of the key's last write (0 for AP).
    pub revision: u64,
    /// AP: the timestamp as (physical_ms, logical, node_id).
    pub hlc: Option<(u64, u32, u64)>,
}

/// A line after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The start of a partition: the revision it was cut at (CP) and who served it.
    Partition {
        /// Partition.
        partition: u32,
        /// CP revision of the cut (0 for AP).
        revision: u64,
        /// Node(s) that answered.
        served_by: String,
    },
    /// A record of the current partition.
    Record(Record),
}

/// Writes a backup to `FILE.partial`, renamed to `FILE` only once complete and synced.
pub struct Writer {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    records: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |error| FileError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Where a backup to `path` is written until it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}

impl Writer {
    /// Starts a backup at `path` with its header.
    pub fn create(path: &Path, header: &Header) -> Result<Writer, FileError> {
        let partial = partial_path(path);
        let file = File::create(&partial).map_err(io(&partial))?;
        let mut w = Writer {
            path: path.to_path_buf(),
            partial,
            out: BufWriter::new(file),
            crc: crc32fast::Hasher::new(),
            records: 0,
        };
        w.line(&json!({
            "kv_snapshot": FORMAT_VERSION,
            "keyspace": header.keyspace,
            "mode": header.mode,
            "replicas": header.replicas,
            "partitions": header.partitions,
            "created_ms": header.created_ms,
        }))?;
        Ok(w)
    }

    fn line(&mut self, v: &Value) -> Result<(), FileError> {
        let mut bytes = v.to_string().into_bytes();
        bytes.push(b'\n');
        self.crc.update(&bytes);
        self.out.write_all(&bytes).map_err(io(&self.partial))
    }

    /// Writes one item.
    pub fn item(&mut self, item: &Item) -> Result<(), FileError> {
        let v = match item {
            Item::Partition {
                partition,
                revision,
                served_by,
            } => json!({"partition": partition, "revision": revision, "served_by": served_by}),
            Item::Record(r) => {
                self.records += 1;
                let mut m = Map::new();
                m.insert("key".into(), crate::output::base64(&r.key).into());
                if let Some(v) = &r.value {
                    m.insert("value".into(), crate::output::base64(v).into());
                }
                match r.hlc {
                    Some((physical_ms, logical, node_id)) => {
                        m.insert(
                            "hlc".into(),
                            json!({"physical_ms": physical_ms, "logical": logical, "node_id": node_id}),
                        );
                        m.insert("tombstone".into(), r.value.is_none().into());
                    }
                    None => {
                        m.insert("revision".into(), r.revision.into());
                    }
                }
                Value::Object(m)
            }
        };
        self.line(&v)
    }

    /// Writes the end line, syncs, and moves the file into place; returns the record count.
    pub fn finish(mut self) -> Result<u64, FileError> {
        let end = json!({"end": {"records": self.records, "crc32": self.crc.clone().finalize()}});
        let mut bytes = end.to_string().into_bytes();
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(io(&self.partial))?;
        let file = self.out.into_inner().map_err(|e| FileError::Io {
            path: self.partial.display().to_string(),
            error: e.into_error(),
        })?;
        file.sync_all().map_err(io(&self.partial))?;
        std::fs::rename(&self.partial, &self.path).map_err(io(&self.path))?;
        Ok(self.records)
    }
}

/// Reads a backup line by line, checking each line, the record count and the checksum; the
/// end line's check is the last item (an error when it fails).
pub struct Reader {
    path: String,
    input: BufReader<File>,
    crc: crc32fast::Hasher,
    line_no: u64,
    records: u64,
    ended: bool,
    /// The header line.
    pub header: Header,
}

impl Reader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Reader, FileError> {
        let file = File::open(path).map_err(io(path))?;
        let mut r = Reader {
            path: path.display().to_string(),
            input: BufReader::new(file),
            crc: crc32fast::Hasher::new(),
            line_no: 0,
            records: 0,
            ended: false,
            header: Header {
                keyspace: String::new(),
                mode: String::new(),
                replicas: 0,
                partitions: 0,
                created_ms: 0,
            },
        };
        let first = r
            .next_line()?
            .ok_or_else(|| r.invalid("the file is empty"))?;
        r.crc.update(&first.1);
        r.header = r.parse_header(&first.0)?;
        Ok(r)
    }

    fn invalid(&self, reason: impl std::fmt::Display) -> FileError {
        FileError::Invalid {
            path: self.path.clone(),
            reason: format!("line {}: {reason}", self.line_no),
        }
    }

    /// The next line as JSON and its raw bytes, or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(Value, Vec<u8>)>, FileError> {
        let mut bytes = Vec::new();
        let n = (&mut self.input)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(|error| FileError::Io {
                path: self.path.clone(),
                error,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if bytes.last() != Some(&b'\n') {
            return Err(self.invalid(if n as u64 > MAX_LINE_BYTES {
                format!("longer than {MAX_LINE_BYTES} bytes")
            } else {
                "the last line is cut short (a truncated file)".to_string()
            }));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| self.invalid(e))?;
        Ok(Some((v, bytes)))
    }

    fn parse_header(&self, v: &Value) -> Result<Header, FileError> {
        match v.get("kv_snapshot").and_then(Value::as_u64) {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(self.invalid(format!(
                    "format version {other}; this kv reads version {FORMAT_VERSION}"
                )))
            }
            None => return Err(self.invalid("no kv_snapshot header: not a kv backup")),
        }
        let mode = self.str_field(v, "mode")?;
        if mode != "cp" && mode != "ap" {
            return Err(self.invalid(format!("mode {mode:?} is neither cp nor ap")));
        }
        Ok(Header {
            keyspace: self.str_field(v, "keyspace")?,
            mode,
            replicas: self.u64_field(v, "replicas")? as u32,
            partitions: self.u64_field(v, "partitions")? as u32,
            created_ms: self.u64_field(v, "created_ms")?,
        })
    }

    fn str_field(&self, v: &Value, name: &str) -> Result<String, FileError> {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.invalid(format!("no text field {name:?}")))
    }

    fn u64_field(&self, v: &Value, name: &str) -> Result<u64, FileError> {
        v.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.invalid(format!("no number field {name:?}")))
    }

    fn bytes_field(&self, v: &Value, name: &str) -> Result<Vec<u8>, FileError> {
        let text = self.str_field(v, name)?;
        base64_decode(&text).ok_or_else(|| self.invalid(format!("{name:?} is not base64")))
    }

    fn parse_item(&mut self, v: &Value) -> Result<Item, FileError> {
        if v.get("partition").is_some() {
            let partition = self.u64_field(v, "partition")?;
            if partition >= u64::from(self.header.partitions) {
                return Err(self.invalid(format!(
                    "partition {partition} outside the header's {} partitions",
                    self.header.partitions
                )));
            }
            return Ok(Item::Partition {
                partition: partition as u32,
                revision: self.u64_field(v, "revision")?,
                served_by: self.str_field(v, "served_by")?,
            });
        }
        if v.get("key").is_none() {
            return Err(self.invalid("neither a partition, a record nor the end line"));
        }
        let key = self.bytes_field(v, "key")?;
        if key.is_empty() || key.len() > kv_core::limits::MAX_KEY_BYTES {
            return Err(self.invalid(format!(
                "a key of {} bytes (keys are 1..={} bytes)",
                key.len(),
                kv_core::limits::MAX_KEY_BYTES
            )));
        }
        let value = match v.get("value") {
            Some(_) => Some(self.bytes_field(v, "value")?),
            None => None,
        };
        let record = if self.header.mode == "ap" {
            let h = v
                .get("hlc")
                .ok_or_else(|| self.invalid("an AP record without hlc"))?;
            let hlc = (
                self.u64_field(h, "physical_ms")?,
                self.u64_field(h, "logical")? as u32,
                self.u64_field(h, "node_id")?,
            );
            let tombstone = v.get("tombstone").and_then(Value::as_bool) == Some(true);
            if tombstone != value.is_none() {
                return Err(self.invalid("a record must have a value or be a tombstone, not both"));
            }
            Record {
                key,
                value,
                revision: 0,
                hlc: Some(hlc),
            }
        } else {
            let Some(value) = value else {
                return Err(self.invalid("a CP record without a value"));
            };
            Record {
                key,
                value: Some(value),
                revision: self.u64_field(v, "revision")?,
                hlc: None,
            }
        };
        self.records += 1;
        Ok(Item::Record(record))
    }

    fn check_end(&self, v: &Value) -> Result<(), FileError> {
        let end = &v["end"];
        let records = self.u64_field(end, "records")?;
        let crc = self.u64_field(end, "crc32")?;
        let actual = self.crc.clone().finalize();
        if u64::from(actual) != crc {
            return Err(self.invalid(format!(
                "checksum mismatch: the end line says crc32 {crc}, the contents hash to {actual} (the file was altered or corrupted)"
            )));
        }
        if records != self.records {
            return Err(self.invalid(format!(
                "the end line counts {records} records, the file holds {}",
                self.records
            )));
        }
        Ok(())
    }

    /// The next item; `None` after a verified end line. Anything past the end line is refused.
    pub fn next_item(&mut self) -> Result<Option<Item>, FileError> {
        let Some((v, bytes)) = self.next_line()? else {
            if self.ended {
                return Ok(None);
            }
            return Err(self.invalid("no end line (a truncated file)"));
        };
        if self.ended {
            return Err(self.invalid("data after the end line"));
        }
        if v.get("end").is_some() {
            self.check_end(&v)?;
            self.ended = true;
            return match self.next_line()? {
                None => Ok(None),
                Some(_) => Err(self.invalid("data after the end line")),
            };
        }
        self.crc.update(&bytes);
        self.parse_item(&v).map(Some)
    }
}

/// Reads all of `path`, checking every line, the count and the checksum; returns the header
/// and the record count. Nothing is kept in memory.
pub fn verify(path: &Path) -> Result<(Header, u64), FileError> {
    let mut r = Reader::open(path)?;
    let mut n = 0;
    while let Some(item) = r.next_item()? {
        if matches!(item, Item::Record(_)) {
            n += 1;
        }
    }
    Ok((r.header, n))
}

/// Decodes standard base64 (RFC 4648, padded); `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (i, g) in bytes.chunks(4).enumerate() {
        let pad = g.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for c in &g[..4 - pad] {
            n = (n << 6) | digit(*c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
#[path = "snapshot_file_tests.rs"]
mod tests;
