//! Everything the `kv` binary shows and how it ends: text or JSON rendering of results and
//! errors, the one exit-code table (the same in every output mode), the one mapping from
//! `kv_client::Error` to it, and quiet ends on broken pipes. No other module writes to
//! stdout/stderr for a command's result or decides an exit code.

use clap::ValueEnum;
use serde_json::{json, Map, Value};
use std::io::Write;

/// Output format of every command (`-o text|json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document per result on stdout; errors as JSON on stderr.
    Json,
}

/// The exit-code table: the same codes in text and JSON mode (docs/cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok,
    /// Any error not listed below.
    Error,
    /// Bad input or usage: nothing was sent, or the cluster refused the request as malformed.
    BadInput,
    /// The key does not exist (an answer, printed on stdout like any other).
    NotFound,
    /// A compare-and-swap found another value or version (an answer, printed on stdout).
    CasMismatch,
    /// The cluster could not serve the request and nothing was applied.
    Unavailable,
    /// The deadline passed, or a write failed after it may have been applied.
    OutcomeUnknown,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::BadInput => 2,
            Exit::NotFound => 3,
            Exit::CasMismatch => 4,
            Exit::Unavailable => 5,
            Exit::OutcomeUnknown => 6,
        }
    }

    /// The name used as `error.code` in JSON errors.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Error => "error",
            Exit::BadInput => "bad_input",
            Exit::NotFound => "not_found",
            Exit::CasMismatch => "cas_mismatch",
            Exit::Unavailable => "unavailable",
            Exit::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// What a failed request was doing, which decides what its failure means for the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Finding the cluster (reading the ring): nothing was sent yet.
    Connect,
    /// A read or an admin query: it changes nothing whatever happens.
    Read,
    /// A put, delete, compare-and-swap or keyspace creation.
    Write,
}

/// Why a command failed; `exit()` says with which code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or usage detected by the CLI itself.
    #[error("{0}")]
    BadInput(String),
    /// The cluster (or part of it) is unavailable, as a command found out by itself.
    #[error("{0}")]
    Unavailable(String),
    /// A request failed; what it means depends on the stage it failed in.
    #[error("{source}")]
    Client {
        /// What the request was doing.
        stage: Stage,
        /// The client library's error.
        source: kv_client::Error,
    },
    /// Anything else (local cluster management, files, the server failing to start).
    #[error("{0:#}")]
    Other(anyhow::Error),
    /// Stdout was closed by its reader (`kv ring | head`): the command ends quietly.
    #[error("broken pipe")]
    BrokenPipe,
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Other(e)
    }
}

impl CliError {
    /// A client error at `stage`.
    pub fn client(stage: Stage) -> impl Fn(kv_client::Error) -> CliError {
        move |source| CliError::Client { stage, source }
    }

    /// The exit code this error ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::BadInput(_) => Exit::BadInput,
            CliError::Unavailable(_) => Exit::Unavailable,
            CliError::Client { stage, source } => classify(source, *stage),
            CliError::Other(_) => Exit::Error,
            CliError::BrokenPipe => Exit::Ok,
        }
    }
}

/// The one mapping from client errors to exit codes. "Nothing applied" is decided from the
/// error's type (`certainly_not_applied`), never from its text; a read changes nothing, so
/// only its deadline makes its outcome unknown.
pub fn classify(err: &kv_client::Error, stage: Stage) -> Exit {
    use kv_client::Error as E;
    match err {
        E::InvalidArgument(_)
        | E::Config(_)
        | E::KeyspaceNotFound(_)
        | E::FailedPrecondition(_) => Exit::BadInput,
        E::AlreadyExists(_) | E::DataLoss(_) | E::Other { .. } => Exit::Error,
        // Connecting only reads the ring: whatever went wrong, the command sent nothing yet.
        _ if stage == Stage::Connect => Exit::Unavailable,
        E::DeadlineExceeded { .. } => Exit::OutcomeUnknown,
        _ if stage == Stage::Read => Exit::Unavailable,
        e if e.certainly_not_applied() => Exit::Unavailable,
        // A write that failed after it was sent, a server-side Unavailable included unless
        // the node said nothing was applied (`NotApplied`): a CP write may still commit, an AP
        // write may have reached some replicas.
        _ => Exit::OutcomeUnknown,
    }
}

/// Writes results in the chosen format; every write error other than a closed pipe is an error.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    /// The output format.
    pub format: Format,
}

impl Printer {
    /// True in JSON mode.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Prints one result: `json` as one line in JSON mode, `text()` (lines, newline added)
    /// otherwise.
    pub fn result(&self, json: Value, text: impl FnOnce() -> String) -> Result<(), CliError> {
        let mut line = match self.format {
            Format::Json => json.to_string(),
            Format::Text => text(),
        };
        line.push('\n');
        self.bytes(line.as_bytes())
    }

    /// Writes `bytes` to stdout exactly as they are.
    pub fn bytes(&self, bytes: &[u8]) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
                _ => CliError::Other(anyhow::Error::new(e).context("writing to stdout")),
            })
    }

    /// A message for people on stderr (progress, "not found"): text mode only, since in
    /// JSON mode the result on stdout says it all and stderr is kept for JSON errors.
    pub fn note(&self, msg: &str) {
        if self.format == Format::Text {
            // A closed stderr must not turn a success into a failure.
            let _ = writeln!(std::io::stderr().lock(), "{msg}");
        }
    }
}

/// Ends a command: prints its error (text, or JSON on stderr) and returns the exit status.
pub fn finish(format: Format, result: Result<Exit, CliError>) -> std::process::ExitCode {
    let exit = match result {
        Ok(exit) => exit,
        Err(CliError::BrokenPipe) => Exit::Ok,
        Err(e) => {
            print_error(format, e.exit(), &e.to_string());
            e.exit()
        }
    };
    std::process::ExitCode::from(exit.code())
}

/// Prints an error on stderr: `error: MESSAGE`, or `{"error": {...}}` in JSON mode.
pub fn print_error(format: Format, exit: Exit, message: &str) {
    let text = match format {
        Format::Text => format!("error: {message}"),
        Format::Json => error_json(exit, message).to_string(),
    };
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The JSON form of an error.
pub fn error_json(exit: Exit, message: &str) -> Value {
    json!({"error": {"code": exit.name(), "exit": exit.code(), "message": message}})
}

/// Handles a command-line parsing failure: help and version print as usual (exit 0); usage
/// errors exit 2, as JSON on stderr when the arguments asked for JSON.
pub fn clap_error(err: clap::Error, args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let is_info = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if is_info || format_from_args(args) == Format::Text {
        let _ = err.print();
        // clap prints help on stdout with status 0, usage errors on stderr with status 2.
        return std::process::ExitCode::from(err.exit_code().clamp(0, 255) as u8);
    }
    // clap's rendered error starts with one line naming the offending argument.
    let rendered = err.to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ");
    print_error(Format::Json, Exit::BadInput, message);
    std::process::ExitCode::from(Exit::BadInput.code())
}

/// The output format asked for on a command line clap could not parse.
fn format_from_args(args: &[std::ffi::OsString]) -> Format {
    let mut args = args.iter().filter_map(|a| a.to_str());
    while let Some(arg) = args.next() {
        let value = match arg {
            "-o" | "--output" => args.next(),
            _ => arg
                .strip_prefix("--output=")
                .or_else(|| arg.strip_prefix("-o="))
                .or_else(|| arg.strip_prefix("-o").filter(|v| !v.is_empty())),
        };
        if value == Some("json") {
            return Format::Json;
        }
    }
    Format::Text
}

/// Adds `NAME` (the bytes as UTF-8 text, or null when they are not valid UTF-8) and
/// `NAME_base64` to `obj`; both null for `None`.
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    let text = bytes.and_then(|b| std::str::from_utf8(b).ok());
    obj.insert(name.into(), text.map_or(Value::Null, Value::from));
    obj.insert(
        format!("{name}_base64"),
        bytes.map_or(Value::Null, |b| Value::from(base64(b))),
    );
}

/// A value for people: quoted when it is UTF-8 text, its size otherwise.
pub fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("{} bytes of binary", bytes.len()),
    }
}

/// Standard base64 (RFC 4648, with padding). Written here rather than pulled in as a crate:
/// the CLI only ever encodes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k bytes yields k + 1 digits; the rest of the group of 4 is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A record's version as JSON: `{"revision": N}` (CP) or `{"hlc": {...}}` (AP); null if none.
pub fn version_json(v: &Option<kv_proto::v1::Version>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => match &v.hlc {
            Some(h) => {
                json!({"hlc": {"physical_ms": h.physical_ms, "logical": h.logical, "node_id": h.node_id}})
            }
            None => json!({"revision": v.revision}),
        },
    }
}

/// A record's version for people.
pub fn version_text(v: &Option<kv_proto::v1::Version>) -> String {
    match v {
        None => "-".into(),
        Some(v) => match &v.hlc {
            Some(h) => format!("hlc {}.{}@{}", h.physical_ms, h.logical, h.node_id),
            None => format!("revision {}", v.revision),
        },
    }
}

/// Rows of a table for people (`kv demo`, `kv compare`): a label column, then one column per
/// cell, each as wide as the widest cell.
pub fn columns(rows: &[(String, Vec<String>)]) -> String {
    let first = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let width = rows
        .iter()
        .flat_map(|(_, c)| c.iter().map(String::len))
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(label, cells)| {
            let mut line = format!("  {label:<first$}");
            for c in cells {
                line.push_str(&format!("   {c:<width$}"));
            }
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0x00, 0xff, 0x01]), "AP8B");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        let all = [
            Exit::Ok,
            Exit::Error,
            Exit::BadInput,
            Exit::NotFound,
            Exit::CasMismatch,
            Exit::Unavailable,
            Exit::OutcomeUnknown,
        ];
        let codes: Vec<(u8, &str)> = all.iter().map(|e| (e.code(), e.name())).collect();
        assert_eq!(
            codes,
            [
                (0, "ok"),
                (1, "error"),
                (2, "bad_input"),
                (3, "not_found"),
                (4, "cas_mismatch"),
                (5, "unavailable"),
                (6, "outcome_unknown")
            ]
        );
    }

    #[test]
    fn client_errors_map_to_exit_codes_by_stage() {
        use kv_client::Error as E;
        let unavailable = E::Unavailable("no quorum".into());
        let deadline = E::DeadlineExceeded {
            elapsed_ms: 5000,
            message: "late".into(),
        };
        let connect = E::Connect {
            addr: "a".into(),
            message: "refused".into(),
        };
        let transport = E::Transport {
            addr: "a".into(),
            message: "reset".into(),
        };
        let not_leader = E::NotLeader {
            leader: None,
            message: "x".into(),
        };
        // (error, connect, read, write)
        let table = [
            (
                &unavailable,
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::OutcomeUnknown,
            ),
            // The node refused before proposing (no leader reachable): nothing was applied.
            (
                &E::NotApplied("no leader".into()),
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::Unavailable,
            ),
            (
                &deadline,
                Exit::Unavailable,
                Exit::OutcomeUnknown,
                Exit::OutcomeUnknown,
            ),
            (
                &connect,
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::Unavailable,
            ),
            (
                &transport,
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::OutcomeUnknown,
            ),
            (
                &not_leader,
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::Unavailable,
            ),
            (
                &E::InvalidArgument("k".into()),
                Exit::BadInput,
                Exit::BadInput,
                Exit::BadInput,
            ),
            (
                &E::Config("a".into()),
                Exit::BadInput,
                Exit::BadInput,
                Exit::BadInput,
            ),
            (
                &E::KeyspaceNotFound("x".into()),
                Exit::BadInput,
                Exit::BadInput,
                Exit::BadInput,
            ),
            (
                &E::FailedPrecondition("ap".into()),
                Exit::BadInput,
                Exit::BadInput,
                Exit::BadInput,
            ),
            (
                &E::AlreadyExists("x".into()),
                Exit::Error,
                Exit::Error,
                Exit::Error,
            ),
            (
                &E::DataLoss("crc".into()),
                Exit::Error,
                Exit::Error,
                Exit::Error,
            ),
        ];
        for (err, connect, read, write) in table {
            assert_eq!(classify(err, Stage::Connect), connect, "{err} at connect");
            assert_eq!(classify(err, Stage::Read), read, "{err} on a read");
            assert_eq!(classify(err, Stage::Write), write, "{err} on a write");
        }
    }

    #[test]
    fn json_is_recognised_in_every_spelling_of_the_output_flag() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        for spelling in [
            &["kv", "-o", "json", "get"][..],
            &["kv", "get", "--output", "json"],
            &["kv", "get", "--output=json"],
            &["kv", "-ojson", "get"],
        ] {
            assert_eq!(
                format_from_args(&args(spelling)),
                Format::Json,
                "{spelling:?}"
            );
        }
        assert_eq!(
            format_from_args(&args(&["kv", "get", "json"])),
            Format::Text
        );
    }

    #[test]
    fn values_are_text_when_utf8_and_always_base64() {
        let mut obj = Map::new();
        put_bytes(&mut obj, "value", Some(b"hi"));
        assert_eq!(
            Value::Object(obj),
            json!({"value": "hi", "value_base64": "aGk="})
        );
        let mut obj = Map::new();
        put_bytes(&mut obj, "value", Some(&[0xff, 0x00]));
        assert_eq!(
            Value::Object(obj),
            json!({"value": null, "value_base64": "/wA="})
        );
        let mut obj = Map::new();
        put_bytes(&mut obj, "value", None);
        assert_eq!(
            Value::Object(obj),
            json!({"value": null, "value_base64": null})
        );
    }
}
