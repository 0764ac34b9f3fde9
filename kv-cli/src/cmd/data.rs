//! `kv put|get|delete|cas`: values come from the command line, stdin (`-`) or a file, and go
//! out as text, JSON (UTF-8 text plus base64) or raw bytes.

use super::Ctx;
use crate::cli::{ConsistencyArg, RequestArgs};
use crate::output::{bytes_text, put_bytes, version_json, version_text, CliError, Exit, Stage};
use anyhow::Context;
use kv_client::{Consistency, Expected, Options, WriteResult};
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

/// Where a value comes from.
pub enum ValueSource {
    /// The command line (`-` means stdin).
    Arg(OsString),
    /// A file.
    File(PathBuf),
}

impl ValueSource {
    /// From a positional value and `--value-file` (clap makes sure one is given).
    pub fn new(arg: Option<OsString>, file: Option<PathBuf>) -> Result<ValueSource, CliError> {
        match (arg, file) {
            (_, Some(f)) => Ok(ValueSource::File(f)),
            (Some(a), None) => Ok(ValueSource::Arg(a)),
            (None, None) => Err(CliError::BadInput(
                "a value is needed: VALUE, `-` for stdin, or --value-file PATH".into(),
            )),
        }
    }

    /// The value's bytes, exactly as given.
    fn read(self) -> Result<Vec<u8>, CliError> {
        match self {
            ValueSource::Arg(a) if a == "-" => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut buf)
                    .context("reading the value from stdin")?;
                Ok(buf)
            }
            ValueSource::Arg(a) => Ok(os_bytes(a)),
            ValueSource::File(path) => std::fs::read(&path).map_err(|e| {
                CliError::BadInput(format!("cannot read --value-file {}: {e}", path.display()))
            }),
        }
    }
}

/// The bytes of a command-line argument (any bytes on Unix, not only UTF-8).
fn os_bytes(s: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    s.into_vec()
}

fn options(ctx: &Ctx, request: &RequestArgs) -> Options {
    Options {
        consistency: match request.consistency {
            None => Consistency::Default,
            Some(ConsistencyArg::One) => Consistency::One,
            Some(ConsistencyArg::Quorum) => Consistency::Quorum,
            Some(ConsistencyArg::All) => Consistency::All,
        },
        stale: request.stale,
        timeout: Some(ctx.timeout()),
        ..Options::default()
    }
}

/// `kv put KEY VALUE`.
pub async fn put(
    ctx: &Ctx,
    key: &str,
    value: ValueSource,
    request: &RequestArgs,
) -> Result<Exit, CliError> {
    let value = value.read()?;
    let c = ctx.client().await?;
    let r = c
        .put(
            &ctx.global.keyspace,
            key.as_bytes(),
            &value,
            options(ctx, request),
        )
        .await
        .map_err(CliError::client(Stage::Write))?;
    print_write(ctx, key, &r)
}

/// `kv delete KEY`.
pub async fn delete(ctx: &Ctx, key: &str, request: &RequestArgs) -> Result<Exit, CliError> {
    let c = ctx.client().await?;
    let r = c
        .delete(&ctx.global.keyspace, key.as_bytes(), options(ctx, request))
        .await
        .map_err(CliError::client(Stage::Write))?;
    print_write(ctx, key, &r)
}

fn print_write(ctx: &Ctx, key: &str, r: &WriteResult) -> Result<Exit, CliError> {
    ctx.out.result(
        json!({"key": key, "keyspace": ctx.global.keyspace, "version": version_json(&r.version), "served_by": r.served_by}),
        || format!("OK ({}, via {})", version_text(&r.version), r.served_by),
    )?;
    Ok(Exit::Ok)
}

/// `kv get KEY`: exit 3 when the key does not exist.
pub async fn get(ctx: &Ctx, key: &str, raw: bool, request: &RequestArgs) -> Result<Exit, CliError> {
    if raw && ctx.out.json() {
        return Err(CliError::BadInput(
            "--raw prints bytes, -o json prints JSON: choose one".into(),
        ));
    }
    let c = ctx.client().await?;
    let r = c
        .get(&ctx.global.keyspace, key.as_bytes(), options(ctx, request))
        .await
        .map_err(CliError::client(Stage::Read))?;
    let keyspace = &ctx.global.keyspace;
    let mut obj = Map::new();
    obj.insert("key".into(), json!(key));
    obj.insert("keyspace".into(), json!(keyspace));
    obj.insert("found".into(), json!(r.value.is_some()));
    put_bytes(&mut obj, "value", r.value.as_deref());
    obj.insert("version".into(), version_json(&r.version));
    obj.insert("served_by".into(), json!(r.served_by));
    obj.insert("maybe_stale".into(), json!(r.maybe_stale));
    match &r.value {
        None => {
            if ctx.out.json() {
                ctx.out.result(Value::Object(obj), String::new)?;
            } else {
                ctx.out
                    .note(&format!("key {key:?} not found in keyspace {keyspace}"));
            }
            Ok(Exit::NotFound)
        }
        Some(v) if raw => {
            ctx.out.bytes(v)?;
            Ok(Exit::Ok)
        }
        Some(_) if ctx.out.json() => {
            ctx.out.result(Value::Object(obj), String::new)?;
            Ok(Exit::Ok)
        }
        Some(v) => {
            // Text mode prints the bytes as they are plus a newline: lossless, unlike a
            // lossy UTF-8 conversion, and what `$(kv get k)` expects.
            let mut line = v.clone();
            line.push(b'\n');
            ctx.out.bytes(&line)?;
            Ok(Exit::Ok)
        }
    }
}

/// What `kv cas` compares with.
pub enum Expect {
    /// `--expect-version`.
    Version(u64),
    /// `--expect-value`.
    Value(OsString),
    /// `--expect-absent`.
    Absent,
}

/// `kv cas KEY NEW_VALUE --expect-...`: exit 4 on a mismatch.
pub async fn cas(
    ctx: &Ctx,
    key: &str,
    new_value: ValueSource,
    expect: Option<Expect>,
    request: &RequestArgs,
) -> Result<Exit, CliError> {
    let expected = match expect {
        Some(Expect::Version(v)) => Expected::Version(v),
        Some(Expect::Value(v)) => Expected::Value(os_bytes(v)),
        Some(Expect::Absent) => Expected::Absent,
        None => {
            return Err(CliError::BadInput(
                "cas needs one of --expect-version, --expect-value, --expect-absent".into(),
            ))
        }
    };
    let new_value = new_value.read()?;
    let c = ctx.client().await?;
    let r = c
        .cas(
            &ctx.global.keyspace,
            key.as_bytes(),
            expected,
            &new_value,
            options(ctx, request),
        )
        .await
        .map_err(CliError::client(Stage::Write))?;
    let mut obj = Map::new();
    obj.insert("key".into(), json!(key));
    obj.insert("keyspace".into(), json!(ctx.global.keyspace));
    obj.insert("succeeded".into(), json!(r.succeeded));
    obj.insert("version".into(), version_json(&r.version));
    put_bytes(&mut obj, "current_value", r.current_value.as_deref());
    obj.insert("served_by".into(), json!(r.served_by));
    ctx.out.result(Value::Object(obj), || {
        if r.succeeded {
            format!("OK ({}, via {})", version_text(&r.version), r.served_by)
        } else {
            format!(
                "MISMATCH: current value {} ({})",
                r.current_value
                    .as_deref()
                    .map_or("absent".into(), bytes_text),
                version_text(&r.version)
            )
        }
    })?;
    Ok(if r.succeeded {
        Exit::Ok
    } else {
        Exit::CasMismatch
    })
}
