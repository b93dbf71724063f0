//! jobctl as a subprocess with a clean environment, and what it printed.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::bins;
use crate::env::LIMIT;
use crate::pki::Pki;
use crate::process::wait_child;

/// jobctl with a clean environment: no `JOBWORKER_*` variables, and a home and
/// configuration directory of its own (`home`), so the user's settings never leak in.
pub fn jobctl(home: &Path) -> Command {
    let mut cmd = Command::new(bins::path("jobctl"));
    cmd.env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    cmd
}

/// The configuration file jobctl reads with the home of [`jobctl`]:
/// `HOME/config/jobworker/client.toml`.
pub fn config_file(home: &Path) -> PathBuf {
    home.join("config").join("jobworker").join("client.toml")
}

/// Writes jobctl's configuration file for `home` (see [`config_file`]); returns its path.
pub fn write_config(home: &Path, text: &str) -> PathBuf {
    let path = config_file(home);
    let dir = path.parent().expect("the configuration directory");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// jobctl as `user` of `pki`, talking to `server`.
pub fn jobctl_as(home: &Path, pki: &Pki, user: &str, server: &str) -> Command {
    let mut cmd = jobctl(home);
    cmd.envs(pki.jobctl_env(user, server));
    cmd
}

/// What a jobctl run left behind.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code; 128 + N when killed by signal N.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// jobctl failed with `code` and exactly one line on stderr, `jobctl: ...`
    /// containing `text`.
    pub fn assert_error(&self, code: i32, text: &str) {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr, got {:?}", self.stderr);
        assert!(
            lines[0].starts_with("jobctl: "),
            "stderr starts with `jobctl: `: {:?}",
            lines[0]
        );
        assert!(
            lines[0].contains(text),
            "{:?} should contain {text:?}",
            lines[0]
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

/// The exit code of a status; 128 + N when signal N ended the process.
pub fn code_of(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs a command to its end (at most [`LIMIT`]) and collects its output.
pub fn outcome(cmd: &mut Command) -> Outcome {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
    finish(&mut child)
}

/// Waits (on a pidfd, at most [`LIMIT`]) for a spawned child whose stdout and stderr are
/// piped (or already taken), and collects what is left of its output.
pub fn finish(child: &mut Child) -> Outcome {
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = stdout_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stderr_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let status = wait_child(child, LIMIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{:?} did not exit within {LIMIT:?}", child.id())
    });
    Outcome {
        code: code_of(status),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// SHA-256 of bytes, as hex, with sha256sum(1): compared instead of the bytes, so that a
/// failure does not print megabytes.
pub fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().expect("writer").expect("write to sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
