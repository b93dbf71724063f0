//! Shared harness of the executor's root tests: a real `jobworker-executor` process on a
//! real Unix socket, with its own state directory and cgroup parent, and a small client
//! speaking the real protocol.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use futures::{SinkExt, StreamExt};
use jobworker_executor::cgroup::{Backend, CgroupConfig, Cgroups};
use jobworker_protocol::codec::client_handshake;
use jobworker_protocol::*;
use tokio::net::UnixStream;

/// Prints a line the test harness does not capture (it writes to the stderr handle
/// directly), so that skips are visible even when the test passes.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// True when running as root; otherwise prints a visible skip line (written to the
/// stderr handle directly, which the test harness does not capture).
pub fn root_or_skip(test: &str) -> bool {
    // /proc/self/status has the effective uid.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if euid == "0" {
        true
    } else {
        note(&format!(
            "SKIPPED {test}: needs root (real namespaces, cgroups and a root executor)"
        ));
        false
    }
}

pub fn executor_bin() -> PathBuf {
    std::env::var_os("JOBWORKER_EXECUTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_jobworker-executor")))
}

pub fn job_user() -> String {
    std::env::var("JOBWORKER_TEST_JOB_USER").unwrap_or_else(|_| "nobody".into())
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A scratch directory that any user can traverse: jobs run as an unprivileged user, the
/// test checkout may live under a 0700 directory, and a job's `/tmp` and `/var/tmp` are
/// its own, so the scratch area lives elsewhere (`JOBWORKER_TEST_SCRATCH`, default
/// `/var/lib/jobworker-tests`).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let base = std::env::var_os("JOBWORKER_TEST_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/jobworker-tests"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = base.join(format!("{tag}-{}", random_hex(6)));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Options for one executor instance.
#[derive(Clone, Default)]
pub struct Opts {
    pub extra: Vec<String>,
    /// Peer uid allowed to connect (0: the test itself).
    pub allow_uid: u32,
}

/// A running executor; killed (SIGKILL) on drop if still running.
pub struct Executor {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: mpsc::Receiver<String>,
    /// The cgroup parent this test created for the executor (removed after it exits).
    pub parent: std::sync::Arc<TestParent>,
    /// The latest DEBUG lines, which are not echoed as they come (a load test makes
    /// thousands): printed if the test fails, to show what the executor did last.
    debug_tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    opts: Opts,
    _scratch: std::sync::Arc<Scratch>,
}

/// How many of the executor's latest DEBUG lines a failing test prints.
const DEBUG_TAIL: usize = 40;

impl Executor {
    pub fn start(opts: Opts) -> Self {
        let scratch = std::sync::Arc::new(Scratch::new("exec"));
        let state = scratch.path.join("state");
        let socket = scratch.path.join("executor.sock");
        let parent = std::sync::Arc::new(TestParent::new(&random_hex(4)));
        Self::launch(opts, scratch, state, socket, parent)
    }

    fn launch(
        opts: Opts,
        scratch: std::sync::Arc<Scratch>,
        state: PathBuf,
        socket: PathBuf,
        parent: std::sync::Arc<TestParent>,
    ) -> Self {
        let mut cmd = Command::new(executor_bin());
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--allow-uid")
            .arg(opts.allow_uid.to_string())
            .arg("--job-user")
            .arg(job_user())
            .arg("--cgroup-parent")
            .arg(&parent.name)
            .args(backend_flag())
            .args(&opts.extra)
            .env("JOBWORKER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning jobworker-executor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let debug_tail = std::sync::Arc::new(std::sync::Mutex::new(
            std::collections::VecDeque::with_capacity(DEBUG_TAIL),
        ));
        let tail = debug_tail.clone();
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
                if tx.send(line).is_err() {
                    // Keep draining so the executor never blocks on a full pipe.
                }
            }
        });
        let exec = Self {
            child: Some(child),
            socket,
            state,
            parent,
            log: rx,
            debug_tail,
            opts,
            _scratch: scratch,
        };
        exec.wait_log("executor ready", Duration::from_secs(30));
        exec
    }

    /// Waits for a log line containing `needle`; panics at the deadline.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no executor log line containing {needle:?} within {within:?}"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal_pid(child.id(), "TERM");
        child.wait().unwrap()
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts a new executor on the same socket, state directory and cgroup parent.
    pub fn restart(mut self) -> Self {
        if self.child.is_some() {
            self.terminate();
        }
        let scratch = self._scratch.clone();
        let (opts, state, socket, parent) = (
            self.opts.clone(),
            self.state.clone(),
            self.socket.clone(),
            self.parent.clone(),
        );
        drop(self);
        Self::launch(opts, scratch, state, socket, parent)
    }

    /// The executor's init template: its child running `jobworker-init --job-init` in the
    /// executor's own PID namespace (the job inits cloned from it are in their own).
    pub fn template_pid(&self) -> u32 {
        let exec = self.pid();
        let ns = pid_ns(exec);
        let found: Vec<u32> = processes_matching("jobworker-init --job-init")
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|&pid| parent_pid(pid) == Some(exec) && pid_ns(pid) == ns)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "init templates of executor {exec}: {found:?}"
        );
        found[0]
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket)
            .await
            .expect("connecting to the executor")
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
        if let Some(mut c) = self.child.take() {
            signal_pid(c.id(), "TERM");
            let _ = c.wait();
        }
    }
}

/// Sends a signal with the `kill` command.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The executor protocol over a real socket.
pub struct Client {
    t: ClientTransport<UnixStream>,
}

/// Everything an output stream delivered.
#[derive(Debug)]
pub struct Streamed {
    pub bytes: Vec<u8>,
    pub end: Result<JobStatus, WireError>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, codec::HandshakeError> {
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

    pub async fn start(&mut self, owner: &str, spec: JobSpec) -> Result<JobId, WireError> {
        match self
            .call(Request::Start {
                owner: owner.into(),
                spec,
            })
            .await
        {
            Response::Started { id } => Ok(id),
            Response::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn run(&mut self, argv: &[&str]) -> Result<JobId, WireError> {
        self.start("alice", spec(argv)).await
    }

    pub async fn status(&mut self, id: JobId) -> Result<JobStatus, WireError> {
        match self
            .call(Request::Status {
                scope: Scope::Any,
                id,
            })
            .await
        {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn stop(&mut self, id: JobId) -> Result<JobStatus, WireError> {
        match self
            .call(Request::Stop {
                scope: Scope::Any,
                id,
            })
            .await
        {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Streams output from `offset` to the end frame.
    pub async fn output(&mut self, id: JobId, offset: u64, follow: bool) -> Streamed {
        self.t
            .send(Request::Output {
                scope: Scope::Any,
                id,
                offset,
                follow,
            })
            .await
            .expect("send");
        let mut bytes = Vec::new();
        loop {
            match self
                .t
                .next()
                .await
                .expect("a frame")
                .expect("a valid frame")
            {
                Response::Chunk(c) => {
                    assert!(c.len() <= MAX_CHUNK_LEN);
                    bytes.extend_from_slice(&c);
                }
                Response::End(s) => {
                    return Streamed { bytes, end: Ok(*s) };
                }
                Response::Error(e) => {
                    return Streamed { bytes, end: Err(e) };
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Follows a job to its end: its complete output and final status.
    pub async fn wait(&mut self, id: JobId) -> (Vec<u8>, JobStatus) {
        let s = self.output(id, 0, true).await;
        (s.bytes, s.end.expect("final status"))
    }

    pub fn into_inner(self) -> ClientTransport<UnixStream> {
        self.t
    }
}

pub fn spec(argv: &[&str]) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Processes whose command line contains `needle` (scans /proc).
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// The probe binary, copied once per test process into a world-readable directory so the
/// job user can execute it wherever the checkout lives.
///
/// A static is never dropped, so the copy outlives the test process: its directory is
/// named after the process (`probe-PID-...`), and each new copy first removes those of
/// processes that have exited.
pub fn probe() -> String {
    static PROBE: std::sync::OnceLock<(Scratch, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = PROBE.get_or_init(|| {
        let src = std::env::var_os("JOBWORKER_PROBE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_jobworker-probe")));
        let dir = Scratch::new(&format!("probe-{}", std::process::id()));
        remove_probes_of_exited_processes(dir.path.parent().expect("scratch base"));
        let dst = dir.path.join("jobworker-probe");
        std::fs::copy(&src, &dst).expect("copying the probe");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, dst)
    });
    path.to_string_lossy().into_owned()
}

/// Removes `probe-PID-*` directories under `base` whose test process has exited.
fn remove_probes_of_exited_processes(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("probe-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A FIFO the job user can open, for the test to release a gated job step by step.
pub struct Gate {
    pub path: PathBuf,
    writer: Option<std::fs::File>,
    _dir: Scratch,
}

impl Gate {
    pub fn new() -> Self {
        let dir = Scratch::new("gate");
        let path = dir.path.join("gate");
        let st = Command::new("mkfifo")
            .arg("-m")
            .arg("0666")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mkfifo");
        Self {
            path,
            writer: None,
            _dir: dir,
        }
    }

    /// Lets the job take its next step (opens the FIFO on first use; that blocks until the
    /// job has opened it for reading).
    pub async fn open(&mut self) {
        use std::io::Write;
        if self.writer.is_none() {
            let path = self.path.clone();
            let f = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new().write(true).open(path).unwrap()
            })
            .await
            .unwrap();
            self.writer = Some(f);
        }
        self.writer.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
}

/// The bytes `jobworker-probe pattern` writes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(len).collect()
}

impl Executor {
    /// Host pid of a job's init, from the executor's "job started" log line.
    pub fn init_pid(&self, id: &jobworker_protocol::JobId) -> u32 {
        let line = self.wait_log(&format!("job={id}"), Duration::from_secs(10));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }
}

/// The parent of a process (`/proc/PID/stat`), if it still exists.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// The PID namespace of a process, e.g. `pid:[4026532301]`.
pub fn pid_ns(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A process, identified by pid and start time (pids are reused; the pair is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

/// State letter and start time of a process, from /proc/PID/stat.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = s.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // starttime is field 22 of stat, i.e. index 19 counting from the state (field 3).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether a /proc state letter is that of a live process: not a zombie (`Z`, waiting to
/// be reaped) nor dead (`X`, being released).
fn alive_state(state: char) -> bool {
    !matches!(state, 'Z' | 'X' | 'x')
}

/// The live processes of the job whose PID namespace is `ns`. Take this snapshot while
/// the job runs: once a namespace is gone its inode number can be reused by another job.
/// Zombies are dead (they only wait for the host's PID 1 to reap them) and not listed.
pub fn job_processes(ns: &str) -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        match stat_of(pid) {
            Some((state, start)) if alive_state(state) && pid_ns(pid) == ns => {
                out.push(Proc { pid, start })
            }
            _ => {}
        }
    }
    out
}

/// Those of `procs` that are still alive (same pid, same start time, not a zombie).
pub fn still_alive(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .copied()
        .filter(
            |p| matches!(stat_of(p.pid), Some((state, start)) if alive_state(state) && start == p.start),
        )
        .collect()
}

impl Client {
    /// Follows the job's output until `needle` has appeared, then drops the stream.
    pub async fn wait_for_output(self, id: jobworker_protocol::JobId, needle: &[u8]) -> Vec<u8> {
        let mut t = self.into_inner();
        t.send(jobworker_protocol::Request::Output {
            scope: jobworker_protocol::Scope::Any,
            id,
            offset: 0,
            follow: true,
        })
        .await
        .unwrap();
        let mut seen = Vec::new();
        loop {
            match t.next().await.expect("a frame").expect("a valid frame") {
                jobworker_protocol::Response::Chunk(c) => {
                    seen.extend_from_slice(&c);
                    if seen.windows(needle.len()).any(|w| w == needle) {
                        return seen;
                    }
                }
                other => panic!("output ended before {needle:?}: {other:?}, seen {seen:?}"),
            }
        }
    }
}

/// Waits (on a pidfd, no polling) until process `pid` has exited, at most `within`.
/// Returns false at the deadline. A process that is already gone counts as exited.
pub fn wait_exit(pid: u32, within: Duration) -> bool {
    use std::os::fd::AsFd;
    let Ok(fd) = jobworker_executor::sys::pidfd_open(pid as i32) else {
        return true;
    };
    let ms = within.as_millis().min(i32::MAX as u128) as i32;
    jobworker_executor::sys::poll_readable([fd.as_fd()], Some(ms)).is_ok_and(|[r]| r)
}

/// A parent group for one test, removed (with anything left under it) when dropped.
pub struct TestParent {
    pub name: String,
    pub cgroups: Cgroups,
}

/// The backend to test: `JOBWORKER_TEST_CGROUP_BACKEND` (`v1`, `v2`; the VM tests set
/// `v2`, so that a guest misdetected as v1 fails instead of testing the wrong backend),
/// else whatever the host offers.
/// `--cgroup-backend` for the executor when the test environment forces one.
pub fn backend_flag() -> Vec<String> {
    match std::env::var("JOBWORKER_TEST_CGROUP_BACKEND") {
        Ok(b) => vec!["--cgroup-backend".into(), b],
        Err(_) => vec![],
    }
}

pub fn backend() -> Backend {
    std::env::var("JOBWORKER_TEST_CGROUP_BACKEND")
        .map(|b| b.parse().unwrap())
        .unwrap_or(Backend::Auto)
}

impl TestParent {
    pub fn new(test: &str) -> Self {
        let name = format!("jobworker-test-{}-{test}", std::process::id());
        let cfg = CgroupConfig::host(backend(), Some(name.clone()));
        let cgroups = Cgroups::probe(&cfg).unwrap();
        println!("{test}: {} under {name}", cgroups.name());
        Self { name, cgroups }
    }

    /// The parent's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.cgroups {
            Cgroups::V1(b) => b.parents().into_iter().map(Path::to_path_buf).collect(),
            Cgroups::V2(b) => vec![b.parent().to_path_buf()],
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        for dir in self.dirs() {
            assert!(
                dir.ends_with(&self.name),
                "not a test parent: {}",
                dir.display()
            );
            rmdir_tree(&dir);
        }
    }
}

/// Removes a tree of cgroup directories (control files go with their directory).
pub fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cannot remove test cgroup {}: {e}", dir.display());
    }
}

/// The block device for io limits: `JOBWORKER_TEST_IO_DEVICE` when set (the VM tests'
/// scratch disk), else the whole disk holding `/`; `None` (with a visible note) when `/`
/// is not on a block device, e.g. an overlay or an initramfs.
pub fn io_disk() -> Option<String> {
    if let Ok(dev) = std::env::var("JOBWORKER_TEST_IO_DEVICE") {
        return Some(dev);
    }
    let dev = std::fs::metadata("/").unwrap().dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let uevent = |dir: &Path| std::fs::read_to_string(dir.join("uevent")).ok();
    let Some(mut text) = uevent(&sys) else {
        note("SKIPPED (io part): / is not on a block device");
        return None;
    };
    if text.contains("DEVTYPE=partition") {
        text = uevent(&sys.join(".."))?;
    }
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))?;
    let path = format!("/dev/{name}");
    let is_block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        note(&format!(
            "SKIPPED (io part): {path} is not a block device here"
        ));
        return None;
    }
    Some(path)
}

impl Executor {
    /// The job's cgroup directory that holds control file `file` (v1: the hierarchy of
    /// that controller; v2: the one job group).
    pub fn job_cgroup_file(&self, id: &JobId, file: &str) -> PathBuf {
        let id = id.to_string();
        for parent in self.parent.dirs() {
            for dir in [parent.join(&id), parent.join("jobs").join(&id)] {
                if dir.join(file).exists() {
                    return dir.join(file);
                }
            }
        }
        panic!("no cgroup file {file} for job {id}");
    }

    /// Whether any job group is left under this executor's parent.
    pub fn job_groups_left(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for parent in self.parent.dirs() {
            for dir in [parent.clone(), parent.join("jobs")] {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().parse::<JobId>().is_ok() {
                        left.push(e.path());
                    }
                }
            }
        }
        left
    }

    /// The job groups still there once the executor has removed job `id`'s group, which
    /// it does right after it publishes the job's end (and logs at debug level).
    pub fn job_groups_left_after(&self, id: &JobId) -> Vec<PathBuf> {
        self.wait_log(
            &format!("job cgroup removed job={id}"),
            Duration::from_secs(30),
        );
        self.job_groups_left()
    }
}

/// The numeric uid and gid of the test job user.
pub fn job_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let user = job_user();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("no user {user} in /etc/passwd"))
}

/// Reads a `key value` line of a flat-keyed cgroup file (cpu.stat, memory.events, ...).
pub fn cgroup_stat(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()))
}

/// A `Name: value kB` field of /proc/PID/status (VmRSS, VmHWM), in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// After a misbehaving job: the executor still answers on a new connection and runs a
/// new job, and the host can still fork.
pub async fn assert_unaffected(exec: &Executor) {
    let mut c = exec.client().await;
    assert_eq!(
        c.call(jobworker_protocol::Request::Ping).await,
        jobworker_protocol::Response::Pong
    );
    let id = c.run(&["echo", "still serving"]).await.unwrap();
    assert_eq!(c.wait(id).await.0, b"still serving\n");
    assert!(
        std::process::Command::new("true")
            .status()
            .expect("the host can fork")
            .success()
    );
}

impl Client {
    /// Follows the job's output until at least `len` bytes have arrived, then drops the
    /// stream: the executor has stored that much.
    pub async fn wait_for_len(self, id: jobworker_protocol::JobId, len: usize) -> Vec<u8> {
        let mut t = self.into_inner();
        t.send(jobworker_protocol::Request::Output {
            scope: jobworker_protocol::Scope::Any,
            id,
            offset: 0,
            follow: true,
        })
        .await
        .unwrap();
        let mut seen = Vec::new();
        while seen.len() < len {
            match t.next().await.expect("a frame").expect("a valid frame") {
                jobworker_protocol::Response::Chunk(c) => seen.extend_from_slice(&c),
                other => panic!("output ended at {} bytes: {other:?}", seen.len()),
            }
        }
        seen
    }
}
