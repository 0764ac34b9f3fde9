//! `kv snapshot save FILE` and `kv snapshot restore FILE`: backups of one keyspace in the
//! format of `snapshot_file`. CP: each partition from its leader, cut at one Raft snapshot
//! taken after a read index (one consistent cut per partition, not one across partitions).
//! AP: each partition from a majority of its replicas, merged by last-write-wins, tombstones
//! kept. Restore checks the whole file before writing anything; CP records are written with
//! Put (new revisions), AP records with ImportRecords (their own timestamps, so an old value
//! never wins over a newer write or delete).

use super::snapshot_file::{self, FileError, Header, Item, Reader, Record, Writer};
use super::Ctx;
use crate::output::{CliError, Exit, Stage};
use kv_client::{Client, Error as ClientError, Options};
use kv_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// Most tries per partition of a save (members in turn, then the leader they name); the
/// deadline (--timeout-ms) bounds them too.
pub const MAX_PARTITION_TRIES: usize = 100;
/// Pause between tries of one partition while its group elects a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Records of one AP restore call: the server's per-call limit.
const IMPORT_BATCH_RECORDS: usize = kv_server::service::MAX_IMPORT_RECORDS;
/// Bytes of keys and values of one AP restore call: under the headroom every node's request
/// limit has whatever its value limit, so a batch of small records always fits (a larger record
/// travels alone and fits as a single value does).
const IMPORT_BATCH_BYTES: usize = kv_core::limits::MESSAGE_HEADROOM_BYTES * 3 / 4;
/// CP records written at once during a restore.
const RESTORE_CONCURRENCY: usize = 32;

type Grpc = pb::kv_client::KvClient<Channel>;

/// A backup that cannot be written is an error (exit 1); one that cannot be read or is not
/// intact is bad input (exit 2), like an unreadable `--value-file`.
fn file_error(e: FileError) -> CliError {
    match e {
        FileError::Invalid { .. } => CliError::BadInput(e.to_string()),
        FileError::Io { .. } => CliError::Other(anyhow::Error::new(e)),
    }
}

fn read_error(e: FileError) -> CliError {
    CliError::BadInput(e.to_string())
}

fn grpc(addr: &str, max_value_bytes: usize) -> Result<Grpc, CliError> {
    let endpoint = kv_core::net::endpoint_for(addr).map_err(CliError::BadInput)?;
    Ok(pb::kv_client::KvClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(kv_core::limits::max_response_bytes(max_value_bytes))
        .max_encoding_message_size(kv_core::limits::max_request_bytes(max_value_bytes)))
}

/// The cluster as a save or restore sees it.
struct Cluster {
    client: Client,
    ring: pb::RingResponse,
    addr_of: BTreeMap<u64, (String, String)>,
}

impl Cluster {
    async fn connect(ctx: &Ctx) -> Result<Cluster, CliError> {
        let client = ctx.client().await?;
        let ring = client
            .refresh_ring()
            .await
            .map_err(CliError::client(Stage::Connect))?;
        let addr_of = ring
            .members
            .iter()
            .map(|m| (m.id, (m.name.clone(), m.address.clone())))
            .collect();
        Ok(Cluster {
            client,
            ring,
            addr_of,
        })
    }

    /// The first `n` members of partition `p`'s preference list, as (name, address).
    fn replicas(&self, p: u32, n: usize) -> Vec<(String, String)> {
        self.ring
            .partitions
            .iter()
            .find(|x| x.id == p)
            .map(|x| {
                x.preference
                    .iter()
                    .take(n)
                    .filter_map(|id| self.addr_of.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn keyspace(&self, name: &str) -> Result<Option<pb::Keyspace>, CliError> {
        let all = self
            .client
            .list_keyspaces()
            .await
            .map_err(CliError::client(Stage::Read))?;
        Ok(all.into_iter().find(|k| k.name == name))
    }
}

async fn read_partition(
    grpc: &mut Grpc,
    keyspace: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(u64, String, Vec<pb::SnapshotRecord>), tonic::Status> {
    let mut req = tonic::Request::new(pb::SnapshotPartitionRequest {
        keyspace: keyspace.into(),
        partition,
    });
    req.set_timeout(timeout);
    let call = async {
        let mut stream = grpc.snapshot_partition(req).await?.into_inner();
        let (mut revision, mut served_by, mut records) = (None, String::new(), Vec::new());
        while let Some(chunk) = stream.message().await? {
            if *revision.get_or_insert(chunk.revision) != chunk.revision {
                return Err(tonic::Status::data_loss(format!(
                    "partition {partition}: chunks from {} at two revisions",
                    chunk.served_by
                )));
            }
            served_by = chunk.served_by;
            records.extend(chunk.records);
        }
        Ok((revision.unwrap_or(0), served_by, records))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "the partition did not arrive in time",
            ))
        })
}

/// A CP partition from its leader: members in turn, following the leader each one names.
async fn save_cp_partition(
    ctx: &Ctx,
    cluster: &Cluster,
    ks: &pb::Keyspace,
    p: u32,
    max_value_bytes: usize,
) -> Result<(Item, Vec<Record>), CliError> {
    let members = cluster.replicas(p, ks.replicas as usize);
    if members.is_empty() {
        return Err(CliError::Unavailable(format!(
            "keyspace {} partition {p}: the ring names no replica for it",
            ks.name
        )));
    }
    // Until the deadline (--timeout-ms): a leader that just died is replaced within an
    // election timeout, and the members name the new one.
    let deadline = Instant::now() + ctx.timeout();
    let mut next: Option<String> = None;
    let mut unreachable = std::collections::BTreeSet::new();
    let mut last = None;
    for attempt in 0..MAX_PARTITION_TRIES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let addr = next
            .take()
            .unwrap_or_else(|| members[attempt % members.len()].1.clone());
        let mut g = grpc(&addr, max_value_bytes)?;
        match read_partition(&mut g, &ks.name, p, remaining).await {
            Ok((revision, served_by, records)) => {
                let records = records.into_iter().map(|r| Record {
                    key: r.key,
                    value: Some(r.value),
                    revision: r.version.map_or(0, |v| v.revision),
                    hlc: None,
                });
                let head = Item::Partition {
                    partition: p,
                    revision,
                    served_by,
                };
                return Ok((head, records.collect()));
            }
            Err(status) => match ClientError::from_status(status, &addr) {
                // A leader named by a member that is known to be down is stale news: ask the
                // members again after a pause instead.
                ClientError::NotLeader {
                    leader: Some(l), ..
                } if !unreachable.contains(&l) => next = Some(l),
                e @ (ClientError::InvalidArgument(_)
                | ClientError::KeyspaceNotFound(_)
                | ClientError::DataLoss(_)) => return Err(CliError::client(Stage::Read)(e)),
                e => {
                    if matches!(e, ClientError::Connect { .. }) {
                        unreachable.insert(addr);
                    }
                    last = Some(e);
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                }
            },
        }
    }
    let why = last.map_or("no leader answered".to_string(), |e| e.to_string());
    Err(CliError::Unavailable(format!(
        "keyspace {} partition {p}: no consistent copy within {} ms ({why}); the file was not written. A partition without a majority of its replicas cannot be saved; raise --timeout-ms while a leader is being elected",
        ks.name,
        ctx.timeout().as_millis()
    )))
}

/// Sorting key of an AP record: its timestamp, newest last.
fn hlc_of(r: &pb::SnapshotRecord) -> (u64, u32, u64) {
    r.version
        .as_ref()
        .and_then(|v| v.hlc.as_ref())
        .map_or((0, 0, 0), |h| (h.physical_ms, h.logical, h.node_id))
}

/// An AP partition: every replica asked, a majority required (so every write acknowledged by a
/// write quorum is in it), merged by last-write-wins.
async fn save_ap_partition(
    ctx: &Ctx,
    cluster: &Cluster,
    ks: &pb::Keyspace,
    p: u32,
    max_value_bytes: usize,
) -> Result<(Item, Vec<Record>), CliError> {
    let replicas = cluster.replicas(p, ks.replicas as usize);
    let needed = replicas.len() / 2 + 1;
    let mut merged: BTreeMap<Vec<u8>, pb::SnapshotRecord> = BTreeMap::new();
    let (mut answered, mut failures) = (Vec::new(), Vec::new());
    for (name, addr) in &replicas {
        let mut g = grpc(addr, max_value_bytes)?;
        match read_partition(&mut g, &ks.name, p, ctx.timeout()).await {
            Ok((_, _, records)) => {
                answered.push(name.clone());
                for r in records {
                    match merged.get(&r.key) {
                        Some(old) if hlc_of(old) >= hlc_of(&r) => {}
                        _ => {
                            merged.insert(r.key.clone(), r);
                        }
                    }
                }
            }
            Err(s) => failures.push(format!("{name}: {}", ClientError::from_status(s, addr))),
        }
    }
    if answered.len() < needed {
        return Err(CliError::Unavailable(format!(
            "keyspace {} partition {p}: {} of {} replicas answered, {needed} needed ({}); the file was not written",
            ks.name,
            answered.len(),
            replicas.len(),
            failures.join("; ")
        )));
    }
    let head = Item::Partition {
        partition: p,
        revision: 0,
        served_by: answered.join(","),
    };
    let records = merged
        .into_values()
        .map(|r| Record {
            hlc: Some(hlc_of(&r)),
            value: (!r.tombstone).then_some(r.value),
            key: r.key,
            revision: 0,
        })
        .collect();
    Ok((head, records))
}

/// Writes every partition of `ks` to `file`; returns the record count and, per partition, the
/// revision it was cut at.
async fn write_backup(
    ctx: &Ctx,
    cluster: &Cluster,
    ks: &pb::Keyspace,
    file: &Path,
    header: &Header,
    max_value_bytes: usize,
) -> Result<(u64, Vec<u64>), CliError> {
    let mut w = Writer::create(file, header).map_err(file_error)?;
    let mut revisions = Vec::new();
    for p in 0..cluster.ring.partition_count {
        let (head, records) = if header.mode == "cp" {
            save_cp_partition(ctx, cluster, ks, p, max_value_bytes).await?
        } else {
            save_ap_partition(ctx, cluster, ks, p, max_value_bytes).await?
        };
        if let Item::Partition { revision, .. } = head {
            revisions.push(revision);
        }
        w.item(&head).map_err(file_error)?;
        for r in records {
            w.item(&Item::Record(r)).map_err(file_error)?;
        }
    }
    let records = w.finish().map_err(file_error)?;
    Ok((records, revisions))
}

/// `kv snapshot save FILE`.
pub async fn save(ctx: &Ctx, file: &Path, max_value_bytes: usize) -> Result<Exit, CliError> {
    let started = Instant::now();
    let cluster = Cluster::connect(ctx).await?;
    let name = &ctx.global.keyspace;
    let ks = cluster.keyspace(name).await?.ok_or_else(|| {
        CliError::BadInput(format!(
            "keyspace {name:?} does not exist; `kv keyspace list` shows those that do"
        ))
    })?;
    let mode = if ks.mode == pb::Mode::Ap as i32 {
        "ap"
    } else {
        "cp"
    };
    let header = Header {
        keyspace: ks.name.clone(),
        mode: mode.into(),
        replicas: ks.replicas,
        partitions: cluster.ring.partition_count,
        created_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let written = write_backup(ctx, &cluster, &ks, file, &header, max_value_bytes).await;
    if written.is_err() {
        // A failed save leaves no partial file behind (a complete one was never replaced).
        let _ = std::fs::remove_file(snapshot_file::partial_path(file));
    }
    let (records, revisions) = written?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let json = json!({"file": file.display().to_string(), "keyspace": ks.name, "mode": mode, "records": records, "partitions": cluster.ring.partition_count, "revisions": if mode == "cp" { json!(revisions) } else { json!(null) }, "elapsed_ms": elapsed_ms});
    ctx.out.result(json, || {
        format!(
            "saved {records} {} of {mode} keyspace {} ({} partitions{}) to {} in {elapsed_ms} ms",
            if mode == "cp" {
                "keys"
            } else {
                "records (tombstones included)"
            },
            ks.name,
            cluster.ring.partition_count,
            if mode == "cp" {
                ", each cut at one Raft revision"
            } else {
                ", each merged from a majority of its replicas"
            },
            file.display()
        )
    })?;
    Ok(Exit::Ok)
}

/// `kv snapshot restore FILE`: checks all of FILE, then writes it into `into` (default: the
/// keyspace named in the file), creating that keyspace when it does not exist.
pub async fn restore(
    ctx: &Ctx,
    file: &Path,
    into: Option<&str>,
    max_value_bytes: usize,
) -> Result<Exit, CliError> {
    let started = Instant::now();
    let (header, count) = snapshot_file::verify(file).map_err(read_error)?;
    let cluster = Cluster::connect(ctx).await?;
    let target = into.unwrap_or(&header.keyspace).to_string();
    let want_mode = if header.mode == "ap" {
        pb::Mode::Ap
    } else {
        pb::Mode::Cp
    };
    match cluster.keyspace(&target).await? {
        Some(ks) if ks.mode != want_mode as i32 => {
            return Err(CliError::BadInput(format!(
                "keyspace {target:?} is not {} like the backup in {}: restore into a {} keyspace (--into NAME creates one)",
                header.mode,
                file.display(),
                header.mode
            )))
        }
        Some(_) => {}
        None => {
            cluster
                .client
                .create_keyspace(pb::Keyspace {
                    name: target.clone(),
                    mode: want_mode as i32,
                    replicas: header.replicas,
                    read_replicas: 0,
                    write_replicas: 0,
                })
                .await
                .map_err(CliError::client(Stage::Write))?;
        }
    }
    // FIXME(restore into a used keyspace): keys of the target that the backup lacks are left
    // as they are; a `--replace` that clears the keyspace first needs a scan or range delete,
    // which the API does not have yet. The docs say to restore into a fresh keyspace.
    let mut reader = Reader::open(file).map_err(read_error)?;
    let written = if header.mode == "cp" {
        restore_cp(&cluster.client, &target, &mut reader).await?
    } else {
        restore_ap(ctx, &cluster, &target, &mut reader, max_value_bytes).await?
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let json = json!({"file": file.display().to_string(), "keyspace": target, "mode": header.mode, "records": written, "elapsed_ms": elapsed_ms});
    ctx.out.result(json, || {
        format!(
            "restored {written} of {count} records from {} into {} keyspace {target} in {elapsed_ms} ms",
            file.display(),
            header.mode
        )
    })?;
    Ok(Exit::Ok)
}

async fn restore_cp(client: &Client, keyspace: &str, reader: &mut Reader) -> Result<u64, CliError> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut written = 0;
    while let Some(item) = reader.next_item().map_err(read_error)? {
        let Item::Record(r) = item else { continue };
        if tasks.len() >= RESTORE_CONCURRENCY {
            written += joined(tasks.join_next().await)?;
        }
        let (c, ks) = (client.clone(), keyspace.to_string());
        tasks.spawn(async move {
            let value = r.value.unwrap_or_default();
            c.put(&ks, &r.key, &value, Options::default()).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        written += joined(Some(done))?;
    }
    Ok(written)
}

fn joined(
    done: Option<Result<Result<kv_client::WriteResult, ClientError>, tokio::task::JoinError>>,
) -> Result<u64, CliError> {
    match done {
        None => Ok(0),
        Some(Ok(Ok(_))) => Ok(1),
        Some(Ok(Err(e))) => Err(CliError::client(Stage::Write)(e)),
        Some(Err(e)) => Err(CliError::Other(
            anyhow::Error::new(e).context("a restore task"),
        )),
    }
}

async fn restore_ap(
    ctx: &Ctx,
    cluster: &Cluster,
    keyspace: &str,
    reader: &mut Reader,
    max_value_bytes: usize,
) -> Result<u64, CliError> {
    let nodes: Vec<String> = cluster.addr_of.values().map(|(_, a)| a.clone()).collect();
    let mut batch = Vec::new();
    let (mut bytes, mut written, mut turn) = (0, 0u64, 0);
    loop {
        let item = reader.next_item().map_err(read_error)?;
        let end = item.is_none();
        if let Some(Item::Record(r)) = item {
            let size = r.key.len() + r.value.as_ref().map_or(0, Vec::len);
            if !batch.is_empty()
                && (bytes + size > IMPORT_BATCH_BYTES || batch.len() >= IMPORT_BATCH_RECORDS)
            {
                written += import(
                    ctx,
                    &nodes,
                    &mut turn,
                    keyspace,
                    std::mem::take(&mut batch),
                    max_value_bytes,
                )
                .await?;
                bytes = 0;
            }
            bytes += size;
            let (physical_ms, logical, node_id) = r.hlc.unwrap_or_default();
            batch.push(pb::SnapshotRecord {
                key: r.key,
                tombstone: r.value.is_none(),
                value: r.value.unwrap_or_default(),
                version: Some(pb::Version {
                    revision: 0,
                    hlc: Some(pb::Hlc {
                        physical_ms,
                        logical,
                        node_id,
                    }),
                }),
            });
        }
        if end {
            break;
        }
    }
    if !batch.is_empty() {
        written += import(ctx, &nodes, &mut turn, keyspace, batch, max_value_bytes).await?;
    }
    Ok(written)
}

/// One `ImportRecords` call, sent to the nodes in turn until one succeeds (a repeat is
/// harmless: last-write-wins makes it idempotent).
async fn import(
    ctx: &Ctx,
    nodes: &[String],
    turn: &mut usize,
    keyspace: &str,
    records: Vec<pb::SnapshotRecord>,
    max_value_bytes: usize,
) -> Result<u64, CliError> {
    let mut last = None;
    for _ in 0..nodes.len().max(1) {
        let addr = &nodes[*turn % nodes.len()];
        *turn += 1;
        let mut g = grpc(addr, max_value_bytes)?;
        let mut req = tonic::Request::new(pb::ImportRecordsRequest {
            keyspace: keyspace.into(),
            records: records.clone(),
        });
        req.set_timeout(ctx.timeout());
        match g.import_records(req).await {
            Ok(r) => return Ok(u64::from(r.into_inner().imported)),
            Err(s) => match ClientError::from_status(s, addr) {
                e @ (ClientError::InvalidArgument(_) | ClientError::KeyspaceNotFound(_)) => {
                    return Err(CliError::client(Stage::Write)(e))
                }
                e => last = Some(e),
            },
        }
    }
    Err(last.map_or_else(
        || CliError::Unavailable("no node to restore into".into()),
        CliError::client(Stage::Write),
    ))
}
