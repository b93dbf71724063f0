//! Processes the kit starts: signals by pid, exits awaited on a pidfd, and [`Daemon`],
//! a long-running child that is stopped when dropped and whose log's tail is printed
//! when a test fails.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::env::LIMIT;

/// Sends signal `sig` (`TERM`, `KILL`, `INT`, ...) to process `pid` with kill(1); returns
/// whether kill succeeded. Only for processes the tests started.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits (on a pidfd, no polling) until process `pid` has exited, at most `within`.
/// Returns false at the deadline. A process that is already gone counts as exited; a
/// child that exited counts too, reaped or not.
pub fn wait_exit(pid: u32, within: Duration) -> bool {
    let Ok(fd) = jobworker_executor::sys::pidfd_open(pid as i32) else {
        return true;
    };
    let ms = within.as_millis().min(i32::MAX as u128) as i32;
    jobworker_executor::sys::poll_readable([fd.as_fd()], Some(ms)).is_ok_and(|[r]| r)
}

/// Waits (on a pidfd) for a child to exit, at most `within`, and reaps it.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if !wait_exit(child.id(), within) {
        return None;
    }
    Some(child.wait().expect("waiting for a child"))
}

/// Re-checks `condition` until it holds or `limit` passes; returns whether it held.
///
/// Only for what has no event to wait on (a count in `/proc` that no log line follows,
/// such as the descriptors or threads of a daemon that logs nothing when it closes one):
/// every call says why in a comment. The pause between checks is short, and the limit
/// only bounds a failure.
pub fn poll_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// How a [`Daemon`] is stopped when dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL if it has not exited within [`LIMIT`].
    Term,
    /// SIGKILL at once.
    Kill,
}

/// How many lines of a daemon's log a failing test prints.
pub const TAIL_LINES: usize = 60;

/// A long-running child process of the tests (the executor, the API server). Dropped, it
/// is stopped as its [`Stop`] says; dropped while the thread panics (a test failing), it
/// first prints the tail of its log.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    on_drop: Stop,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `cmd`; `log` is the file its log goes to (for the tail).
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf, on_drop: Stop) -> Daemon {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({:?}): {e}", cmd.get_program()));
        Daemon {
            name: name.to_owned(),
            child,
            log,
            on_drop,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The file its log goes to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Its exit status once it has exited (a check, not a wait).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits (on a pidfd) for it to exit by itself, at most `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, within);
        }
        self.exited
    }

    /// SIGTERM, and waits for the exit; panics if it has not exited within `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        signal(self.pid(), "TERM");
        self.wait(within)
            .unwrap_or_else(|| panic!("{} did not exit within {within:?} of SIGTERM", self.name))
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("waiting after SIGKILL");
        self.exited = Some(status);
        status
    }

    /// Prints the last lines of its log (to the captured output: shown for a failing
    /// test).
    pub fn print_tail(&self) {
        let tail = crate::log::tail(&self.log, TAIL_LINES);
        eprintln!(
            "[{}] last {} lines of {}:",
            self.name,
            tail.len(),
            self.log.display()
        );
        for line in tail {
            eprintln!("[{}] {line}", self.name);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_tail();
        }
        if self.exited().is_some() {
            return;
        }
        if self.on_drop == Stop::Term {
            signal(self.pid(), "TERM");
            if self.wait(LIMIT).is_some() {
                return;
            }
            eprintln!(
                "{} did not stop within {LIMIT:?} of SIGTERM; killing it",
                self.name
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_exit_is_seen_on_the_pidfd_and_a_running_process_times_out() {
        let mut done = Command::new("true").spawn().unwrap();
        assert!(wait_child(&mut done, LIMIT).unwrap().success());
        let mut running = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        assert!(!wait_exit(running.id(), Duration::from_millis(1)));
        running.kill().unwrap();
        running.wait().unwrap();
    }

    #[test]
    fn a_daemon_is_stopped_with_sigterm() {
        let dir = crate::scratch::Scratch::new("daemon-test");
        let mut daemon = Daemon::spawn(
            "sleeper",
            Command::new("sleep").arg("1000"),
            dir.join("log"),
            Stop::Term,
        );
        let status = daemon.terminate(LIMIT);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        assert_eq!(daemon.exited(), Some(status));
    }
}
