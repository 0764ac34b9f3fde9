//! The `kv` command line as scripts use it (issue 14), on real processes: every exit code in
//! both output modes, `-o json` parsed from every command (errors included, on stderr), global
//! flags before and after the subcommand, binary values (1 MiB through stdin and `--raw`, base64
//! in JSON), node control in local clusters, quiet broken pipes, and where the local cluster's
//! folder is looked for.

mod common;

use common::*;

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// One run of `kv`: exit code and both streams.
struct Run {
    args: String,
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "kv {}: exit {}\nstdout: {}\nstderr: {}",
            self.args,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }

    /// Asserts the exit code and returns the run.
    fn exit(self, code: i32) -> Run {
        assert_eq!(self.code, code, "{}", self.show());
        self
    }

    /// stdout parsed as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.show()))
    }

    /// stderr parsed as a JSON error with this exit code and code name.
    fn json_error(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", self.show()));
        assert_eq!(v["error"]["exit"], self.code, "{}", self.show());
        assert_eq!(v["error"]["code"], name, "{}", self.show());
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.show()
        );
        v
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn run_cmd(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running kv");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        args: args.join(" "),
        code: out.status.code().expect("kv ended by a signal"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(dir: &Path, args: &[&str]) -> Run {
    run_cmd(kv_command(dir, args), args, None)
}

fn run_with_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Run {
    run_cmd(kv_command(dir, args), args, Some(stdin))
}

/// Runs `args` in text mode and with `-o json`, asserting `code` both times; returns the JSON
/// run, whose stderr (for codes other than 0, 3, 4) must be a JSON error named `name`.
fn both_modes(dir: &Path, args: &[&str], code: i32, name: &str) -> Run {
    let text = run(dir, args).exit(code);
    if ![0, 3, 4].contains(&code) {
        assert!(text.stderr.starts_with("error: "), "{}", text.show());
    }
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let json = run(dir, &json_args).exit(code);
    if [0, 3, 4].contains(&code) {
        json.json();
        assert!(json.stderr.is_empty(), "{}", json.show());
    } else {
        json.json_error(name);
    }
    json
}

/// Runs `kv ARGS` with stdout closed before it writes; returns the run's exit code and stderr.
fn with_closed_stdout(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut child = kv_command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("kv ended by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Standard base64 decoding (the test's own, independent of the binary's encoder).
fn unbase64(s: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for group in s.as_bytes().chunks(4) {
        let pad = group.iter().filter(|c| **c == b'=').count();
        let n = group
            .iter()
            .map(|c| if *c == b'=' { 0 } else { u32::from(digit(*c)) })
            .fold(0, |acc, d| (acc << 6) | d);
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// `len` bytes covering every byte value, not valid UTF-8.
fn binary(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i < 256 {
                i as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

#[test]
fn scripts_get_one_exit_code_table_json_everywhere_and_binary_safe_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);

    // kv local up / endpoints / status, as JSON.
    let up = run(dir, &["local", "up", "--base-port", "0", "-o", "json"]).exit(0);
    let up = up.json();
    assert_eq!(up["nodes"].as_array().unwrap().len(), 3, "{up}");
    assert_eq!(up["dir_source"], "env", "{up}");
    assert!(up["dir"].as_str().unwrap().ends_with(".kv-local"), "{up}");
    let endpoints = run(dir, &["local", "endpoints", "-o", "json"])
        .exit(0)
        .json();
    assert_eq!(endpoints["endpoints"], up["endpoints"]);
    let n3_addr = run(dir, &["local", "endpoints", "n3"]).exit(0).text();
    assert_eq!(n3_addr.trim(), up["nodes"][2]["addr"].as_str().unwrap());
    let status = run(dir, &["local", "status", "-o", "json"]).exit(0).json();
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["running"] == true),
        "{status}"
    );

    // 0: put and get, and global flags before or after the subcommand.
    let put = both_modes(dir, &["put", "k", "v"], 0, "ok").json();
    assert!(put["version"]["revision"].as_u64().unwrap() > 0, "{put}");
    let got = both_modes(dir, &["get", "k"], 0, "ok");
    assert_eq!(got.json()["value"], "v");
    assert_eq!(run(dir, &["get", "k"]).exit(0).text(), "v\n");
    let put = run(dir, &["-o", "json", "--keyspace", "ap", "put", "g1", "one"]).exit(0);
    assert_eq!(put.json()["keyspace"], "ap");
    assert!(put.json()["version"]["hlc"].is_object(), "{}", put.show());
    let put = run(
        dir,
        &[
            "put",
            "g2",
            "two",
            "-k",
            "ap",
            "-o",
            "json",
            "--timeout-ms",
            "9000",
        ],
    );
    assert_eq!(put.exit(0).json()["keyspace"], "ap");
    let got = run(dir, &["--keyspace", "ap", "get", "g1"]).exit(0);
    assert_eq!(got.text(), "one\n");

    // 3: a missing key is an answer, on stdout in JSON mode; a note on stderr in text mode.
    let missing = run(dir, &["get", "nothing-here"]).exit(3);
    assert!(missing.stdout.is_empty(), "{}", missing.show());
    assert!(missing.stderr.contains("not found"), "{}", missing.show());
    let missing = both_modes(dir, &["get", "nothing-here"], 3, "not_found").json();
    assert_eq!(missing["found"], false, "{missing}");
    assert_eq!(missing["value"], Value::Null, "{missing}");

    // 4: a compare-and-swap mismatch, with the current value.
    let mismatch = run(dir, &["cas", "k", "w", "--expect-value", "other"]).exit(4);
    assert!(
        mismatch.text().starts_with("MISMATCH"),
        "{}",
        mismatch.show()
    );
    let mismatch = both_modes(dir, &["cas", "k", "w", "--expect-value", "other"], 4, "").json();
    assert_eq!(mismatch["succeeded"], false, "{mismatch}");
    assert_eq!(mismatch["current_value"], "v", "{mismatch}");
    let swapped = run(dir, &["cas", "c", "1", "--expect-absent"]).exit(0);
    assert!(swapped.text().starts_with("OK"), "{}", swapped.show());
    let json_swap = run(dir, &["cas", "c2", "1", "--expect-absent", "-o", "json"]).exit(0);
    assert_eq!(json_swap.json()["succeeded"], true);

    // 2: bad input, whether the CLI or the cluster finds it.
    both_modes(dir, &["put", "", "v"], 2, "bad_input");
    both_modes(dir, &["get", "k", "-k", "no-such-keyspace"], 2, "bad_input");
    both_modes(
        dir,
        &["cas", "g1", "x", "--expect-absent", "-k", "ap"],
        2,
        "bad_input",
    );
    both_modes(dir, &["get"], 2, "bad_input");
    both_modes(
        dir,
        &["put", "k", "v", "--consistency", "most"],
        2,
        "bad_input",
    );
    both_modes(dir, &["get", "k", "--endpoints", "nowhere"], 2, "bad_input");

    // 1: anything else, e.g. a keyspace that exists with another definition.
    let created = run(
        dir,
        &["keyspace", "create", "orders", "--mode", "ap", "-o", "json"],
    );
    assert_eq!(created.exit(0).json()["keyspace"]["mode"], "ap");
    both_modes(
        dir,
        &["keyspace", "create", "orders", "--mode", "cp"],
        1,
        "error",
    );

    // 5 before anything was sent: no node at the given address.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = free.local_addr().unwrap().to_string();
    drop(free);
    both_modes(
        dir,
        &["get", "k", "--endpoints", &nowhere],
        5,
        "unavailable",
    );
    both_modes(
        dir,
        &["put", "k", "v", "--endpoints", &nowhere],
        5,
        "unavailable",
    );

    // Keyspaces, ring, status, delete: JSON from each.
    let list = run(dir, &["keyspace", "list", "-o", "json"]).exit(0).json();
    let names: Vec<&str> = list["keyspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"orders") && names.contains(&"cp"), "{list}");
    let ring = run(dir, &["ring", "-o", "json"]).exit(0).json();
    assert_eq!(ring["members"].as_array().unwrap().len(), 3, "{ring}");
    let status = run(dir, &["status", "--wait-ms", "30000", "-o", "json"])
        .exit(0)
        .json();
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(
        status["partitions_without_leader"],
        serde_json::json!([]),
        "{status}"
    );
    let deleted = run(dir, &["delete", "c", "-o", "json"]).exit(0).json();
    assert!(deleted["version"].is_object(), "{deleted}");
    run(dir, &["get", "c"]).exit(3);

    // A closed stdout (`kv ring | head -1`) ends quietly.
    let (code, stderr) = with_closed_stdout(dir, &["ring"]);
    assert_eq!(
        (code, stderr.as_str()),
        (0, ""),
        "kv ring into a closed pipe"
    );

    // Binary values: 1 MiB through stdin and --raw, from a file, base64 in JSON.
    // FIXME: the 1 MiB value goes to the AP keyspace: in a debug build a CP write over about
    // 256 KiB is not committed (openraft's AppendEntries times out after 100 ms and the group
    // keeps re-electing); that is the CP engine's to fix, not the CLI's.
    let blob = binary(1024 * 1024);
    let big = |args: &[&'static str]| {
        let mut all = args.to_vec();
        all.extend(["-k", "ap", "--timeout-ms", "30000"]);
        all
    };
    run_with_stdin(dir, &big(&["put", "blob", "-"]), &blob).exit(0);
    let raw = run(dir, &big(&["get", "blob", "--raw"])).exit(0);
    assert!(
        raw.stdout == blob,
        "1 MiB value changed on the way ({} bytes back)",
        raw.stdout.len()
    );
    let json = run(dir, &big(&["get", "blob", "-o", "json"]))
        .exit(0)
        .json();
    assert_eq!(json["value"], Value::Null, "not UTF-8, so no text form");
    assert!(unbase64(json["value_base64"].as_str().unwrap()) == blob);
    let small = binary(300);
    let file = dir.join("small.bin");
    std::fs::write(&file, &small).unwrap();
    run(
        dir,
        &["put", "small", "--value-file", file.to_str().unwrap()],
    )
    .exit(0);
    assert_eq!(run(dir, &["get", "small", "--raw"]).exit(0).stdout, small);
    let mut with_newline = small.clone();
    with_newline.push(b'\n');
    assert_eq!(run(dir, &["get", "small"]).exit(0).stdout, with_newline);
    both_modes(
        dir,
        &["put", "x", "--value-file", "/no/such/file"],
        2,
        "bad_input",
    );
    run(dir, &["get", "small", "--raw", "-o", "json"])
        .exit(2)
        .json_error("bad_input");

    // Node control: kill n3; status and quorum-all requests say what they could and could not do.
    let killed = run(dir, &["local", "kill", "n3", "-o", "json"])
        .exit(0)
        .json();
    assert_eq!(killed["action"], "kill", "{killed}");
    assert!(
        killed["pid_before"].is_u64() && killed["running"] == false,
        "{killed}"
    );
    let status = both_modes(dir, &["status"], 5, "unavailable");
    let report = status.json();
    assert_eq!(report["healthy"], false, "{report}");
    let unreachable: Vec<&Value> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reachable"] == false)
        .map(|n| &n["node"])
        .collect();
    assert_eq!(unreachable, [&Value::from("n3")], "{report}");
    // 6: an AP write that could not reach all replicas may still have applied on the others.
    both_modes(
        dir,
        &["put", "all-or-not", "v", "-k", "ap", "--consistency", "all"],
        6,
        "outcome_unknown",
    );
    // 5: a read changes nothing, so a read short of replicas is simply unavailable.
    both_modes(
        dir,
        &["get", "g1", "-k", "ap", "--consistency", "all"],
        5,
        "unavailable",
    );
    let again = run(dir, &["local", "kill", "n3"]).exit(0);
    assert!(again.text().contains("not running"), "{}", again.show());

    // start / stop / restart, with the data kept.
    let started = run(dir, &["local", "start", "n3", "-o", "json"])
        .exit(0)
        .json();
    assert!(
        started["running"] == true && started["pid_before"].is_null(),
        "{started}"
    );
    let stopped = run(dir, &["local", "stop", "n3", "-o", "json"])
        .exit(0)
        .json();
    assert_eq!(stopped["running"], false, "{stopped}");
    run(dir, &["local", "start", "n3"]).exit(0);
    let restarted = run(dir, &["local", "restart", "n3", "-o", "json"])
        .exit(0)
        .json();
    assert!(
        restarted["running"] == true && restarted["pid_before"].is_u64(),
        "{restarted}"
    );
    assert_ne!(restarted["pid"], restarted["pid_before"], "{restarted}");
    let n3_addr = n3_addr.trim();
    let got = run(
        dir,
        &["get", "k", "--endpoints", n3_addr, "--timeout-ms", "20000"],
    )
    .exit(0);
    assert_eq!(got.text(), "v\n");
    both_modes(dir, &["local", "kill", "n9"], 2, "bad_input");

    let down = run(dir, &["local", "down", "-o", "json"]).exit(0).json();
    assert_eq!(down["stopped"], 3, "{down}");
}

#[test]
fn without_a_cluster_usage_errors_help_and_completions_still_follow_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let no_cluster = both_modes(dir, &["get", "k"], 2, "bad_input");
    let message = no_cluster.json_error("bad_input")["error"]["message"].to_string();
    assert!(
        message.contains("kv local up") && message.contains("KV_DIR"),
        "{message}"
    );
    both_modes(dir, &["local", "status"], 2, "bad_input");
    both_modes(dir, &["local", "start", "n1"], 2, "bad_input");
    both_modes(dir, &["no-such-command"], 2, "bad_input");
    both_modes(
        dir,
        &["server", "--name", "n1", "--peers", "n1=x"],
        1,
        "error",
    );

    for shell in ["bash", "zsh", "fish"] {
        let script = run(dir, &["completion", shell]).exit(0).text();
        assert!(
            script.contains("kv") && script.contains("local"),
            "{shell}: {script}"
        );
        let json = run(dir, &["completion", shell, "-o", "json"])
            .exit(0)
            .json();
        assert_eq!(json["script"].as_str(), Some(script.as_str()));
    }
    let help = run(dir, &["--help"]).exit(0).text();
    assert!(
        help.contains("key-value store") && help.contains("Examples:"),
        "{help}"
    );
    assert!(help.contains("Exit codes"), "{help}");
    let help = run(dir, &["put", "--help"]).exit(0).text();
    assert!(
        help.contains("Examples:") && help.contains("kv put"),
        "{help}"
    );

    let (code, stderr) = with_closed_stdout(dir, &["completion", "bash"]);
    assert_eq!(
        (code, stderr.as_str()),
        (0, ""),
        "completion into a closed pipe"
    );
}

#[test]
fn the_local_cluster_folder_is_found_as_documented_and_named_in_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = dir.join("home");
    let xdg = dir.join("xdg");
    let down = |cwd: &Path, env: &[(&str, &Path)], extra: &[&str]| {
        let mut args = vec!["local", "down", "-o", "json"];
        args.extend_from_slice(extra);
        let mut cmd = kv_command(cwd, &args);
        cmd.env_remove("KV_DIR")
            .env_remove("XDG_DATA_HOME")
            .env("HOME", &home);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let json = run_cmd(cmd, &args, None).exit(0).json();
        (
            json["dir"].as_str().unwrap().to_string(),
            json["dir_source"].as_str().unwrap().to_string(),
        )
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    assert_eq!(
        down(dir, &[], &[]),
        (
            s(&home.join(".local/share/kv/local")),
            "user_default".into()
        )
    );
    assert_eq!(
        down(dir, &[("XDG_DATA_HOME", &xdg)], &[]),
        (s(&xdg.join("kv/local")), "user_default".into())
    );
    std::fs::create_dir(dir.join(".kv-local")).unwrap();
    assert_eq!(
        down(dir, &[("XDG_DATA_HOME", &xdg)], &[]),
        (".kv-local".into(), "current_dir".into())
    );
    let env_dir = dir.join("from-env");
    assert_eq!(
        down(dir, &[("KV_DIR", &env_dir)], &[]),
        (s(&env_dir), "env".into())
    );
    let flag_dir = dir.join("from-flag");
    assert_eq!(
        down(dir, &[("KV_DIR", &env_dir)], &["--dir", &s(&flag_dir)]),
        (s(&flag_dir), "flag".into())
    );
    // Text messages name the folder and the rule.
    let mut cmd = kv_command(dir, &["local", "status"]);
    cmd.env("KV_DIR", &env_dir);
    let status = run_cmd(cmd, &["local", "status"], None).exit(2);
    assert!(
        status.stderr.contains(&s(&env_dir)) && status.stderr.contains("from KV_DIR"),
        "{}",
        status.show()
    );
}
