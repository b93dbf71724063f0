//! The real `jobworker-executor` on a real Unix socket, with its own state directory and
//! cgroup parent, and a client that speaks the real protocol to it.
//!
//! Readiness is its log line `executor ready` (after `cgroup backend`); the kit runs it
//! with `JOBWORKER_LOG=debug` so that tests can wait on its debug lines: `job started
//! job=ID pid=N`, `job cgroup removed job=ID`, `connection closed open=N`, `deleted a
//! finished job beyond the retention cap job=ID`. Flags the kit relies on: `--socket`,
//! `--state-dir`, `--allow-uid`, `--socket-group`, `--cgroup-parent`,
//! `--cgroup-backend`.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jobworker_protocol::codec::{HandshakeError, client_handshake};
use jobworker_protocol::{
    ClientTransport, JobId, JobSpec, JobStatus, MAX_CHUNK_LEN, OutputFrom, Request, Response,
    Scope, Stream, Streams, WireError, client_transport,
};
use tokio::net::UnixStream;

use crate::bins;
use crate::cgroup::{CgroupParent, backend_flag};
use crate::env::{LIMIT, NOBODY};
use crate::log::Log;
use crate::process::{Daemon, Stop};
use crate::procfs;
use crate::scratch::Scratch;

/// How to run one executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Peers allowed on the socket (`--allow-uid`, each).
    pub allow_uids: Vec<u32>,
    /// The socket's group (`--socket-group`), for an unprivileged API server.
    pub socket_group: Option<u32>,
    /// Further flags.
    pub extra: Vec<String>,
    /// `JOBWORKER_LOG`: `debug` for the tests (their waits use debug lines).
    pub log_level: String,
    /// Variables set (`Some`) or removed (`None`) for it.
    pub env: Vec<(String, Option<String>)>,
    /// Where its directory (state, socket, log) goes; default [`crate::scratch::base`].
    pub dir_in: Option<PathBuf>,
    /// The first part of its cgroup parent's name (see [`CgroupParent`]).
    pub cgroup_prefix: String,
    /// How it is stopped when dropped.
    pub on_drop: Stop,
    /// Host paths every job sees (`[[binds]]` of a configuration file the kit writes):
    /// the path, and whether jobs may write there.
    pub binds: Vec<(PathBuf, bool)>,
}

impl Default for ExecutorOptions {
    /// For the executor's own tests: only this process (root) may connect.
    fn default() -> Self {
        ExecutorOptions {
            allow_uids: vec![0],
            socket_group: None,
            extra: Vec::new(),
            log_level: "debug".into(),
            env: Vec::new(),
            dir_in: None,
            cgroup_prefix: "jobworker-test".into(),
            on_drop: Stop::Term,
            binds: Vec::new(),
        }
    }
}

impl ExecutorOptions {
    /// Behind an API server running as `nobody`: only `nobody` may connect, and the
    /// socket belongs to its group.
    pub fn behind_api() -> Self {
        ExecutorOptions {
            allow_uids: vec![NOBODY],
            socket_group: Some(NOBODY),
            ..Default::default()
        }
    }

    /// Adds `flags` to the command line.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.extra.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Makes `path` (which must exist) visible to every job at the same place, writable
    /// or not: jobs see the host read-only otherwise.
    pub fn bind(mut self, path: &Path, writable: bool) -> Self {
        self.binds.push((path.to_owned(), writable));
        self
    }
}

/// A running `jobworker-executor` as root. Stopped (SIGTERM) when dropped, then its
/// cgroup parent is removed from every hierarchy and its directory goes.
pub struct Executor {
    // Dropped in this order: the process, then its cgroups, then its directory.
    daemon: Option<Daemon>,
    log: Option<Log>,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// `cgroup v1` or `cgroup v2`, as it logged.
    pub backend: String,
    opts: ExecutorOptions,
    parent: CgroupParent,
    pub dir: Scratch,
}

impl Executor {
    /// Starts it and waits until it is ready.
    pub fn start(opts: ExecutorOptions) -> Executor {
        let dir = match &opts.dir_in {
            Some(base) => Scratch::new_in(base, "exec"),
            None => Scratch::new("exec"),
        };
        let parent = CgroupParent::new(&opts.cgroup_prefix, &dir.unique());
        let mut exec = Executor {
            daemon: None,
            log: None,
            socket: dir.join("executor.sock"),
            state: dir.join("state"),
            backend: String::new(),
            opts,
            parent,
            dir,
        };
        exec.relaunch();
        exec
    }

    /// Starts it again (it must have stopped) on the same socket, state directory and
    /// cgroup parent, and waits until it is ready. Its log goes on in the same file.
    pub fn relaunch(&mut self) {
        assert!(
            self.daemon.as_mut().is_none_or(|d| d.exited().is_some()),
            "the executor is still running"
        );
        self.daemon = None;
        let o = &self.opts;
        let mut cmd = Command::new(bins::path("jobworker-executor"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state);
        for uid in &o.allow_uids {
            cmd.arg("--allow-uid").arg(uid.to_string());
        }
        if let Some(gid) = o.socket_group {
            cmd.arg("--socket-group").arg(gid.to_string());
        }
        if !o.binds.is_empty() {
            let mut toml = String::new();
            for (path, writable) in &o.binds {
                toml.push_str(&format!(
                    "[[binds]]\nsource = {:?}\nwritable = {writable}\n",
                    path.display().to_string()
                ));
            }
            let config = self.dir.join("executor.toml");
            std::fs::write(&config, toml).expect("writing the executor's configuration");
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--cgroup-parent")
            .arg(&self.parent.name)
            .args(backend_flag())
            .args(&o.extra)
            .env("JOBWORKER_LOG", &o.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &o.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let log_path = self.dir.join("executor.log");
        let mut daemon = Daemon::spawn("executor", &mut cmd, log_path.clone(), o.on_drop);
        let stderr = daemon.child_mut().stderr.take().expect("piped stderr");
        let log = Log::tap("executor", stderr, &log_path);
        self.daemon = Some(daemon);
        let backend = log.next_with("cgroup backend", LIMIT);
        let ready = backend
            .as_ref()
            .and_then(|_| log.next_with("executor ready", LIMIT));
        self.log = Some(log);
        if ready.is_none() {
            let status = self.daemon.as_mut().and_then(Daemon::exited);
            panic!("the executor did not get ready ({status:?})");
        }
        self.backend = backend.as_deref().map(backend_name).unwrap_or_default();
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the executor is running")
    }

    fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("the executor is running")
    }

    /// The log of its current run.
    pub fn log(&self) -> &Log {
        self.log.as_ref().expect("the executor was started")
    }

    pub fn pid(&self) -> u32 {
        self.daemon().pid()
    }

    /// Its cgroup parent.
    pub fn cgroup_parent(&self) -> &CgroupParent {
        &self.parent
    }

    /// SIGTERM, and waits for the exit (it stops its running jobs first).
    pub fn terminate(&mut self) -> ExitStatus {
        self.daemon_mut().terminate(LIMIT)
    }

    /// SIGTERM, and waits for a successful exit.
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "executor exit: {status:?}");
    }

    /// SIGKILL, and waits: no chance to stop or record anything.
    pub fn kill9(&mut self) {
        self.daemon_mut().kill();
    }

    /// Stops it if it runs (SIGTERM), then [`Executor::relaunch`]es it.
    pub fn restart(&mut self) {
        if let Some(d) = self.daemon.as_mut()
            && d.exited().is_none()
        {
            d.terminate(LIMIT);
        }
        self.relaunch();
    }

    /// The next log line containing `needle`; panics if none comes within `within`.
    /// Lines before it are passed: a later wait sees only newer ones.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        self.log().wait_for(needle, within)
    }

    /// Passes the log lines read so far (a later `wait_log` sees only newer ones).
    pub fn drain_log(&self) {
        self.log().drain();
    }

    /// Its audit trail's directory (the default, in its state directory).
    pub fn audit_dir(&self) -> PathBuf {
        self.state.join("audit")
    }

    /// A client on its socket (the peer must be allowed: root by default).
    pub async fn client(&self) -> ExecClient {
        ExecClient::connect(&self.socket)
            .await
            .expect("connecting to the executor")
    }

    /// The init template: its child that every job init is cloned from.
    pub fn template_pid(&self) -> u32 {
        let found = procfs::init_templates(self.pid());
        assert_eq!(found.len(), 1, "init templates of the executor: {found:?}");
        found[0]
    }

    /// Host pid of a job's init, from its `job started` line.
    pub fn init_pid(&self, id: impl Display) -> u32 {
        let line = self.wait_log(&format!("job started job={id}"), LIMIT);
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    /// Connections it holds on its socket: its socket descriptors bound to the socket's
    /// path, less the listener.
    pub fn connections(&self) -> usize {
        let bound = procfs::unix_inodes_bound_to(&self.socket);
        let held = procfs::socket_inodes(self.pid());
        held.intersection(&bound).count().saturating_sub(1)
    }

    /// Waits until it holds no connection. The event is its `connection closed` line,
    /// which it logs once the connection's socket is closed; each line re-checks the
    /// count, so an older line cannot end the wait early.
    pub fn wait_no_connections(&self) {
        let closed = self.log().wait_until(LIMIT, || self.connections() == 0);
        assert!(
            closed,
            "the executor still holds {} connection(s)",
            self.connections()
        );
    }

    /// Job groups under its cgroup parent.
    pub fn job_groups_left(&self) -> Vec<PathBuf> {
        self.parent.job_groups()
    }

    /// The job groups still there once it has removed job `id`'s group, which it does
    /// right after it publishes the job's end, and logs (`job cgroup removed job=ID`).
    pub fn job_groups_left_after(&self, id: impl Display) -> Vec<PathBuf> {
        self.wait_log(&format!("job cgroup removed job={id}"), LIMIT);
        self.job_groups_left()
    }

    /// The job groups still there once it has removed the group of each of `ids`.
    pub fn job_groups_left_after_all<I: Display>(&self, ids: &[I]) -> Vec<PathBuf> {
        let lines: Vec<String> = ids
            .iter()
            .map(|id| format!("job cgroup removed job={id}"))
            .collect();
        self.log().wait_for_all(&lines, LIMIT);
        self.job_groups_left()
    }

    /// The job's cgroup control file `file` (v1: in the hierarchy of its controller).
    pub fn job_cgroup_file(&self, id: impl Display, file: &str) -> PathBuf {
        let id = id.to_string();
        self.parent
            .job_file(&id, file)
            .unwrap_or_else(|| panic!("no cgroup file {file} for job {id}"))
    }
}

/// The value of `backend=` in the `cgroup backend` line (`backend="cgroup v1"`).
fn backend_name(line: &str) -> String {
    let Some(b) = line.split("backend=").nth(1) else {
        return String::new();
    };
    match b.strip_prefix('"') {
        Some(q) => q.split('"').next().unwrap_or_default().to_owned(),
        None => b.split_whitespace().next().unwrap_or_default().to_owned(),
    }
}

/// The executor's protocol over its socket.
pub struct ExecClient {
    t: ClientTransport<UnixStream>,
}

/// Everything an output stream delivered.
/// What an output stream brought: every byte in arrival order, each stream's bytes, and
/// the frame that ended it.
#[derive(Debug)]
pub struct Streamed {
    pub bytes: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: Result<JobStatus, WireError>,
}

impl ExecClient {
    pub async fn connect(path: &Path) -> Result<Self, HandshakeError> {
        let s = UnixStream::connect(path).await?;
        let mut t = client_transport(s);
        client_handshake(&mut t).await?;
        Ok(Self { t })
    }

    pub async fn call(&mut self, req: Request) -> Response {
        self.t.send(req).await.expect("send");
        self.t
            .next()
            .await
            .expect("a response")
            .expect("a valid frame")
    }

    /// The status of a call answered with one.
    async fn status_of(&mut self, req: Request) -> Result<JobStatus, WireError> {
        match self.call(req).await {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn start(&mut self, owner: &str, spec: JobSpec) -> Result<JobId, WireError> {
        let req = Request::Start {
            owner: owner.into(),
            spec,
        };
        match self.call(req).await {
            Response::Started { id } => Ok(id),
            Response::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Starts `argv` as alice's job.
    pub async fn run(&mut self, argv: &[&str]) -> Result<JobId, WireError> {
        self.start("alice", spec(argv)).await
    }

    pub async fn status(&mut self, id: JobId) -> Result<JobStatus, WireError> {
        let scope = Scope::Any;
        self.status_of(Request::Status { scope, id }).await
    }

    pub async fn stop(&mut self, id: JobId) -> Result<JobStatus, WireError> {
        let scope = Scope::Any;
        self.status_of(Request::Stop {
            scope,
            id,
            caller: "admin".into(),
        })
        .await
    }

    pub async fn request_output(
        &mut self,
        id: JobId,
        from: OutputFrom,
        streams: Streams,
        follow: bool,
    ) {
        let scope = Scope::Any;
        let req = Request::Output {
            scope,
            id,
            from,
            streams,
            follow,
        };
        self.t.send(req).await.expect("send");
    }

    /// The next frame of an output stream: `Ok(chunk)` or `Err(the frame that ends it)`.
    pub async fn next_chunk(&mut self) -> Result<(Stream, bytes::Bytes), Response> {
        match self
            .t
            .next()
            .await
            .expect("a frame")
            .expect("a valid frame")
        {
            Response::Chunk(stream, c) => {
                assert!(c.len() <= MAX_CHUNK_LEN);
                assert!(!c.is_empty(), "an empty chunk");
                Ok((stream, c))
            }
            other => Err(other),
        }
    }

    /// Streams output from `offset` to the end frame.
    pub async fn output(&mut self, id: JobId, offset: u64, follow: bool) -> Streamed {
        self.output_of(id, OutputFrom::Offset(offset), Streams::BOTH, follow)
            .await
    }

    /// Streams the output of `streams` from `from` to the end frame.
    pub async fn output_of(
        &mut self,
        id: JobId,
        from: OutputFrom,
        streams: Streams,
        follow: bool,
    ) -> Streamed {
        self.request_output(id, from, streams, follow).await;
        let mut got = Streamed {
            bytes: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            end: Err(WireError::internal("no end")),
        };
        loop {
            match self.next_chunk().await {
                Ok((stream, c)) => {
                    got.bytes.extend_from_slice(&c);
                    match stream {
                        Stream::Stdout => got.stdout.extend_from_slice(&c),
                        Stream::Stderr => got.stderr.extend_from_slice(&c),
                    }
                }
                Err(Response::End(s)) => {
                    got.end = Ok(*s);
                    return got;
                }
                Err(Response::Error(e)) => {
                    got.end = Err(e);
                    return got;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Follows a job to its end: its complete output and final status.
    pub async fn wait(&mut self, id: JobId) -> (Vec<u8>, JobStatus) {
        let s = self.output(id, 0, true).await;
        (s.bytes, s.end.expect("final status"))
    }

    /// Follows the job's output until `done` says it has what the test waits for, then
    /// drops the stream and returns what came.
    async fn follow_until(mut self, id: JobId, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        self.request_output(id, OutputFrom::Offset(0), Streams::BOTH, true)
            .await;
        let mut seen = Vec::new();
        while !done(&seen) {
            match self.next_chunk().await {
                Ok((_, c)) => seen.extend_from_slice(&c),
                Err(end) => panic!(
                    "output ended at {} bytes: {end:?}, seen {seen:?}",
                    seen.len()
                ),
            }
        }
        seen
    }

    /// Follows the job's output until `needle` has appeared, then drops the stream.
    pub async fn wait_for_output(self, id: JobId, needle: &[u8]) -> Vec<u8> {
        self.follow_until(id, |seen| seen.windows(needle.len()).any(|w| w == needle))
            .await
    }

    /// Follows the job's output until at least `len` bytes have arrived, then drops the
    /// stream: the executor has stored that much.
    pub async fn wait_for_len(self, id: JobId, len: usize) -> Vec<u8> {
        self.follow_until(id, |seen| seen.len() >= len).await
    }

    pub fn into_inner(self) -> ClientTransport<UnixStream> {
        self.t
    }
}

/// `jobworker-executor audit verify DIR`: whether it passed, and what it printed
/// (stdout, then stderr).
pub fn audit_verify(dir: &Path) -> (bool, String) {
    let out = Command::new(bins::path("jobworker-executor"))
        .args(["audit", "verify"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running jobworker-executor audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The records of the audit trail in `dir`, oldest first, each parsed.
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the audit directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    let mut records = Vec::new();
    for n in names {
        let text = std::fs::read_to_string(&n).expect("an audit segment");
        for line in text.lines() {
            records.push(serde_json::from_str(line).expect("a JSON record"));
        }
    }
    records
}

/// A job spec running `argv` with the executor's default limits.
pub fn spec(argv: &[&str]) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The bytes `jobworker-probe pattern LEN` writes: 0, 1, ..., 255, 0, 1, ...
pub fn pattern(len: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(len).collect()
}

/// After a misbehaving job: the executor still answers on a new connection and runs a
/// new job, and the host can still fork.
pub async fn assert_unaffected(exec: &Executor) {
    let mut c = exec.client().await;
    assert_eq!(c.call(Request::Ping).await, Response::Pong);
    let id = c.run(&["echo", "still serving"]).await.unwrap();
    assert_eq!(c.wait(id).await.0, b"still serving\n");
    assert!(
        Command::new("true")
            .status()
            .expect("the host can fork")
            .success()
    );
}

#[cfg(test)]
mod tests {
    use super::{backend_name, pattern};

    #[test]
    fn the_backend_is_read_from_its_log_line() {
        let line =
            "2026-01-01T00:00:00Z  INFO jobworker_executor: cgroup backend backend=\"cgroup v2\"";
        assert_eq!(backend_name(line), "cgroup v2");
        assert_eq!(backend_name("cgroup backend backend=v1 x=y"), "v1");
        assert_eq!(backend_name("cgroup backend"), "");
    }

    #[test]
    fn the_pattern_counts_bytes_round() {
        let p = pattern(513);
        assert_eq!(&p[..3], [0, 1, 2]);
        assert_eq!(p[255], 255);
        assert_eq!(p[256], 0);
        assert_eq!(p[512], 0);
    }
}
