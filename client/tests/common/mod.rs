//! Shared test support: a PKI made by the project's own development PKI tool, jobctl
//! run as a subprocess with a clean environment, and what it printed.
#![allow(dead_code)]

pub mod stack;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use jobctl::devpki;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Prints the visible skip line and returns true when the test needs root and is not.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    // Written to the stderr handle, not with eprintln!: the test harness captures the
    // macros' output of passing tests, and a skip must be visible.
    use std::io::Write;
    // One write, so parallel tests' lines do not interleave.
    let line = format!("SKIPPED {test}: needs root\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}

/// A directory every user can traverse (the unprivileged server reads from it).
pub fn shared_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// A development PKI made by `jobworker-dev-certs`'s library, in a temporary
/// directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = shared_dir("jobctl-test-pki-");
        let options = devpki::Options {
            dir: dir.path().to_path_buf(),
            users: devpki::DEFAULT_USERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            client_days: devpki::CLIENT_DAYS,
        };
        devpki::ensure(&options, &mut std::io::sink()).expect("development PKI");
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The (certificate, key) of a client.
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{user}.pem")),
            self.path(&format!("{user}.key")),
        )
    }
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

pub fn code_of(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// jobctl with a clean environment: no `JOBWORKER_*` variables, and a home and
/// configuration directory of its own (`home`), so the user's settings never leak in.
pub fn jobctl(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobctl"));
    cmd.env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    cmd
}

/// jobctl as `user` of `pki`, talking to `server`.
pub fn jobctl_as(home: &Path, pki: &Pki, user: &str, server: &str) -> Command {
    let (cert, key) = pki.client(user);
    let mut cmd = jobctl(home);
    cmd.env("JOBWORKER_SERVER", server)
        .env("JOBWORKER_CA", pki.ca())
        .env("JOBWORKER_CERT", cert)
        .env("JOBWORKER_KEY", key);
    cmd
}

/// Runs a command to its end (bounded by `LIMIT`) and collects its output.
pub fn outcome(cmd: &mut Command) -> Outcome {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl");
    finish(&mut child)
}

/// Waits for a spawned child (stdout and stderr piped) and collects its output.
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
    let status = wait_with_deadline(child, LIMIT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("jobctl did not exit within {LIMIT:?}")
    });
    Outcome {
        code: code_of(status),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The failure bound of every wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Waits for a child to exit, up to `limit` (a failure bound: the wait itself is on the
/// exit).
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Sends a signal to a process with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// SHA-256 of bytes, as hex, with sha256sum(1).
pub fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
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

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}
