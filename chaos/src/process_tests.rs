//! Each signal does to a real child process what its name says; bad pids are refused.

use super::*;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::{Duration, Instant};

/// Long enough for any of these tests; the guard kills the child sooner.
const CHILD_LIFETIME_S: &str = "300";
/// Generous bound on the kernel acting on a delivered signal.
const STATE_DEADLINE: Duration = Duration::from_secs(10);

/// A `sleep` child, killed and reaped when the test ends, whatever happened.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg(CHILD_LIFETIME_S)
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the child to exit; returns the signal that ended it.
    fn exit_signal(&mut self) -> Option<i32> {
        self.0.wait().expect("wait for the child").signal()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The process state letter from `/proc/PID/stat` (`T` = stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_name = stat.rsplit_once(')').expect("stat has a (comm)").1;
    after_name.trim_start().chars().next().expect("a state")
}

fn wait_for_state(pid: u32, wanted: impl Fn(char) -> bool, what: &str) {
    let start = Instant::now();
    loop {
        let s = state(pid);
        if wanted(s) {
            return;
        }
        assert!(
            start.elapsed() < STATE_DEADLINE,
            "pid {pid} never became {what} (state {s})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill_ends_the_process_with_sigkill() {
    let mut child = Sleeper::start();
    kill(child.pid()).unwrap();
    assert_eq!(child.exit_signal(), Some(9));
}

#[test]
fn terminate_ends_the_process_with_sigterm() {
    let mut child = Sleeper::start();
    terminate(child.pid()).unwrap();
    assert_eq!(child.exit_signal(), Some(15));
}

#[cfg(target_os = "linux")]
#[test]
fn pause_freezes_the_process_and_resume_lets_it_run() {
    let child = Sleeper::start();
    let pid = child.pid();
    pause(pid).unwrap();
    wait_for_state(pid, |s| s == 'T', "stopped");
    resume(pid).unwrap();
    wait_for_state(pid, |s| s != 'T', "running again");
}

#[test]
fn a_missing_process_is_a_failure_naming_the_pid() {
    // No pid reaches i32::MAX (Linux caps pid_max at 2^22).
    let pid = i32::MAX as u32;
    let err = kill(pid).unwrap_err();
    assert!(
        matches!(err, ProcessError::Failed { pid: p, signal: Signal::Kill, .. } if p == pid),
        "{err}"
    );
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
}

#[test]
fn pids_that_mean_groups_or_init_are_refused_before_kill_runs() {
    for pid in [0, 1, u32::MAX, i32::MAX as u32 + 1] {
        let err = kill(pid).unwrap_err();
        assert!(
            matches!(err, ProcessError::InvalidPid { .. }),
            "{pid}: {err}"
        );
    }
    assert_eq!(Signal::Stop.to_string(), "SIGSTOP");
}
