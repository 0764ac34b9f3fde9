//! Backups: `SnapshotPartition` (one partition of a keyspace, in chunks) and `ImportRecords`
//! (AP records restored with their own timestamps). A CP partition is cut at one Raft snapshot
//! taken at or after a linearizable read index, on the leader only; an AP partition is this
//! node's replica as it is, tombstones included, for the caller to merge across replicas.
//! Chunks stay below the public response limit whatever the data: at most
//! [`SNAPSHOT_CHUNK_BYTES`] of records, or one larger record alone.

use super::convert::{cp_error, cp_key, version_pb};
use super::forward::Ctx;
use crate::ap::RequestOptions as ApOptions;
use crate::error::{NodeError, NodeResult};
use crate::node::{Node, CP_GROUP_KEYSPACE};
use crate::types::{Hlc, KeyspaceDef, Mode, Version};
use futures::stream::{self, StreamExt};
use kv_proto::v1 as pb;

/// Target size of one `SnapshotChunk`'s records, in bytes.
pub const SNAPSHOT_CHUNK_BYTES: usize = kv_core::limits::RAFT_SNAPSHOT_CHUNK_BYTES;
/// Most records one `ImportRecords` call may carry.
pub const MAX_IMPORT_RECORDS: usize = 1024;
/// Records of one `ImportRecords` call written at once.
const IMPORT_CONCURRENCY: usize = 32;
/// Bytes a record costs in a chunk besides its key and value (version, framing).
const RECORD_OVERHEAD_BYTES: usize = 64;

/// The chunks of one partition of `keyspace`, in key order.
// FIXME(large partitions): the whole partition is in memory here (a CP cut is one Raft snapshot,
// which openraft also holds whole); streaming straight from the snapshot bytes would bound it
// to one chunk.
pub(super) async fn snapshot_partition(
    node: &Node,
    ctx: Ctx,
    req: pb::SnapshotPartitionRequest,
) -> NodeResult<Vec<pb::SnapshotChunk>> {
    let ks = node.keyspace(&req.keyspace).await?;
    let partitions = node.ring.partition_count();
    if req.partition >= partitions {
        return Err(NodeError::InvalidArgument(format!(
            "partition {} does not exist: this cluster has Q = {partitions} partitions (0..{partitions})",
            req.partition
        )));
    }
    let (revision, records) = match ks.mode {
        Mode::Cp => cp_partition(node, ctx, &ks, req.partition).await?,
        Mode::Ap => (0, ap_partition(node, &ks, req.partition)?),
    };
    Ok(chunks(records, SNAPSHOT_CHUNK_BYTES)
        .into_iter()
        .map(|records| pb::SnapshotChunk {
            revision,
            records,
            served_by: node.me.name.clone(),
        })
        .collect())
}

async fn cp_partition(
    node: &Node,
    ctx: Ctx,
    ks: &KeyspaceDef,
    partition: u32,
) -> NodeResult<(u64, Vec<pb::SnapshotRecord>)> {
    let members = node.cp_members(partition);
    if !members.contains(&node.me.id) {
        return Err(NodeError::FailedPrecondition(format!(
            "node {} holds no replica of partition {partition}; ask one of its members: {}",
            node.me.name,
            members
                .iter()
                .map(|m| node.describe(*m))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let prefix = cp_key(ks.id, b"");
    let (revision, live) = node
        .cp()?
        .consistent_cut(CP_GROUP_KEYSPACE, partition, &prefix, ctx.deadline)
        .await
        .map_err(|e| cp_error(node, e, &ks.name))?;
    let records = live
        .into_iter()
        .map(|(key, value, rev)| pb::SnapshotRecord {
            key: key[prefix.len()..].to_vec(),
            value,
            tombstone: false,
            version: Some(version_pb(Version::Revision(rev))),
        })
        .collect();
    Ok((revision, records))
}

fn ap_partition(
    node: &Node,
    ks: &KeyspaceDef,
    partition: u32,
) -> NodeResult<Vec<pb::SnapshotRecord>> {
    let store = node.ap.store(ks.id)?;
    let mut out = Vec::new();
    store
        .for_each_in_partition(partition, |r| {
            out.push(pb::SnapshotRecord {
                key: r.key,
                tombstone: r.value.is_none(),
                value: r.value.unwrap_or_default(),
                version: Some(version_pb(Version::Hlc(r.hlc))),
            });
            Ok(())
        })
        .map_err(NodeError::from)?;
    Ok(out)
}

/// Splits `records` (in order) into chunks of at most `budget` bytes; a record larger than the
/// budget travels alone.
fn chunks(records: Vec<pb::SnapshotRecord>, budget: usize) -> Vec<Vec<pb::SnapshotRecord>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = r.key.len() + r.value.len() + RECORD_OVERHEAD_BYTES;
        if !current.is_empty() && bytes + size > budget {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r);
    }
    // An empty partition still answers one (empty) chunk: it carries the revision.
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}

/// Writes every record of `req` into its AP keyspace with its own timestamp; all are checked
/// before any is written.
pub(super) async fn import_records(
    node: &Node,
    req: pb::ImportRecordsRequest,
) -> NodeResult<pb::ImportRecordsResponse> {
    let ks = node.keyspace(&req.keyspace).await?;
    if ks.mode != Mode::Ap {
        return Err(NodeError::InvalidArgument(format!(
            "keyspace {:?} is CP: ImportRecords writes AP records with their timestamps; restore a CP keyspace with Put (`kv snapshot restore` does)",
            ks.name
        )));
    }
    if req.records.len() > MAX_IMPORT_RECORDS {
        return Err(NodeError::InvalidArgument(format!(
            "{} records in one ImportRecords call; the limit is {MAX_IMPORT_RECORDS}: send them in several calls",
            req.records.len()
        )));
    }
    let clock = node.ap.hlc();
    let mut writes = Vec::with_capacity(req.records.len());
    for (i, r) in req.records.into_iter().enumerate() {
        node.validate_key(&r.key)?;
        node.validate_value(&r.value)?;
        let Some(h) = r.version.and_then(|v| v.hlc) else {
            return Err(NodeError::InvalidArgument(format!(
                "record {i} has no timestamp (version.hlc): AP records are merged by it"
            )));
        };
        let hlc = Hlc {
            physical_ms: h.physical_ms,
            logical: h.logical,
            node_id: h.node_id,
        };
        // Observed like any timestamp from elsewhere: refused beyond the maximum offset, and
        // otherwise a later write coordinated here gets a later timestamp than the import.
        if let Err(e) = clock.observe(hlc) {
            return Err(NodeError::InvalidArgument(format!(
                "record {i}: {e}; nothing was imported"
            )));
        }
        writes.push((r.key, (!r.tombstone).then_some(r.value), hlc));
    }
    let ks = &ks;
    let results: Vec<NodeResult<()>> = stream::iter(writes)
        .map(|(key, value, hlc)| async move {
            let p = node.ring.partition_for_key(&key);
            let pref = node.ring.preference_list(p).to_vec();
            node.ap
                .import(ks, &pref, &key, value, hlc, ApOptions::default())
                .await
                .map(|_| ())
                .map_err(NodeError::from)
        })
        .buffer_unordered(IMPORT_CONCURRENCY)
        .collect()
        .await;
    let imported = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        return Err(e);
    }
    Ok(pb::ImportRecordsResponse {
        imported: imported as u32,
        served_by: node.me.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value_len: usize) -> pb::SnapshotRecord {
        pb::SnapshotRecord {
            key: key.as_bytes().to_vec(),
            value: vec![0; value_len],
            ..Default::default()
        }
    }

    #[test]
    fn chunks_stay_under_the_budget_and_keep_every_record_in_order() {
        let records: Vec<_> = (0..100).map(|i| rec(&format!("k{i:03}"), 100)).collect();
        let out = chunks(records, 1000);
        assert!(out.len() > 1);
        for c in &out {
            let bytes: usize = c
                .iter()
                .map(|r| r.key.len() + r.value.len() + RECORD_OVERHEAD_BYTES)
                .sum();
            assert!(bytes <= 1000, "{bytes}");
        }
        let keys: Vec<_> = out.concat().into_iter().map(|r| r.key).collect();
        let expected: Vec<_> = (0..100).map(|i| format!("k{i:03}").into_bytes()).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn a_record_larger_than_the_budget_travels_alone_and_an_empty_partition_answers_once() {
        let out = chunks(vec![rec("a", 10), rec("big", 5000), rec("c", 10)], 1000);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert_eq!(chunks(Vec::new(), 1000), vec![Vec::new()]);
    }
}
