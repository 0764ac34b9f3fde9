use super::*;
use clap::CommandFactory;

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn global_flags_are_accepted_before_and_after_the_subcommand() {
    for args in [
        &[
            "kv",
            "--keyspace",
            "ap",
            "-o",
            "json",
            "--timeout-ms",
            "7",
            "put",
            "k",
            "v",
        ][..],
        &[
            "kv",
            "put",
            "k",
            "v",
            "--keyspace",
            "ap",
            "-o",
            "json",
            "--timeout-ms",
            "7",
        ],
        &[
            "kv",
            "-k",
            "ap",
            "put",
            "-o",
            "json",
            "k",
            "v",
            "--timeout-ms",
            "7",
        ],
    ] {
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.global.keyspace, "ap", "{args:?}");
        assert_eq!(cli.global.output, Format::Json, "{args:?}");
        assert_eq!(cli.global.timeout_ms, 7, "{args:?}");
    }
    let cli = Cli::try_parse_from(["kv", "--dir", "/x", "local", "status"]).unwrap();
    assert_eq!(cli.global.dir, Some(PathBuf::from("/x")));
    let cli = Cli::try_parse_from(["kv", "local", "status", "--dir", "/y"]).unwrap();
    assert_eq!(cli.global.dir, Some(PathBuf::from("/y")));
}
