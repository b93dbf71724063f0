//! The real `jobworker-api`: as `nobody` when the tests run as root (it refuses root),
//! with the server files of a [`Pki`], on loopback. Ready when it prints `jobworker-api
//! listening on ADDR` on stdout; its log (stderr, `RUST_LOG=info`) goes straight to a
//! file, so [`Api::log`] holds every line written so far.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::bins;
use crate::env::{LIMIT, NOBODY, is_root};
use crate::log::Log;
use crate::pki::Pki;
use crate::process::{Daemon, Stop};
use crate::scratch::{Scratch, chmod};

/// How to run one API server.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// The executor's socket (`[executor] socket`).
    pub executor_socket: PathBuf,
    /// The address to listen on, port 0.
    pub listen: String,
    pub admins: Vec<String>,
    /// Whether to give it the PKI's CRL (when the PKI has one).
    pub with_crl: bool,
    /// `executor.health_interval_ms`; the server's default when `None`.
    pub health_interval_ms: Option<u64>,
    /// More lines for the `[tls]` section.
    pub tls_extra: String,
    /// More sections for the configuration file.
    pub extra_toml: String,
    /// Give the essentials as command-line flags (`--listen`, `--tls-cert`, `--tls-key`,
    /// `--tls-client-ca`, `--executor-socket`, `--admin`) instead of in the file, which
    /// is then only written for `extra_toml`.
    pub flags: bool,
    /// Variables set (`Some`) or removed (`None`) for it.
    pub env: Vec<(String, Option<String>)>,
    /// Where its directory (configuration, server files, log) goes; default
    /// [`crate::scratch::base`].
    pub dir_in: Option<PathBuf>,
    /// How it is stopped when dropped: SIGKILL for the tests (nothing of it is checked
    /// after), SIGTERM for the benchmark (as a service manager stops it).
    pub on_drop: Stop,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            executor_socket: PathBuf::new(),
            listen: "127.0.0.1:0".into(),
            admins: vec!["admin".into()],
            with_crl: true,
            health_interval_ms: None,
            tls_extra: String::new(),
            extra_toml: String::new(),
            flags: false,
            env: Vec::new(),
            dir_in: None,
            on_drop: Stop::Kill,
        }
    }
}

impl ApiOptions {
    pub fn new(executor_socket: impl Into<PathBuf>) -> Self {
        ApiOptions {
            executor_socket: executor_socket.into(),
            ..Default::default()
        }
    }

    /// With `executor.health_interval_ms = ms`.
    pub fn health_ms(self, ms: u64) -> Self {
        ApiOptions {
            health_interval_ms: Some(ms),
            ..self
        }
    }

    /// With `toml` (sections) added to the configuration file.
    pub fn toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// For what the server decides by itself: no executor at its socket, and a health
    /// ping of that socket every 200 ms.
    pub fn no_executor() -> Self {
        ApiOptions {
            health_interval_ms: Some(200),
            ..ApiOptions::new("/nonexistent/executor.sock")
        }
    }
}

/// Makes `cmd` run as `nobody` when the tests run as root.
pub fn as_nobody(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

/// Writes `bytes` to `dir/name` with `mode`, owned by `nobody` when root.
pub fn write_for_nobody(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    chmod(&path, mode);
    if is_root() {
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
    path
}

/// Copies `src` to `dir/name` as [`write_for_nobody`] writes.
fn copy_for_nobody(src: &Path, dir: &Path, name: &str, mode: u32) -> PathBuf {
    let bytes = std::fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    write_for_nobody(dir, name, &bytes, mode)
}

/// A running `jobworker-api`; stopped as [`ApiOptions::on_drop`] says when dropped.
pub struct Api {
    // Dropped first: the process, then its directory.
    daemon: Daemon,
    /// Its stdout (only the `metrics on` and `listening on` lines are expected there).
    _stdout: Log,
    pub addr: SocketAddr,
    /// Where its metrics page is served (the kit gives it `--metrics-listen
    /// 127.0.0.1:0`).
    pub metrics: SocketAddr,
    log: PathBuf,
    pub dir: Scratch,
}

impl Api {
    /// Starts it with the server files of `pki` and waits until it listens.
    pub fn spawn(pki: &Pki, opts: &ApiOptions) -> Api {
        let dir = match &opts.dir_in {
            Some(base) => Scratch::new_in(base, "api"),
            None => Scratch::new("api"),
        };
        let d = &dir.path;
        let (server_pem, server_key) = pki.server();
        let cert = copy_for_nobody(&server_pem, d, "server.pem", 0o644);
        let key = copy_for_nobody(&server_key, d, "server.key", 0o600);
        let ca = copy_for_nobody(&pki.ca(), d, "ca.pem", 0o644);
        let crl = match pki.crl() {
            Some(crl) if opts.with_crl => Some(copy_for_nobody(&crl, d, "crl.pem", 0o644)),
            _ => None,
        };

        let mut cmd = Command::new(bins::installed("jobworker-api"));
        let mut toml = String::new();
        if opts.flags {
            cmd.arg("--listen")
                .arg(&opts.listen)
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key)
                .arg("--tls-client-ca")
                .arg(&ca)
                .arg("--executor-socket")
                .arg(&opts.executor_socket);
            for admin in &opts.admins {
                cmd.arg("--admin").arg(admin);
            }
            assert!(
                crl.is_none() && opts.tls_extra.is_empty() && opts.health_interval_ms.is_none(),
                "with flags, only extra_toml goes into a file"
            );
        } else {
            toml = format!(
                "listen = {:?}\nadmins = {:?}\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\
                 client_ca = {ca:?}\n",
                opts.listen, opts.admins
            );
            if let Some(crl) = &crl {
                toml.push_str(&format!("crl = {crl:?}\n"));
            }
            toml.push_str(&opts.tls_extra);
            toml.push_str(&format!(
                "[executor]\nsocket = {:?}\n",
                opts.executor_socket
            ));
            if let Some(ms) = opts.health_interval_ms {
                toml.push_str(&format!("health_interval_ms = {ms}\n"));
            }
        }
        toml.push_str(&opts.extra_toml);
        // A port of its own: tests run many servers at once.
        cmd.arg("--metrics-listen").arg("127.0.0.1:0");
        if !toml.is_empty() {
            let config = write_for_nobody(d, "api.toml", toml.as_bytes(), 0o644);
            cmd.arg("--config").arg(config);
        }

        let log = dir.join("api.log");
        let log_file = std::fs::File::create(&log).expect("the API server's log file");
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (k, v) in &opts.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        as_nobody(&mut cmd);
        let mut daemon = Daemon::spawn("api", &mut cmd, log.clone(), opts.on_drop);
        let stdout = daemon.child_mut().stdout.take().expect("piped stdout");
        let stdout = Log::tap("api stdout", stdout, &dir.join("api.stdout"));
        let metrics = stdout
            .next_with("jobworker-api metrics on ", LIMIT)
            .and_then(|l| {
                l.split("jobworker-api metrics on ")
                    .nth(1)
                    .and_then(|a| a.trim().parse().ok())
            });
        let Some(line) = stdout.next_with("jobworker-api listening on ", LIMIT) else {
            let status = daemon.exited();
            panic!("jobworker-api did not start ({status:?})");
        };
        let addr = line
            .split("jobworker-api listening on ")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let metrics = metrics.unwrap_or_else(|| panic!("jobworker-api printed no metrics address"));
        Api {
            daemon,
            _stdout: stdout,
            addr,
            metrics,
            log,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Its metrics page (`GET /metrics` on the metrics listener): the status line and
    /// the body.
    pub fn scrape(&self) -> (String, String) {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(self.metrics).expect("connecting to the metrics listener");
        s.set_read_timeout(Some(LIMIT)).expect("a read timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("sending the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("reading the page");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and waits (at most `within`) for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.daemon.terminate(within)
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        self.daemon.kill()
    }
}
