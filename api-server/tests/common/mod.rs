//! Shared test support: a PKI generated per test with rcgen, the real `jobworker-api`
//! binary started as an unprivileged user, and TLS clients built from the same strict
//! configuration the server uses.
#![allow(dead_code)]

pub mod pki;
pub mod stack;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

pub use pki::Pki;

/// The unprivileged user the server runs as when the tests run as root.
pub const NOBODY: u32 = 65534;

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

/// Prints a line the test harness does not capture (figures worth seeing in a passing
/// run): written to the stderr handle, not with `eprintln!`.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Prints the visible skip line and returns true when the test needs root and is not.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    // Written to the stderr handle, not with eprintln!: the test harness captures the
    // macros' output of passing tests, and a skip must be visible.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: needs root ({test})");
    true
}

/// A directory every user can traverse (CI's checkout is in a mode 0700 directory, which
/// the unprivileged server could not reach).
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("jobworker-api-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// Copies `src` into `dir` with `mode`, owned by the server's user when root.
pub fn install(src: &Path, dir: &Path, name: &str, mode: u32) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    finish_install(&dst, mode);
    dst
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let dst = dir.join(name);
    std::fs::write(&dst, bytes).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));
    finish_install(&dst, mode);
    dst
}

fn finish_install(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if is_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

/// Path of a workspace binary: `$ENV` if set, else next to this test executable.
pub fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/this-test -> target/debug/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

pub fn api_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobworker-api"))
}

/// Settings of one server under test.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub executor_socket: PathBuf,
    pub admins: Vec<String>,
    pub with_crl: bool,
    /// Extra top-level-free TOML appended to the configuration (sections).
    pub extra_toml: String,
    /// Extra lines for the `[tls]` section.
    pub tls_extra: String,
    pub health_interval_ms: u64,
}

impl ApiOptions {
    pub fn new(executor_socket: impl Into<PathBuf>) -> Self {
        Self {
            executor_socket: executor_socket.into(),
            admins: vec!["admin".into()],
            with_crl: true,
            extra_toml: String::new(),
            tls_extra: String::new(),
            health_interval_ms: 200,
        }
    }
}

/// A running `jobworker-api`, started as `nobody` when the tests run as root. Killed
/// when dropped.
pub struct Api {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Api {
    pub fn spawn(pki: &Pki, opts: &ApiOptions) -> Api {
        let dir = shared_dir();
        let d = dir.path();
        let bin = install(&api_binary(), d, "jobworker-api", 0o755);
        let mut config = pki.install_server_files(d, opts.with_crl);
        config.push_str(&opts.tls_extra);
        let mut toml = format!(
            "listen = \"127.0.0.1:0\"\nadmins = {:?}\n{config}\n[executor]\nsocket = {:?}\n\
             health_interval_ms = {}\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 10000\n",
            opts.admins, opts.executor_socket, opts.health_interval_ms
        );
        toml.push_str(&opts.extra_toml);
        let config_path = write_file(d, "api.toml", toml.as_bytes(), 0o644);
        let log = d.join("api.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if is_root() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        let mut child = spawn(&mut cmd);
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("jobworker-api listening on ") {
                        break addr.parse().expect("address");
                    }
                }
                _ => {
                    let status = child.wait();
                    panic!(
                        "jobworker-api did not start ({status:?}); log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Api {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        wait_with_deadline(&mut self.child, limit)
            .unwrap_or_else(|| panic!("jobworker-api did not exit; log:\n{}", self.log()))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns, retrying while the freshly copied binary is still open for writing in a
/// child that another test thread forked during the copy (ETXTBSY; it goes away when
/// that child execs).
pub fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                wait_a_moment()
            }
            Err(e) => panic!("spawning {:?}: {e}", cmd.get_program()),
        }
    }
}

/// Waits for a child to exit, up to `limit` (a failure bound, not synchronisation:
/// the wait itself is on the exit).
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        wait_a_moment();
    }
}

/// Polls `condition` until it holds or `limit` passes. Returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        wait_a_moment();
    }
}

/// The pause between two checks of a polled condition.
fn wait_a_moment() {
    std::thread::park_timeout(Duration::from_millis(20));
}

/// What the client learnt from a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Option<rustls::ProtocolVersion>,
    pub group: Option<rustls::NamedGroup>,
    pub alpn: Option<Vec<u8>>,
    /// How many connections the channel has made so far (1 for the first).
    pub connections: usize,
}

/// A gRPC channel over our own TLS connector; records what each handshake negotiated.
pub async fn channel(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<(Channel, Arc<Mutex<Option<Negotiated>>>), tonic::transport::Error> {
    let negotiated = Arc::new(Mutex::new(None));
    let seen = negotiated.clone();
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://localhost:{}", addr.port()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let seen = seen.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                let conn = tls.get_ref().1;
                let mut seen: std::sync::MutexGuard<Option<Negotiated>> = seen.lock().unwrap();
                let connections = seen.as_ref().map_or(0, |n| n.connections) + 1;
                *seen = Some(Negotiated {
                    connections,
                    version: conn.protocol_version(),
                    group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                });
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok((channel, negotiated))
}

/// Handshakes with `config` and then reads; the server's refusal comes back as the
/// error text (the alert). Panics when the server accepts.
pub async fn refusal(addr: SocketAddr, config: ClientConfig) -> String {
    use tokio::io::AsyncReadExt;
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let attempt = async {
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the client finishes before the server has checked its certificate;
        // a refusal arrives as an alert on the first read.
        let mut buf = [0u8; 1024];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>("closed without an alert".to_string());
        }
        // Bytes from the server: it accepted us (its HTTP/2 settings).
        Ok(format!("accepted: read {n} bytes"))
    };
    match tokio::time::timeout(Duration::from_secs(20), attempt).await {
        Err(_) => panic!("no answer from the server within 20 s"),
        Ok(Ok(outcome)) => panic!("the server did not refuse: {outcome}"),
        Ok(Err(e)) => e.to_string(),
    }
}

/// Reads everything a child wrote to a pipe.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft limit on open files to its hard limit (for tests that
/// hold a thousand connections at once; `prlimit` from util-linux, as root). Returns
/// the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut f = l["Max open files".len()..].split_whitespace();
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .expect("Max open files in /proc/self/limits");
    if soft < hard {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        return hard;
    }
    soft
}

/// TCP connections (any state but LISTEN) that process `pid` holds on local `port`:
/// its socket descriptors matched against /proc/net/tcp and tcp6.
pub fn tcp_connections(pid: u32, port: u16) -> usize {
    let held: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let listening = f.get(3) == Some(&"0A");
                    (f.len() > 9 && f[1].ends_with(&port) && !listening)
                        .then(|| f[9].parse::<u64>().ok())?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| held.contains(inode))
        .count()
}
