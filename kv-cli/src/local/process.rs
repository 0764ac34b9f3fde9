//! Process control of local-cluster nodes: spawning `kv server`, telling whether a recorded
//! node still runs, stopping it, free ports.
//!
//! A node's process is named by its pid *and* its start time (`/proc/PID/stat` field 22, in
//! clock ticks after boot), both recorded at spawn. The pair never names another process after
//! the pid is reused, and reading it cannot flicker: the file exists, unchanged, for the
//! process's whole life — unlike its command line, which reads empty while it execs or exits.
//! While `kv local up` is still the node's parent it goes further and watches the child's exit
//! status. Linux only, like `/proc`.

use super::{LocalNode, KILL_TIMEOUT, LOCAL_CLUSTER_NAME, STOP_TIMEOUT};
use anyhow::{bail, Context, Result};
use chaos::process::Signal;
use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a stopping process is polled.
const POLL: Duration = Duration::from_millis(20);

/// One process, exactly: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22). `None` when an older
    /// `kv` recorded the pid alone: then any live process with that pid counts.
    pub start_ticks: Option<u64>,
}

/// A process's state letter and start time, parsed from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')': the
    // fields after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state, so field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn read_stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl ProcessId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcessId> {
        read_stat(pid).map(|(_, start)| ProcessId {
            pid,
            start_ticks: Some(start),
        })
    }

    /// True while this very process runs: it exists, has not exited (a zombie has, its parent
    /// just has not collected it), and started when recorded.
    pub fn alive(&self) -> bool {
        match read_stat(self.pid) {
            Some((state, start)) => {
                !matches!(state, 'Z' | 'X' | 'x') && self.start_ticks.is_none_or(|s| s == start)
            }
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to end; true if it did.
    fn wait_gone(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.alive() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }
}

/// True when nothing listens on `addr`.
pub fn port_free(addr: &str) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// `n` distinct ports free right now on loopback. All are held until all are picked: a port
/// released and asked for again may be handed out twice.
pub fn pick_free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A free loopback port that is none of `avoid` (ports recorded for nodes not started yet,
/// which are free now but taken soon).
pub fn pick_free_port_avoiding(avoid: &[u16]) -> Result<u16> {
    // Hold every pick until one fits, so the same port cannot come back on the next try.
    let mut held = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
        let port = l.local_addr()?.port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
        held.push(l);
    }
}

/// Ends the process `id` with `signal` (SIGTERM escalates to SIGKILL after `STOP_TIMEOUT`)
/// and waits until it is gone. Returns false when it was not running. The signal goes only to
/// the recorded process, never to a later one that reuses its pid.
pub fn terminate(id: &ProcessId, signal: Signal) -> Result<bool> {
    if !id.alive() {
        return Ok(false);
    }
    // The process may exit between the check and the signal: a failed send is checked below.
    let _ = chaos::process::signal(id.pid, signal);
    if signal == Signal::Term && !id.wait_gone(STOP_TIMEOUT) {
        let _ = chaos::process::kill(id.pid);
    }
    if !id.wait_gone(KILL_TIMEOUT) {
        bail!("process {} did not exit after SIGKILL", id.pid);
    }
    Ok(true)
}

/// A node this command spawned: the child handle (its exit status is exact) and its identity.
#[derive(Debug)]
pub struct Spawned {
    /// The child process.
    pub child: Child,
    /// Its pid and start time, as recorded in `cluster.json`.
    pub id: ProcessId,
    /// Its log file.
    pub log: PathBuf,
}

impl Spawned {
    /// `Some(why)` once the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        }
    }

    /// Stops the child (SIGTERM, SIGKILL after `STOP_TIMEOUT`) and collects its exit status.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = chaos::process::terminate(self.id.pid);
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("waiting for the killed node")?;
        Ok(())
    }
}

/// Spawns `kv server` for `node` in its own process group, logging to `dir/NAME.log`, with its
/// data in `dir/NAME`.
pub fn spawn_server(
    dir: &Path,
    node: &LocalNode,
    peers: &str,
    chaos: bool,
    secure: Option<&super::secure::SecureFiles>,
) -> Result<Spawned> {
    let exe = std::env::current_exe().context("finding the kv binary")?;
    let data = dir.join(&node.name);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log_path = dir.join(format!("{}.log", node.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("server")
        .arg("--name")
        .arg(&node.name)
        .arg("--listen")
        .arg(&node.addr)
        .arg("--peers")
        .arg(peers)
        .arg("--cluster-name")
        .arg(LOCAL_CLUSTER_NAME)
        .arg("--data-dir")
        .arg(&data)
        // The node's environment must not point it at another cluster's endpoints or folder.
        .env_remove("KV_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(peer) = &node.peer_addr {
        cmd.arg("--peer-listen").arg(peer);
    }
    if let Some(files) = secure {
        cmd.arg("--auth-file")
            .arg(files.auth_file())
            .arg("--tls-cert")
            .arg(files.node_cert(&node.name))
            .arg("--tls-key")
            .arg(files.node_key(&node.name))
            .arg("--tls-ca")
            .arg(files.ca());
    }
    if chaos {
        cmd.arg("--chaos");
    }
    if let Some(http) = &node.http_addr {
        cmd.arg("--http-listen").arg(http);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: Ctrl-C on `kv local up` must not kill detached nodes.
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting node {}", node.name))?;
    // An unwaited child stays in the process table (at worst as a zombie), so its stat file
    // is there to read; the start time is set at fork and kept across exec.
    let Some(id) = ProcessId::of(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "cannot read /proc/{}/stat of node {}: kv local needs Linux's /proc to tell its nodes apart",
            child.id(),
            node.name
        );
    };
    // Dropping a Child neither waits nor kills: the node outlives this command.
    Ok(Spawned {
        child,
        id,
        log: log_path,
    })
}

/// The last `n` lines of a node's log (for start-up failures).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_picked_together_are_distinct_and_avoided_ones_never_come_back() {
        let ports = pick_free_ports(60).unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for _ in 0..20 {
            let p = pick_free_port_avoiding(&ports).unwrap();
            assert!(!ports.contains(&p), "{p} was to be avoided");
        }
    }

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let line = "4242 (kv server) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 12 3 0 0 20 0 9 0 \
                    123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 123456)));
        assert_eq!(parse_stat("1 (a) Z 0"), None, "too short");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessId::of(std::process::id()).expect("own stat");
        assert!(me.alive());
        let reused = ProcessId {
            start_ticks: me.start_ticks.map(|s| s + 1),
            ..me
        };
        assert!(
            !reused.alive(),
            "same pid, other start time: another process"
        );
        let legacy = ProcessId {
            start_ticks: None,
            ..me
        };
        assert!(legacy.alive());
    }

    #[test]
    fn an_exited_child_is_dead_before_and_after_it_is_collected() {
        let mut child = Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        // Until collected it is a zombie: exited, so not alive.
        assert!(id.wait_gone(Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(!id.alive());
    }
}
