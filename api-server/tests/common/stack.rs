//! The real service for the end-to-end, fault and load tests, as root: the real
//! `jobworker-executor` (root) on its real socket and the real `jobworker-api` as
//! `nobody` in front of it ([`World`]), and gRPC helpers over TLS 1.3 with certificates
//! from a test PKI.
//!
//! Executor flags these tests rely on: `--socket`, `--socket-group`, `--state-dir`,
//! `--allow-uid`, `--job-user`, `--cgroup-parent`; readiness is the log line
//! "executor ready" on its stderr.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_proto::v1::stream_job_output_response::Event;
use tokio::sync::oneshot;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{Api, ApiOptions, NOBODY, Pki};

pub const LIMIT: Duration = Duration::from_secs(60);

/// How many of the executor's latest DEBUG lines a failing test prints.
const DEBUG_TAIL: usize = 40;

/// A scratch directory jobs can see too (a job's /tmp is its own).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("JOBWORKER_TEST_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/jobworker-tests"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("api-{tag}-"))
            .tempdir_in(&base)
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    /// A FIFO any job can open: the job blocks reading it until the test writes.
    pub fn gate(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let st = Command::new("mkfifo")
            .arg("-m")
            .arg("0666")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens a gate: writes a line into the FIFO (blocks until the job opens it).
pub async fn open_gate(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"go\n").unwrap();
    })
    .await
    .unwrap();
}

/// The real executor, as root.
pub struct Executor {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub cgroup_parent: String,
    pub log: Option<mpsc::Receiver<String>>,
    /// The latest DEBUG lines, which are not echoed as they come (a load test makes
    /// thousands): printed if the test fails, to show what the executor did last.
    pub debug_tail: Arc<Mutex<VecDeque<String>>>,
    /// Flags added to every launch (e.g. caps, or `--allow-uid 0` for a test that also
    /// talks to the executor directly).
    pub extra: Vec<String>,
}

impl Executor {
    pub fn start(scratch: &Scratch) -> Executor {
        Self::start_with(scratch, &[])
    }

    /// Starts it with `extra` flags, kept for every later launch.
    pub fn start_with(scratch: &Scratch, extra: &[&str]) -> Executor {
        let tag: String = scratch
            .0
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut e = Executor {
            child: None,
            socket: scratch.0.join("executor.sock"),
            state: scratch.0.join("state"),
            cgroup_parent: format!("jobworker-test-{tag}"),
            log: None,
            debug_tail: Arc::default(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        e.launch();
        e
    }

    pub fn launch(&mut self) {
        let bin = super::workspace_binary("jobworker-executor", "JOBWORKER_EXECUTOR_BIN");
        assert!(
            bin.exists(),
            "{} is missing: build the workspace first (make test does)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--socket-group")
            .arg(NOBODY.to_string())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--allow-uid")
            .arg(NOBODY.to_string())
            .arg("--job-user")
            .arg("nobody")
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(&self.extra)
            .env("JOBWORKER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning jobworker-executor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tail = self.debug_tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" DEBUG ") {
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == DEBUG_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                } else {
                    eprintln!("[executor] {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("executor ready") => break,
                Ok(_) => {}
                Err(_) => panic!("the executor did not log \"executor ready\""),
            }
        }
        self.child = Some(child);
        self.log = Some(rx);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(status.success(), "executor exit: {status:?}");
        }
    }

    /// SIGKILL and wait: no chance to stop or record anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for a log line containing `needle`; panics at the deadline.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let log = self.log.as_ref().expect("launched");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no executor log line containing {needle:?} within {within:?}"),
            }
        }
    }

    /// Discards the log lines received so far (a later `wait_log` sees only newer ones).
    pub fn drain_log(&self) {
        while self.log.as_ref().expect("launched").try_recv().is_ok() {}
    }

    /// Job groups left under this executor's cgroup parent, in every hierarchy.
    pub fn job_groups_left(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let mut parents = vec![root.join(&self.cgroup_parent)];
        if let Ok(entries) = std::fs::read_dir(root) {
            parents.extend(
                entries
                    .flatten()
                    .map(|e| e.path().join(&self.cgroup_parent)),
            );
        }
        let mut left = Vec::new();
        for parent in parents {
            for dir in [parent.clone(), parent.join("jobs")] {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.parse::<jobworker_protocol::JobId>().is_ok() {
                        left.push(e.path());
                    }
                }
            }
        }
        left
    }

    /// A job's status asked of the executor itself, bypassing the API server (the
    /// executor must allow uid 0: `start_with(.., &["--allow-uid", "0"])`).
    pub async fn status(&self, id: &str) -> jobworker_protocol::JobStatus {
        use futures::{SinkExt, StreamExt};
        use jobworker_protocol::{Request, Response, Scope};
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let mut t = jobworker_protocol::client_transport(stream);
        jobworker_protocol::codec::client_handshake(&mut t)
            .await
            .expect("the executor lets root in");
        t.send(Request::Status {
            scope: Scope::Any,
            id: id.parse().unwrap(),
        })
        .await
        .unwrap();
        match t.next().await.unwrap().unwrap() {
            Response::Status(s) => *s,
            other => panic!("status of {id}: {other:?}"),
        }
    }

    /// Connections the executor currently holds on its socket: its socket fds whose
    /// inode is bound to the socket path, less the listening socket.
    pub fn connections(&self) -> usize {
        let bound = unix_inodes_bound_to(&self.socket);
        let held = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|inode| bound.contains(inode))
            .count();
        held.saturating_sub(1)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.debug_tail.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("[executor] last {} DEBUG lines:", tail.len());
            for line in tail.iter() {
                eprintln!("[executor] {line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

/// Removes this test's cgroup parent from every hierarchy (v2 and each v1 controller),
/// once the executor has gone.
pub fn remove_cgroup_parent(name: &str) {
    assert!(
        name.starts_with("jobworker-test-api"),
        "not a test parent: {name}"
    );
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
        eprintln!("cannot remove test cgroup {}: {e}", dir.display());
    }
}

/// Inodes of the Unix sockets bound to `path` (the listener and every connection it
/// accepted), from /proc/net/unix.
pub fn unix_inodes_bound_to(path: &Path) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 8 && fields[7] == path).then(|| fields[6].parse().ok())?
        })
        .collect()
}

pub struct World {
    pub pki: Pki,
    pub api: Api,
    pub exec: Executor,
    pub scratch: Scratch,
}

pub fn world(tag: &str, health_interval_ms: u64) -> World {
    world_with(tag, health_interval_ms, "")
}

pub fn world_with(tag: &str, health_interval_ms: u64, extra_toml: &str) -> World {
    let scratch = Scratch::new(tag);
    let exec = Executor::start(&scratch);
    let pki = Pki::new();
    let api = Api::spawn(
        &pki,
        &ApiOptions {
            health_interval_ms,
            extra_toml: extra_toml.into(),
            ..ApiOptions::new(&exec.socket)
        },
    );
    World {
        pki,
        api,
        exec,
        scratch,
    }
}

impl World {
    pub async fn client(&self, who: &str) -> JobWorkerClient<Channel> {
        let (channel, _) = super::channel(self.api.addr, self.pki.client_config(who))
            .await
            .expect("connect");
        JobWorkerClient::new(channel)
    }
}

/// The output of `seq FROM TO`.
pub fn seq(from: u64, to: u64) -> Vec<u8> {
    (from..=to)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

pub fn start(argv: &[&str]) -> pb::StartJobRequest {
    pb::StartJobRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits: None,
    }
}

pub async fn start_job(c: &mut JobWorkerClient<Channel>, argv: &[&str]) -> String {
    c.start_job(start(argv))
        .await
        .expect("start")
        .into_inner()
        .id
}

pub async fn stream(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
    offset: u64,
    follow: bool,
) -> Result<Streaming<pb::StreamJobOutputResponse>, tonic::Status> {
    c.stream_job_output(pb::StreamJobOutputRequest {
        id: id.into(),
        offset,
        follow,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Reads a stream to its end: the bytes and the final status. `progress` (if any) is
/// told once `notify_at` bytes have arrived.
pub async fn collect(
    mut s: Streaming<pb::StreamJobOutputResponse>,
    notify_at: usize,
    mut progress: Option<oneshot::Sender<()>>,
) -> Result<(Vec<u8>, pb::JobStatus), tonic::Status> {
    let mut data = Vec::new();
    while let Some(message) = s.message().await? {
        match message.event {
            Some(Event::Data(bytes)) => {
                data.extend_from_slice(&bytes);
                if data.len() >= notify_at
                    && let Some(tx) = progress.take()
                {
                    let _ = tx.send(());
                }
            }
            Some(Event::Status(status)) => {
                assert!(s.message().await?.is_none(), "the status must come last");
                return Ok((data, status));
            }
            None => panic!("empty stream message"),
        }
    }
    panic!("the stream ended without a final status");
}

pub async fn finished_output(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
) -> (Vec<u8>, pb::JobStatus) {
    collect(stream(c, id, 0, true).await.unwrap(), usize::MAX, None)
        .await
        .unwrap()
}

pub async fn next_status(
    watch: &mut Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    let m = tokio::time::timeout(LIMIT, watch.message())
        .await
        .expect("a health update")
        .unwrap()
        .expect("the watch stream stays open");
    m.status()
}

pub async fn wait_for_status(
    watch: &mut Streaming<tonic_health::pb::HealthCheckResponse>,
    want: ServingStatus,
) {
    loop {
        if next_status(watch).await == want {
            return;
        }
    }
}
