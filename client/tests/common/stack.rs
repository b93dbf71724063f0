//! The real service, as root: `jobworker-executor` (root) on its socket and
//! `jobworker-api` as `nobody` in front of it, with the server files of a [`Pki`] made
//! by the development PKI tool. The binaries are the workspace's (build it first;
//! `make test` does), or those named by `JOBWORKER_EXECUTOR_BIN` and
//! `JOBWORKER_API_BIN`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{LIMIT, Pki, shared_dir};

/// The unprivileged user the API server and the jobs run as.
pub const NOBODY: u32 = 65534;

/// Path of a workspace binary: `$ENV` if set, else next to this test executable.
pub fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/this-test -> target/debug/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; make test \
         does), or set {env}",
        path.display()
    );
    path
}

/// A scratch directory jobs can see (a job's /tmp is its own), removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("JOBWORKER_TEST_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/jobworker-tests"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cli-{tag}-"))
            .tempdir_in(&base)
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    /// A directory jobs (running as nobody) may write into.
    pub fn writable(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
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
pub fn open_gate(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(b"go\n").unwrap();
}

/// The real executor, as root; stopped with SIGTERM when dropped.
pub struct Executor {
    child: Option<Child>,
    pub socket: PathBuf,
    cgroup_parent: String,
}

impl Executor {
    /// Starts it with `extra` flags after the ones every test needs.
    pub fn start(scratch: &Scratch, extra: &[&str]) -> Executor {
        let tag: String = scratch
            .0
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let socket = scratch.0.join("executor.sock");
        let cgroup_parent = format!("jobworker-test-{tag}");
        let bin = workspace_binary("jobworker-executor", "JOBWORKER_EXECUTOR_BIN");
        let mut child = Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--socket-group")
            .arg(NOBODY.to_string())
            .arg("--state-dir")
            .arg(scratch.0.join("state"))
            .arg("--allow-uid")
            .arg(NOBODY.to_string())
            .arg("--job-user")
            .arg("nobody")
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .args(extra)
            .env("JOBWORKER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning jobworker-executor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[executor] {line}");
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
        Executor {
            child: Some(child),
            socket,
            cgroup_parent,
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

/// Removes this test's cgroup parent from every hierarchy, once the executor has gone.
fn remove_cgroup_parent(name: &str) {
    assert!(
        name.starts_with("jobworker-test-cli"),
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

fn rmdir_tree(dir: &Path) {
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

/// The real API server as `nobody`; killed when dropped.
pub struct Api {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Api {
    /// Starts it listening on `listen` (an address with port 0).
    pub fn start(pki: &Pki, executor_socket: &Path, listen: &str) -> Api {
        let dir = shared_dir("jobctl-test-api-");
        let d = dir.path();
        let install = |src: &Path, name: &str, mode: u32| {
            let dst = d.join(name);
            std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();
            dst
        };
        let bin = install(
            &workspace_binary("jobworker-api", "JOBWORKER_API_BIN"),
            "jobworker-api",
            0o755,
        );
        let cert = install(&pki.path("server.pem"), "server.pem", 0o644);
        let key = install(&pki.path("server.key"), "server.key", 0o600);
        let ca = install(&pki.ca(), "ca.pem", 0o644);
        let log = std::fs::File::create(d.join("api.log")).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--tls-client-ca")
            .arg(&ca)
            .arg("--executor-socket")
            .arg(executor_socket)
            .arg("--admin")
            .arg("admin")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .uid(NOBODY)
            .gid(NOBODY);
        let mut child = spawn(&mut cmd);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("jobworker-api listening on ") {
                        let addr: std::net::SocketAddr = addr.parse().expect("address");
                        break addr.port();
                    }
                }
                _ => panic!(
                    "jobworker-api did not start: {:?}; log:\n{}",
                    child.wait(),
                    std::fs::read_to_string(d.join("api.log")).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Api {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
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
fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            Err(e) => panic!("spawning {:?}: {e}", cmd.get_program()),
        }
    }
}

/// The whole service for one test.
pub struct Stack {
    pub api: Api,
    pub executor: Executor,
    pub pki: Pki,
    pub scratch: Scratch,
    pub home: tempfile::TempDir,
}

impl Stack {
    pub fn start(tag: &str) -> Stack {
        Self::start_with(tag, &[], "127.0.0.1:0")
    }

    /// The service with `executor_flags` given to the executor and the API server
    /// listening on `listen`.
    pub fn start_with(tag: &str, executor_flags: &[&str], listen: &str) -> Stack {
        let scratch = Scratch::new(tag);
        let executor = Executor::start(&scratch, executor_flags);
        let pki = Pki::new();
        let api = Api::start(&pki, &executor.socket, listen);
        let home = tempfile::tempdir().unwrap();
        Stack {
            api,
            executor,
            pki,
            scratch,
            home,
        }
    }

    /// jobctl as `user`.
    pub fn jobctl(&self, user: &str) -> Command {
        super::jobctl_as(self.home.path(), &self.pki, user, &self.api.url())
    }
}
