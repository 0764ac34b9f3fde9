//! Faults on local processes, by pid: kill (SIGKILL, a crash), terminate (SIGTERM, a clean
//! stop), pause (SIGSTOP, a node that hangs without closing its sockets) and resume (SIGCONT).
//!
//! Signals go through the system's `kill` command rather than `libc::kill`: the workspace
//! forbids unsafe code, and the safe wrappers (the `nix` crate) would be a new dependency for
//! four calls that are rare and not latency-sensitive. The pid is checked first, because
//! `kill` reads 0 and negative numbers as process groups (-1 is every process we may signal).

use std::fmt;
use std::process::{Command, Stdio};

/// A signal this module sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: the process dies at once, with no chance to flush or say goodbye.
    Kill,
    /// SIGTERM: the process is asked to stop cleanly.
    Term,
    /// SIGSTOP: the process is frozen; its sockets stay open and its peers see silence.
    Stop,
    /// SIGCONT: a frozen process runs again.
    Cont,
}

impl Signal {
    /// The name `kill -s` takes (without the SIG prefix).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Why a signal was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The pid names no single process this module may signal.
    #[error("will not send {signal} to pid {pid}: {reason}")]
    InvalidPid {
        /// The pid asked for.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The `kill` command could not be run.
    #[error("cannot run `kill` to send {signal} to pid {pid}: {source}")]
    Spawn {
        /// The pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The error starting `kill`.
        source: std::io::Error,
    },
    /// `kill` ran and failed (no such process, not permitted).
    #[error("sending {signal} to pid {pid} failed: {message}")]
    Failed {
        /// The pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// What `kill` printed.
        message: String,
    },
}

/// Kills `pid` with SIGKILL (a crash: nothing is flushed).
pub fn kill(pid: u32) -> Result<(), ProcessError> {
    signal(pid, Signal::Kill)
}

/// Asks `pid` to stop with SIGTERM.
pub fn terminate(pid: u32) -> Result<(), ProcessError> {
    signal(pid, Signal::Term)
}

/// Freezes `pid` with SIGSTOP until [`resume`].
pub fn pause(pid: u32) -> Result<(), ProcessError> {
    signal(pid, Signal::Stop)
}

/// Lets a paused `pid` run again with SIGCONT.
pub fn resume(pid: u32) -> Result<(), ProcessError> {
    signal(pid, Signal::Cont)
}

/// Sends `signal` to the one process `pid`. Blocks while `kill` runs (a few milliseconds).
pub fn signal(pid: u32, signal: Signal) -> Result<(), ProcessError> {
    let invalid = |reason| ProcessError::InvalidPid {
        pid,
        signal,
        reason,
    };
    if pid == 0 {
        return Err(invalid("0 means the caller's whole process group"));
    }
    if pid == 1 {
        return Err(invalid("pid 1 is the init process"));
    }
    if i32::try_from(pid).is_err() {
        return Err(invalid(
            "pids above i32::MAX read as negative, i.e. process groups",
        ));
    }
    let out = Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProcessError::Spawn {
            pid,
            signal,
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(ProcessError::Failed {
        pid,
        signal,
        message: if stderr.is_empty() {
            format!("kill exited with {}", out.status)
        } else {
            stderr
        },
    })
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
