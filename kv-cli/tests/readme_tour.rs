//! The README's "A five-minute tour" runs as written: its code block is read from README.md
//! and run by bash, line after line, in a fresh folder that looks like a checkout after
//! `cargo build --release` (`target/release/kv` is this build's binary), with free ports
//! (`KV_BASE_PORT=0`) and a private per-user folder. Each line must exit 0, or the code its
//! comment announces as `# exit N`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tour's shell lines, from the first ```sh block after its heading.
fn tour_lines() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("reading README.md");
    let section = readme
        .split("## A five-minute tour")
        .nth(1)
        .expect("README.md has a \"## A five-minute tour\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the tour has a ```sh code block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The exit code a tour line announces (`# exit N` in its comment), else 0.
fn expected_exit(line: &str) -> i32 {
    line.split_once("# exit ")
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// The bash script: each line followed by a check of its exit code.
fn script(lines: &[String]) -> String {
    let mut s = String::from("set -u\nset -o pipefail\n");
    for (i, line) in lines.iter().enumerate() {
        let want = expected_exit(line);
        s.push_str(&format!(
            "{line}\nrc=$?\nif [ \"$rc\" != {want} ]; then echo \"tour line {}: exit $rc, expected {want}\" >&2; exit 100; fi\n",
            i + 1
        ));
    }
    s
}

/// A folder laid out like a checkout after `cargo build --release`, and the environment the
/// tour runs in.
struct Checkout {
    root: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Checkout {
        let root = tempfile::tempdir().unwrap();
        let release = root.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kv"), release.join("kv")).unwrap();
        Checkout { root }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path())
            .env_remove("KV_ENDPOINTS")
            .env_remove("KV_DIR")
            .env("KV_BASE_PORT", "0")
            .env("HOME", self.path().join("home"))
            .env("XDG_DATA_HOME", self.path().join("xdg"));
        cmd
    }

    fn kv(&self) -> PathBuf {
        self.path().join("target/release/kv")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // Stops the cluster even when the tour failed half-way.
        let _ = self
            .command(self.kv())
            .args(["local", "down", "--purge"])
            .output();
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let mut lines = tour_lines();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("cargo build --release")),
        "the tour starts by building the release binary: {lines:?}"
    );
    // The build itself is this test's own build.
    lines.remove(0);
    assert!(
        !lines.iter().any(|l| l.contains("cargo run")),
        "the tour uses the built binary: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("kv local up")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| expected_exit(l) != 0), "{lines:?}");
    let checkout = Checkout::new();
    let out = checkout
        .command("bash")
        .arg("-c")
        .arg(script(&lines))
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "the README tour failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What the tour's comments promise to show.
    assert!(stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("4 items"), "{stdout}");
    assert!(stdout.contains("(the per-user default"), "{stdout}");
}

#[test]
fn tour_lines_announce_their_exit_codes() {
    assert_eq!(expected_exit("kv get x   # exit 3: not found"), 3);
    assert_eq!(expected_exit("kv get x   # through n2"), 0);
}
