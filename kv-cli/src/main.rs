//! The `kv` binary: parses the command line, runs one command, and lets `output` print its
//! result or error and choose the exit code.

mod arg_enums;
mod bench;
mod cli;
mod cmd;
mod compare;
mod demo;
mod local;
mod output;

use clap::Parser;
use cli::{Cli, Cmd};
use cmd::data::{Expect, ValueSource};
use cmd::Ctx;
use output::{CliError, Exit, Printer};
use std::process::ExitCode;

async fn run(cli: Cli) -> Result<Exit, CliError> {
    let ctx = Ctx {
        out: Printer {
            format: cli.global.output,
        },
        global: cli.global,
    };
    match cli.command {
        Cmd::Server(args) => cmd::server::run(args).await,
        Cmd::Local { command } => cmd::local::run(&ctx, command).await,
        Cmd::Demo(args) => cmd::demo::run(&ctx, args).await,
        Cmd::Compare(args) => cmd::compare::run(&ctx, args).await,
        Cmd::Chaos { command } => cmd::chaos::run(&ctx, command).await,
        Cmd::Put {
            key,
            value,
            value_file,
            request,
        } => {
            let value = ValueSource::new(value, value_file)?;
            cmd::data::put(&ctx, &key, value, &request).await
        }
        Cmd::Get { key, raw, request } => cmd::data::get(&ctx, &key, raw, &request).await,
        Cmd::Delete { key, request } => cmd::data::delete(&ctx, &key, &request).await,
        Cmd::Cas {
            key,
            new_value,
            value_file,
            expect_version,
            expect_value,
            expect_absent,
            request,
        } => {
            let value = ValueSource::new(new_value, value_file)?;
            let expect = match (expect_version, expect_value, expect_absent) {
                (Some(v), _, _) => Some(Expect::Version(v)),
                (_, Some(v), _) => Some(Expect::Value(v)),
                (_, _, true) => Some(Expect::Absent),
                _ => None,
            };
            cmd::data::cas(&ctx, &key, value, expect, &request).await
        }
        Cmd::Ring => cmd::admin::ring(&ctx).await,
        Cmd::Status { wait_ms } => cmd::admin::status(&ctx, wait_ms).await,
        Cmd::Keyspace { command } => cmd::admin::keyspace(&ctx, command).await,
        Cmd::Completion { shell } => cmd::admin::completion(&ctx, shell),
        Cmd::Snapshot { command } => match command {
            cli::SnapshotCmd::Save {
                file,
                max_value_bytes,
            } => cmd::snapshot::save(&ctx, &file, max_value_bytes).await,
            cli::SnapshotCmd::Restore {
                file,
                into,
                max_value_bytes,
            } => cmd::snapshot::restore(&ctx, &file, into.as_deref(), max_value_bytes).await,
        },
        Cmd::Bench(args) => bench::run(&ctx, args).await,
        Cmd::Check(args) => cmd::check::run(&ctx, &args),
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return output::clap_error(e, &args),
    };
    let format = cli.global.output;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let err = CliError::Other(anyhow::Error::new(e).context("starting the runtime"));
            return output::finish(format, Err(err));
        }
    };
    let result = runtime.block_on(run(cli));
    output::finish(format, result)
}
