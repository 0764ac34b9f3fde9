//! CP snapshots kept in storage in chunks, never as one value. `SnapshotFile` (openraft's
//! `SnapshotData`) is a seekable byte stream over one *slot* of a group's snap tree, stored as
//! chunks of at most `CHUNK_BYTES`; reads and writes go through one chunk buffer, so a snapshot
//! costs about one chunk of memory whatever its size (building, sending, receiving, installing).
//!
//! Body format ([`SNAPSHOT_FORMAT`]): one format byte, then per record `[u32 key length][key]
//! [u32 length][record::encode bytes]` in key order, then the end mark `u32::MAX` and the record
//! count (u64), so a truncated body is detected. Format 1 (one bincode value, written before
//! this module) is still read, in memory, for snapshots sent by an older node.
//!
//! Snap-tree layout: `n` → next slot number; `s<slot>` → (nothing: the slot exists);
//! `l<slot>` → the slot's length; `k<slot><chunk index>` → a chunk (numbers are big-endian u64).

use crate::cp::codec::{self, CodecError};
use crate::storage::{StorageError, Tree};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

/// Largest chunk of a snapshot stored as one value (and the unit of its memory use).
pub const CHUNK_BYTES: usize = kv_core::limits::RAFT_SNAPSHOT_CHUNK_BYTES;
/// Format of the snapshot body written by this module.
pub const SNAPSHOT_FORMAT: u8 = 2;
/// The format of snapshots written as one bincode value (read only).
pub const LEGACY_SNAPSHOT_FORMAT: u8 = 1;
/// Longest key or record a snapshot may hold: anything longer is a corrupt body, refused before
/// memory is allocated for it.
pub const MAX_SNAPSHOT_ITEM_BYTES: u32 = 256 * 1024 * 1024;
/// Records read from the sm tree per page when writing or replacing them: few, because values
/// may be large (a page is held in memory).
pub const SNAPSHOT_SCAN_PAGE: usize = 16;
/// Mark that ends the records of a body.
const END_MARK: u32 = u32::MAX;

const KEY_NEXT_SLOT: &[u8] = b"n";

fn slot_key(prefix: u8, slot: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

fn chunk_key(slot: u64, index: u64) -> Vec<u8> {
    let mut k = slot_key(b'k', slot);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn snapshot_error(message: String) -> StorageError {
    StorageError::Engine {
        location: "snapshot".into(),
        message,
    }
}

fn io_err(e: StorageError) -> io::Error {
    io::Error::other(e)
}

/// The chunk held in memory.
struct Chunk {
    index: u64,
    bytes: Vec<u8>,
    dirty: bool,
}

/// One snapshot body in a snap-tree slot, read and written like a file.
pub struct SnapshotFile {
    tree: Arc<dyn Tree>,
    slot: u64,
    len: u64,
    pos: u64,
    chunk: Option<Chunk>,
}

impl SnapshotFile {
    /// A new, empty body in a fresh slot of `tree`.
    pub fn create(tree: Arc<dyn Tree>) -> Result<SnapshotFile, StorageError> {
        let slot = match tree.get(KEY_NEXT_SLOT)? {
            Some(b) => read_u64(&b).unwrap_or(0),
            None => 0,
        };
        tree.insert(KEY_NEXT_SLOT, &(slot + 1).to_be_bytes())?;
        // A slot number reused after a crash (the counter was not flushed) held nothing that
        // anything refers to: start it clean.
        remove_slot(&*tree, slot)?;
        tree.insert(&slot_key(b's', slot), &[])?;
        tree.insert(&slot_key(b'l', slot), &0u64.to_be_bytes())?;
        Ok(SnapshotFile {
            tree,
            slot,
            len: 0,
            pos: 0,
            chunk: None,
        })
    }

    /// The body stored in `slot` of `tree`, positioned at its start.
    pub fn open(tree: Arc<dyn Tree>, slot: u64) -> Result<SnapshotFile, StorageError> {
        let len = tree
            .get(&slot_key(b'l', slot))?
            .and_then(|b| read_u64(&b))
            .ok_or_else(|| StorageError::Corrupt {
                location: String::new(),
                tree: tree.name().to_string(),
                key: format!("snapshot slot {slot}"),
                reason: "the snapshot's length is missing".into(),
            })?;
        Ok(SnapshotFile {
            tree,
            slot,
            len,
            pos: 0,
            chunk: None,
        })
    }

    /// The slot this body is stored in.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when this body lives in `tree` (and not in another group's or node's tree).
    pub fn is_in(&self, tree: &Arc<dyn Tree>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.tree), Arc::as_ptr(tree))
    }

    /// Writes the chunk held in memory (and the length) to the tree, if it changed.
    pub fn save(&mut self) -> Result<(), StorageError> {
        if let Some(c) = self.chunk.as_mut().filter(|c| c.dirty) {
            self.tree.insert(&chunk_key(self.slot, c.index), &c.bytes)?;
            self.tree
                .insert(&slot_key(b'l', self.slot), &self.len.to_be_bytes())?;
            c.dirty = false;
        }
        Ok(())
    }

    /// Holds chunk `index` in memory (saving the one held before).
    fn load(&mut self, index: u64) -> io::Result<&mut Chunk> {
        if self.chunk.as_ref().map(|c| c.index) != Some(index) {
            self.save().map_err(io_err)?;
            let bytes = self
                .tree
                .get(&chunk_key(self.slot, index))
                .map_err(io_err)?
                .unwrap_or_default();
            self.chunk = Some(Chunk {
                index,
                bytes,
                dirty: false,
            });
        }
        Ok(self.chunk.as_mut().expect("chunk just loaded"))
    }
}

impl Read for SnapshotFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let (pos, len) = (self.pos, self.len);
        let offset = (pos % CHUNK_BYTES as u64) as usize;
        let chunk = self.load(pos / CHUNK_BYTES as u64)?;
        let in_chunk = chunk.bytes.len().saturating_sub(offset);
        if in_chunk == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("snapshot chunk {} is missing or short", chunk.index),
            ));
        }
        let n = in_chunk.min(out.len()).min((len - pos) as usize);
        out[..n].copy_from_slice(&chunk.bytes[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SnapshotFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let pos = self.pos;
        let offset = (pos % CHUNK_BYTES as u64) as usize;
        let chunk = self.load(pos / CHUNK_BYTES as u64)?;
        let n = (CHUNK_BYTES - offset).min(data.len());
        if chunk.bytes.len() < offset + n {
            chunk.bytes.resize(offset + n, 0);
        }
        chunk.bytes[offset..offset + n].copy_from_slice(&data[..n]);
        chunk.dirty = true;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.save().map_err(io_err)
    }
}

impl Seek for SnapshotFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

// The tree calls are synchronous, like every other storage call of the state machine: the
// async traits openraft needs complete at once.
impl tokio::io::AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = Read::read(this, buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Write::write(self.get_mut(), data))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Write::flush(self.get_mut()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Write::flush(self.get_mut()))
    }
}

impl tokio::io::AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        Seek::seek(self.get_mut(), to).map(drop)
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// Removes a slot's chunks, length and index entry.
pub fn remove_slot(tree: &dyn Tree, slot: u64) -> Result<(), StorageError> {
    if let Some(len) = tree.get(&slot_key(b'l', slot))?.and_then(|b| read_u64(&b)) {
        for index in 0..len.div_ceil(CHUNK_BYTES as u64) {
            tree.remove(&chunk_key(slot, index))?;
        }
    }
    tree.remove(&slot_key(b'l', slot))?;
    tree.remove(&slot_key(b's', slot))
}

/// Removes the slots numbered below every slot in `keep` (old snapshots, failed builds,
/// aborted receives). Slots are numbered in creation order, so a snapshot still being received
/// or built (a later slot) is never removed under its writer.
pub fn retain_slots(tree: &dyn Tree, keep: &[u64]) -> Result<(), StorageError> {
    let Some(&oldest_kept) = keep.iter().min() else {
        return Ok(());
    };
    let rows = tree.range(Bound::Included(b"s"), Bound::Excluded(b"t"), usize::MAX)?;
    for (k, _) in rows {
        if let Some(slot) = read_u64(&k[1..]) {
            if slot < oldest_kept {
                remove_slot(tree, slot)?;
            }
        }
    }
    Ok(())
}

/// Writes a body: the format byte, each `(key, record bytes)` from `records`, the end mark
/// and the count; then saves the last chunk. Returns the number of records.
pub fn write_body(
    file: &mut SnapshotFile,
    records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
) -> Result<u64, StorageError> {
    let mut count = 0u64;
    let io = |e: io::Error| snapshot_error(e.to_string());
    file.write_all(&[SNAPSHOT_FORMAT]).map_err(io)?;
    for r in records {
        let (key, rec) = r?;
        for part in [&key, &rec] {
            let len = u32::try_from(part.len())
                .ok()
                .filter(|l| *l <= MAX_SNAPSHOT_ITEM_BYTES)
                .ok_or_else(|| {
                    snapshot_error(format!("a snapshot item of {} bytes", part.len()))
                })?;
            file.write_all(&len.to_be_bytes()).map_err(io)?;
            file.write_all(part).map_err(io)?;
        }
        count += 1;
    }
    file.write_all(&END_MARK.to_be_bytes()).map_err(io)?;
    file.write_all(&count.to_be_bytes()).map_err(io)?;
    file.save()?;
    Ok(count)
}

/// The legacy body: every record in one bincode value.
#[derive(serde::Deserialize)]
struct LegacyBody {
    format: u8,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

fn corrupt(message: String) -> CodecError {
    CodecError::Decode {
        what: "snapshot",
        message,
    }
}

fn read_len(file: &mut SnapshotFile) -> Result<u32, CodecError> {
    let mut b = [0u8; 4];
    file.read_exact(&mut b)
        .map_err(|e| corrupt(format!("truncated body: {e}")))?;
    Ok(u32::from_be_bytes(b))
}

fn read_item(file: &mut SnapshotFile, len: u32) -> Result<Vec<u8>, CodecError> {
    if len > MAX_SNAPSHOT_ITEM_BYTES {
        return Err(corrupt(format!(
            "an item of {len} bytes (at most {MAX_SNAPSHOT_ITEM_BYTES})"
        )));
    }
    let mut v = vec![0u8; len as usize];
    file.read_exact(&mut v)
        .map_err(|e| corrupt(format!("truncated body: {e}")))?;
    Ok(v)
}

/// Why `for_each_record` stopped early.
#[derive(Debug)]
pub enum Walk<E> {
    /// The body is malformed or truncated.
    Bad(CodecError),
    /// `f` returned this error.
    Stopped(E),
}

impl<E> From<CodecError> for Walk<E> {
    fn from(e: CodecError) -> Self {
        Walk::Bad(e)
    }
}

/// Calls `f` on every `(key, record bytes)` of the body, in order, reading it from the start;
/// a truncated or malformed body is an error (after `f` saw the records before the damage).
pub fn for_each_record<E>(
    file: &mut SnapshotFile,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), E>,
) -> Result<(), Walk<E>> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| corrupt(e.to_string()))?;
    let mut format = [0u8; 1];
    file.read_exact(&mut format)
        .map_err(|e| corrupt(format!("empty body: {e}")))?;
    match format[0] {
        SNAPSHOT_FORMAT => {}
        LEGACY_SNAPSHOT_FORMAT => {
            // Written by an older node: one bincode value, read whole.
            file.seek(SeekFrom::Start(0))
                .map_err(|e| corrupt(e.to_string()))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| corrupt(e.to_string()))?;
            let body: LegacyBody = codec::decode("snapshot", &bytes)?;
            debug_assert_eq!(body.format, LEGACY_SNAPSHOT_FORMAT);
            for (k, v) in body.records {
                f(k, v).map_err(Walk::Stopped)?;
            }
            return Ok(());
        }
        other => return Err(corrupt(format!("unknown snapshot format {other}")).into()),
    }
    let mut count = 0u64;
    loop {
        let len = read_len(file)?;
        if len == END_MARK {
            let mut b = [0u8; 8];
            file.read_exact(&mut b)
                .map_err(|e| corrupt(format!("truncated body: {e}")))?;
            let want = u64::from_be_bytes(b);
            if want != count {
                return Err(corrupt(format!("{count} records, the body says {want}")).into());
            }
            return Ok(());
        }
        let key = read_item(file, len)?;
        let len = read_len(file)?;
        let rec = read_item(file, len)?;
        f(key, rec).map_err(Walk::Stopped)?;
        count += 1;
    }
}

/// The records of a tree between two keys as (key without its one-byte prefix, record bytes),
/// read a few at a time.
pub struct DataPages {
    sm: Arc<dyn Tree>,
    first: Vec<u8>,
    end: Vec<u8>,
    after: Option<Vec<u8>>,
    page: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl DataPages {
    /// The records of `sm` from `first` to `end` (excluded).
    pub fn new(sm: Arc<dyn Tree>, first: &[u8], end: &[u8]) -> DataPages {
        DataPages {
            sm,
            first: first.to_vec(),
            end: end.to_vec(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl Iterator for DataPages {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.page.next() {
                self.after = Some(k.clone());
                return Some(Ok((k[1..].to_vec(), v)));
            }
            if self.done {
                return None;
            }
            let lower = match &self.after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(self.first.as_slice()),
            };
            match self.sm.range(
                lower,
                Bound::Excluded(self.end.as_slice()),
                SNAPSHOT_SCAN_PAGE,
            ) {
                Ok(rows) => {
                    self.done = rows.len() < SNAPSHOT_SCAN_PAGE;
                    self.page = rows.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
