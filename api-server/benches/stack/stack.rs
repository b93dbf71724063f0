//! The stack under test: the binaries, the executor and the API server, their PKI,
//! and cleaning up after them.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::machine::*;
use crate::{GIB, MIB, NOBODY};

pub struct Binaries {
    pub executor: PathBuf,
    pub api: PathBuf,
    pub jobctl: PathBuf,
    pub dev_certs: PathBuf,
}

impl Binaries {
    /// The release binaries next to this benchmark (target/release/deps/stack-* ->
    /// target/release/NAME).
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("locating target/release")?
            .to_path_buf();
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} is missing: build the workspace in release mode first (make bench does)",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Binaries {
            executor: find("jobworker-executor")?,
            api: find("jobworker-api")?,
            jobctl: find("jobctl")?,
            dev_certs: find("jobworker-dev-certs")?,
        })
    }
}

/// The executor and the API server, with their PKI, state and cgroup parent; all of it
/// is stopped and removed on drop.
pub struct Stack {
    pub dir: PathBuf,
    pub exec: Child,
    pub exec_pid: u32,
    /// The executor's init template (its child that clones every job init); its CPU
    /// time counts as the executor's.
    pub template_pid: Option<u32>,
    pub api: Child,
    pub api_pid: u32,
    pub addr: SocketAddr,
    pub cgroup_parent: String,
    pub cgroup_backend: String,
    pub pki: PathBuf,
}

pub fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Executor settings for the scenarios: room for 1,000 sleeping jobs plus probes, and
/// for 1 GiB of output per job.
pub const MAX_RUNNING_JOBS: u32 = 1100;
pub const MAX_OUTPUT_BYTES: u64 = GIB + GIB / 4;
/// Limits every benchmark job asks for: a cgroup with real limits.
pub fn job_limits() -> pb::Limits {
    pb::Limits {
        cpu_millis: Some(1000),
        memory_bytes: Some(256 * MIB),
        pids: Some(64),
        io: None,
    }
}

impl Stack {
    pub fn start(bins: &Binaries) -> anyhow::Result<Stack> {
        let dir = std::env::temp_dir().join(format!("jobworker-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        chmod(&dir, 0o755)?;

        // A fresh development PKI; the server's files go where `nobody` can read them.
        let pki = dir.join("pki");
        let st = Command::new(&bins.dev_certs)
            .arg(&pki)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("jobworker-dev-certs failed: {st}");
        }
        let api_dir = dir.join("api");
        std::fs::create_dir_all(&api_dir)?;
        chmod(&api_dir, 0o755)?;
        for (name, mode) in [
            ("server.pem", 0o644),
            ("server.key", 0o600),
            ("ca.pem", 0o644),
        ] {
            let dst = api_dir.join(name);
            std::fs::copy(pki.join(name), &dst)?;
            chmod(&dst, mode)?;
            std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY))?;
        }
        let api_bin = api_dir.join("jobworker-api");
        std::fs::copy(&bins.api, &api_bin)?;
        chmod(&api_bin, 0o755)?;

        let cgroup_parent = format!("jobworker-bench-{}", std::process::id());
        let socket = dir.join("executor.sock");
        let mut exec = Command::new(&bins.executor);
        worker_override(&mut exec, "BENCH_EXEC_WORKERS");
        let mut exec = exec
            .arg("--socket")
            .arg(&socket)
            .arg("--socket-group")
            .arg(NOBODY.to_string())
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--allow-uid")
            .arg(NOBODY.to_string())
            .arg("--job-user")
            .arg("nobody")
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .arg("--max-running-jobs")
            .arg(MAX_RUNNING_JOBS.to_string())
            .arg("--max-output-bytes")
            .arg(MAX_OUTPUT_BYTES.to_string())
            .arg("--max-finished-jobs")
            .arg("1000")
            .arg("--stop-grace-ms")
            .arg("2000")
            .env("JOBWORKER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting jobworker-executor")?;
        let exec_pid = exec.id();
        let stderr = exec.stderr.take().expect("piped");
        let exec_log = std::fs::File::create(dir.join("executor.log"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = std::io::BufWriter::new(exec_log);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains("executor ready") || line.contains("cgroup backend") {
                    let _ = tx.send(line);
                }
            }
            let _ = log.flush();
        });
        let mut backend = String::from("?");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("executor ready") => break,
                Ok(line) => {
                    if let Some(b) = line.split("backend=").nth(1) {
                        backend = match b.strip_prefix('"') {
                            Some(q) => q.split('"').next().unwrap_or("?").to_string(),
                            None => b.split_whitespace().next().unwrap_or("?").to_string(),
                        };
                    }
                }
                Err(_) => {
                    let _ = exec.kill();
                    let _ = exec.wait();
                    bail!(
                        "the executor did not get ready; see {}",
                        dir.join("executor.log").display()
                    );
                }
            }
        }

        let template_pid = find_template(exec_pid);

        let toml = format!(
            "listen = \"127.0.0.1:0\"\nadmins = [\"admin\"]\n\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [executor]\nsocket = {:?}\n\
             [limits]\nmax_connections = 512\nmax_streams = 1024\nmax_streams_per_connection = 128\n",
            api_dir.join("server.pem"),
            api_dir.join("server.key"),
            api_dir.join("ca.pem"),
            socket,
        );
        let config = api_dir.join("api.toml");
        std::fs::write(&config, toml)?;
        chmod(&config, 0o644)?;
        let api_log = std::fs::File::create(dir.join("api.log"))?;
        let mut api = Command::new(&api_bin);
        worker_override(&mut api, "BENCH_API_WORKERS");
        let mut api = api
            .envs(api_unit_environment()?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(api_log)
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .context("starting jobworker-api")?;
        let api_pid = api.id();
        let mut lines = BufReader::new(api.stdout.take().expect("piped")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("jobworker-api listening on ") {
                        break a.parse()?;
                    }
                }
                _ => {
                    let _ = api.kill();
                    let _ = api.wait();
                    bail!(
                        "the API server did not start; see {}",
                        dir.join("api.log").display()
                    );
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Stack {
            dir,
            exec,
            exec_pid,
            template_pid,
            api,
            api_pid,
            addr,
            cgroup_parent,
            cgroup_backend: backend,
            pki,
        })
    }

    /// A new mTLS connection as `alice`, made the way jobctl makes it.
    pub async fn client(&self) -> anyhow::Result<JobWorkerClient<Channel>> {
        let ca = CertificateDer::from_pem_file(self.pki.join("ca.pem"))?;
        let cert = CertificateDer::from_pem_file(self.pki.join("alice.pem"))?;
        let key = PrivateKeyDer::from_pem_file(self.pki.join("alice.key"))?;
        let config = jobworker_api::tls::client_config(&[ca], vec![cert], key)?;
        let connector = TlsConnector::from(Arc::new(config));
        let addr = self.addr;
        let channel = Endpoint::from_shared(format!("http://localhost:{}", addr.port()))?
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(std::io::Error::other)?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await?;
        Ok(JobWorkerClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }

    pub fn reset_peaks(&self) {
        reset_peak(self.exec_pid);
        reset_peak(self.api_pid);
    }

    /// (executor, API server) peak RSS since the last reset, in bytes.
    pub fn peaks(&self) -> (u64, u64) {
        (rss(self.exec_pid).1, rss(self.api_pid).1)
    }

    /// CPU time used so far by each side.
    pub fn cpu(&self) -> Cpu {
        Cpu {
            exec: cpu_seconds(self.exec_pid) + self.template_pid.map_or(0.0, cpu_seconds),
            api: cpu_seconds(self.api_pid),
            client: cpu_seconds(std::process::id()),
        }
    }

    /// CPU time used so far by all jobs together (their inits and commands), in seconds:
    /// the executor's parent group's counter, which keeps what removed job groups used.
    pub fn jobs_cpu(&self) -> Option<f64> {
        let root = Path::new("/sys/fs/cgroup");
        let mut candidates = vec![
            root.join(&self.cgroup_parent).join("cpu.stat"),
            root.join("unified")
                .join(&self.cgroup_parent)
                .join("cpu.stat"),
        ];
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                candidates.push(e.path().join(&self.cgroup_parent).join("cpuacct.usage"));
            }
        }
        candidates.iter().find_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            if p.ends_with("cpuacct.usage") {
                Some(text.trim().parse::<f64>().ok()? / 1e9)
            } else {
                let usec = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse::<f64>()
                    .ok()?;
                Some(usec / 1e6)
            }
        })
    }

    pub fn rss_now(&self) -> (u64, u64) {
        (rss(self.exec_pid).0, rss(self.api_pid).0)
    }
}

/// CPU seconds (user + system) of the executor, the API server and this client.
pub struct Cpu {
    pub exec: f64,
    pub api: f64,
    pub client: f64,
}

impl Cpu {
    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            exec: self.exec - before.exec,
            api: self.api - before.api,
            client: self.client - before.client,
        }
    }
}

/// The variables the API server's systemd unit sets (its `Environment=` lines), so the
/// benchmark runs the server as it is installed.
fn api_unit_environment() -> anyhow::Result<Vec<(String, String)>> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/jobworker-api.service");
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    let mut vars = Vec::new();
    for line in text.lines() {
        let Some(assignment) = line.trim().strip_prefix("Environment=") else {
            continue;
        };
        match assignment.split_once('=') {
            Some((k, v)) if !assignment.contains(['"', '\'', ' ']) => {
                vars.push((k.to_string(), v.to_string()));
            }
            _ => anyhow::bail!("{}: cannot read {line:?}", unit.display()),
        }
    }
    Ok(vars)
}

/// An experiment knob: `BENCH_EXEC_WORKERS=N` / `BENCH_API_WORKERS=N` start that
/// daemon with N tokio worker threads (`TOKIO_WORKER_THREADS`) instead of its default.
pub fn worker_override(cmd: &mut Command, var: &str) {
    cmd.env_remove("TOKIO_WORKER_THREADS");
    if let Ok(n) = std::env::var(var) {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
}

pub fn sigterm_and_wait(child: &mut Child, what: &str) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                eprintln!("bench: {what} did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        sigterm_and_wait(&mut self.api, "the API server");
        sigterm_and_wait(&mut self.exec, "the executor");
        remove_cgroup_parent(&self.cgroup_parent);
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes the benchmark's cgroup parent (and anything left below it) from every
/// hierarchy, once the executor has gone.
pub fn remove_cgroup_parent(name: &str) {
    assert!(name.starts_with("jobworker-bench-"), "not ours: {name}");
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    for dir in dirs {
        rmdir_tree(&dir);
    }
}

pub fn rmdir_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("bench: cannot remove cgroup {}: {e}", dir.display());
    }
}

/// The executor's init template: its child running `jobworker-init --job-init` in the
/// executor's PID namespace (job inits, clones of it, are in their own).
fn find_template(exec_pid: u32) -> Option<u32> {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == exec_pid
            && cmdline.starts_with(b"jobworker-init\0--job-init\0")
            && ns(pid) == ns(exec_pid))
        .then_some(pid)
    })
}
