//! `make bench`: the whole stack, measured end to end against baselines from the same run.
//!
//! Starts the real `jobworker-executor` (root) and `jobworker-api` (as `nobody`) on
//! loopback with a fresh development PKI, runs the scenarios of `docs/benchmarks.md`,
//! prints one table and writes every figure to `bench-results.json` at the top of the
//! workspace. Needs root, and the release binaries of the workspace next to this one
//! (`make bench` builds them first). Baseline tools: `unshare`, `bwrap`, `crun`, and a
//! static busybox for crun's bundle.
//!
//! Latencies are wall-clock times measured by this process; medians and 99th
//! percentiles come from one run, with the baselines interleaved with the measured
//! operation so that a busy neighbour affects both alike. Peak RSS is the kernel's
//! high-water mark (`VmHWM`), reset before each scenario through `/proc/PID/clear_refs`.
//!
//! Environment: `BENCH_QUICK=1` runs smaller sizes (a smoke test of the harness, not
//! figures to report); `BENCH_ONLY=1,3` runs only the listed scenarios; `BENCH_HOLD=1`
//! keeps the started stack up until a line arrives on stdin (to profile it with other
//! tools), then runs the scenarios; `BENCH_KEEP=1` keeps the stack's directory and logs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_proto::v1::stream_job_output_response::Event;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The unprivileged account of the API server and of jobs.
const NOBODY: u32 = 65534;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Throughputs are in MB/s of 10^6 bytes.
const MB: f64 = 1e6;

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) is not a
    // benchmark run.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--crun-helper") {
        if let Err(e) = crun_helper(&args[i + 1..]) {
            eprintln!("bench: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("stack: run with `make bench` (or cargo bench -p jobworker-api --bench stack)");
        return;
    }
    if let Err(e) = run() {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

/// Sizes of the scenarios.
struct Sizes {
    starts: usize,
    sustained: Duration,
    clients: usize,
    throughput_bytes: u64,
    fanout_followers: usize,
    fanout_bytes: u64,
    scale_jobs: usize,
    scale_probes: usize,
    stalled_bytes: u64,
    cli_runs: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                starts: 30,
                sustained: Duration::from_secs(2),
                clients: 4,
                throughput_bytes: 64 * MIB,
                fanout_followers: 10,
                fanout_bytes: 8 * MIB,
                scale_jobs: 50,
                scale_probes: 10,
                stalled_bytes: 64 * MIB,
                cli_runs: 10,
            }
        } else {
            Sizes {
                starts: 300,
                sustained: Duration::from_secs(10),
                clients: 4,
                throughput_bytes: GIB,
                fanout_followers: 100,
                fanout_bytes: 100 * MIB,
                scale_jobs: 1000,
                scale_probes: 100,
                stalled_bytes: GIB,
                cli_runs: 100,
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark starts the executor, which needs root; run it as root");
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
    let only: Option<Vec<u32>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let sizes = Sizes::new(quick);
    let bins = Binaries::locate()?;
    for tool in ["unshare", "bwrap", "crun", "busybox"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: `make bench` installs it (bubblewrap, crun, busybox-static)");
        }
    }
    let machine = machine();
    println!("{}", machine_line(&machine));

    let stack = Stack::start(&bins)?;
    println!(
        "stack: executor pid {} (cgroup {}), API server pid {} on {}",
        stack.exec_pid, stack.cgroup_backend, stack.api_pid, stack.addr
    );
    if std::env::var_os("BENCH_HOLD").is_some() {
        // A profiling aid: the stack stays up, for other tools, until stdin has a line.
        println!(
            "holding: JOBWORKER_SERVER=localhost:{} JOBWORKER_CA={} JOBWORKER_CERT={} JOBWORKER_KEY={}",
            stack.addr.port(),
            stack.pki.join("ca.pem").display(),
            stack.pki.join("alice.pem").display(),
            stack.pki.join("alice.key").display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    // One thread, as jobctl has: the client's own cost stays what a real client's is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::default();
    let result = rt.block_on(async {
        if want(1) {
            scenario_start_latency(&stack, &sizes, &mut report).await?;
        }
        if want(2) {
            scenario_sustained(&stack, &sizes, &mut report).await?;
        }
        if want(3) {
            scenario_throughput(&stack, &sizes, &mut report).await?;
        }
        if want(4) {
            scenario_fanout(&stack, &sizes, &mut report).await?;
        }
        if want(6) {
            scenario_stalled(&stack, &sizes, &mut report).await?;
        }
        if want(7) {
            scenario_cli(&stack, &bins, &sizes, &mut report).await?;
        }
        if want(5) {
            scenario_scale(&stack, &sizes, &mut report).await?;
        }
        anyhow::Ok(())
    });
    drop(rt);
    let mut machine = machine;
    machine["load_after"] = json!(loadavg());
    machine["cgroup_backend"] = json!(stack.cgroup_backend);
    drop(stack);
    result?;

    println!();
    println!("{}", machine_line(&machine));
    report.print();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results.json");
    let doc = json!({
        "machine": machine,
        "quick": quick,
        "scenarios": report.json,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("figures written to {}", out.canonicalize()?.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The machine.
// ---------------------------------------------------------------------------------------

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    json!({
        "cores": cores,
        "cpu": model,
        "kernel": kernel,
        "memory_gib": (mem_kib as f64 / (1024.0 * 1024.0)).round(),
        "load_before": loadavg(),
    })
}

fn machine_line(m: &Value) -> String {
    let s = |k: &str| {
        m[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| m[k].to_string())
    };
    let mut line = format!(
        "machine: {} cores ({}), {} GiB, Linux {}, load before {}",
        s("cores"),
        s("cpu"),
        s("memory_gib"),
        s("kernel"),
        s("load_before")
    );
    if m.get("load_after").is_some() {
        line.push_str(&format!(
            ", after {}; cgroup backend {}",
            s("load_after"),
            s("cgroup_backend")
        ));
    }
    line
}

/// Resident memory of a process, in bytes: (current, peak since the last reset).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Number of open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resets the peak-RSS mark of a process to its current RSS.
fn reset_peak(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("bench: cannot reset the peak RSS of {pid}: {e}");
    }
}

/// CPU time a process has used (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Busy and total CPU time of the whole machine, in seconds (from /proc/stat).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

// ---------------------------------------------------------------------------------------
// The stack.
// ---------------------------------------------------------------------------------------

struct Binaries {
    executor: PathBuf,
    api: PathBuf,
    jobctl: PathBuf,
    dev_certs: PathBuf,
}

impl Binaries {
    /// The release binaries next to this benchmark (target/release/deps/stack-* ->
    /// target/release/NAME).
    fn locate() -> anyhow::Result<Binaries> {
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
struct Stack {
    dir: PathBuf,
    exec: Child,
    exec_pid: u32,
    api: Child,
    api_pid: u32,
    addr: SocketAddr,
    cgroup_parent: String,
    cgroup_backend: String,
    pki: PathBuf,
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Executor settings for the scenarios: room for 1,000 sleeping jobs plus probes, and
/// for 1 GiB of output per job.
const MAX_RUNNING_JOBS: u32 = 1100;
const MAX_OUTPUT_BYTES: u64 = GIB + GIB / 4;
/// Limits every benchmark job asks for: a cgroup with real limits.
fn job_limits() -> pb::Limits {
    pb::Limits {
        cpu_millis: Some(1000),
        memory_bytes: Some(256 * MIB),
        pids: Some(64),
        io: None,
    }
}

impl Stack {
    fn start(bins: &Binaries) -> anyhow::Result<Stack> {
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
            api,
            api_pid,
            addr,
            cgroup_parent,
            cgroup_backend: backend,
            pki,
        })
    }

    /// A new mTLS connection as `alice`, made the way jobctl makes it.
    async fn client(&self) -> anyhow::Result<JobWorkerClient<Channel>> {
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

    fn reset_peaks(&self) {
        reset_peak(self.exec_pid);
        reset_peak(self.api_pid);
    }

    /// (executor, API server) peak RSS since the last reset, in bytes.
    fn peaks(&self) -> (u64, u64) {
        (rss(self.exec_pid).1, rss(self.api_pid).1)
    }

    /// CPU time used so far by each side.
    fn cpu(&self) -> Cpu {
        Cpu {
            exec: cpu_seconds(self.exec_pid),
            api: cpu_seconds(self.api_pid),
            client: cpu_seconds(std::process::id()),
        }
    }

    /// CPU time used so far by all jobs together (their inits and commands), in seconds:
    /// the executor's parent group's counter, which keeps what removed job groups used.
    fn jobs_cpu(&self) -> Option<f64> {
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

    fn rss_now(&self) -> (u64, u64) {
        (rss(self.exec_pid).0, rss(self.api_pid).0)
    }
}

/// CPU seconds (user + system) of the executor, the API server and this client.
struct Cpu {
    exec: f64,
    api: f64,
    client: f64,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            exec: self.exec - before.exec,
            api: self.api - before.api,
            client: self.client - before.client,
        }
    }
}

/// An experiment knob: `BENCH_EXEC_WORKERS=N` / `BENCH_API_WORKERS=N` start that
/// daemon with N tokio worker threads (`TOKIO_WORKER_THREADS`) instead of its default.
fn worker_override(cmd: &mut Command, var: &str) {
    cmd.env_remove("TOKIO_WORKER_THREADS");
    if let Ok(n) = std::env::var(var) {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
}

fn sigterm_and_wait(child: &mut Child, what: &str) {
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
fn remove_cgroup_parent(name: &str) {
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
        eprintln!("bench: cannot remove cgroup {}: {e}", dir.display());
    }
}

// ---------------------------------------------------------------------------------------
// Figures.
// ---------------------------------------------------------------------------------------

/// Milliseconds, sorted.
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut v: Vec<f64>) -> Samples {
        v.sort_by(f64::total_cmp);
        Samples(v)
    }

    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }

    fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    fn p99(&self) -> f64 {
        self.pct(99.0)
    }

    fn json(&self) -> Value {
        json!({ "n": self.0.len(), "p50_ms": round3(self.p50()), "p99_ms": round3(self.p99()) })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn mib(b: u64) -> f64 {
    (b as f64 / MIB as f64 * 10.0).round() / 10.0
}

/// One line of the table.
struct Row {
    scenario: String,
    metric: String,
    value: String,
    baseline: String,
    ratio: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: BTreeMap<String, Value>,
}

impl Report {
    fn row(&mut self, scenario: &str, metric: &str, value: String, baseline: &str, ratio: &str) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            baseline: baseline.into(),
            ratio: ratio.into(),
        });
    }

    fn print(&self) {
        let w = |f: fn(&Row) -> &String, title: &str| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let cols = [
            w(|r| &r.scenario, "scenario"),
            w(|r| &r.metric, "figure"),
            w(|r| &r.value, "value"),
            w(|r| &r.baseline, "baseline (same run)"),
            w(|r| &r.ratio, "ratio"),
        ];
        let line = |a: &str, b: &str, c: &str, d: &str, e: &str| {
            println!(
                "| {a:<w0$} | {b:<w1$} | {c:>w2$} | {d:<w3$} | {e:>w4$} |",
                w0 = cols[0],
                w1 = cols[1],
                w2 = cols[2],
                w3 = cols[3],
                w4 = cols[4]
            );
        };
        line(
            "scenario",
            "figure",
            "value",
            "baseline (same run)",
            "ratio",
        );
        println!(
            "|{}|{}|{}:|{}|{}:|",
            "-".repeat(cols[0] + 2),
            "-".repeat(cols[1] + 2),
            "-".repeat(cols[2] + 1),
            "-".repeat(cols[3] + 2),
            "-".repeat(cols[4] + 1),
        );
        let mut last = String::new();
        for r in &self.rows {
            let s = if r.scenario == last { "" } else { &r.scenario };
            line(s, &r.metric, &r.value, &r.baseline, &r.ratio);
            last = r.scenario.clone();
        }
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}

// ---------------------------------------------------------------------------------------
// Client helpers.
// ---------------------------------------------------------------------------------------

fn start_request(argv: &[&str]) -> pb::StartJobRequest {
    pb::StartJobRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        limits: Some(job_limits()),
    }
}

async fn start(c: &mut JobWorkerClient<Channel>, argv: &[&str]) -> anyhow::Result<String> {
    Ok(c.start_job(start_request(argv)).await?.into_inner().id)
}

/// What a follower saw.
struct Followed {
    bytes: u64,
    /// Data messages received.
    messages: u64,
    checksum: u64,
    status: pb::JobStatus,
}

/// Follows a job's output from `offset` to its final status, counting the bytes and,
/// with `checksum`, hashing them.
async fn follow(
    c: &mut JobWorkerClient<Channel>,
    id: &str,
    offset: u64,
    checksum: bool,
) -> anyhow::Result<Followed> {
    let mut s = c
        .stream_job_output(pb::StreamJobOutputRequest {
            id: id.into(),
            offset,
            follow: true,
        })
        .await?
        .into_inner();
    let mut bytes = 0u64;
    let mut messages = 0u64;
    let mut hash = Hash::new();
    while let Some(msg) = s.message().await? {
        match msg.event {
            Some(Event::Data(d)) => {
                bytes += d.len() as u64;
                messages += 1;
                if checksum {
                    hash.update(&d);
                }
            }
            Some(Event::Status(status)) => {
                return Ok(Followed {
                    bytes,
                    messages,
                    checksum: hash.finish(),
                    status,
                });
            }
            None => {}
        }
    }
    bail!("the output stream of {id} ended without a status")
}

/// A fast, order-sensitive 64-bit checksum of a byte stream, independent of how the
/// stream is cut into messages (FNV-style over the bytes, word at a time).
struct Hash {
    h: u64,
    pending: Vec<u8>,
}

impl Hash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Hash {
        Hash {
            h: 0xcbf2_9ce4_8422_2325,
            pending: Vec::with_capacity(8),
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::PRIME).rotate_left(29);
    }

    fn update(&mut self, mut data: &[u8]) {
        if !self.pending.is_empty() {
            let take = (8 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending[..8].try_into().expect("8 bytes"));
            self.word(w);
            self.pending.clear();
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.pending.extend_from_slice(words.remainder());
    }

    fn finish(mut self) -> u64 {
        let tail = std::mem::take(&mut self.pending);
        for b in tail {
            self.word(u64::from(b) | 0x100);
        }
        self.h
    }
}

fn state(s: &pb::JobStatus) -> String {
    pb::JobState::try_from(s.state)
        .map(|st| st.as_str_name().to_string())
        .unwrap_or_else(|_| s.state.to_string())
}

fn check_exited_zero(s: &pb::JobStatus) -> anyhow::Result<()> {
    if s.state != pb::JobState::Exited as i32 || s.exit_code != Some(0) {
        bail!(
            "job {} ended {} (exit {:?}, error {:?})",
            s.id,
            state(s),
            s.exit_code,
            s.error
        );
    }
    Ok(())
}

fn job_runtime(s: &pb::JobStatus) -> Option<Duration> {
    let (a, b) = (s.started_at?, s.ended_at?);
    let ns = (b.seconds - a.seconds) as i128 * 1_000_000_000 + (b.nanos - a.nanos) as i128;
    Some(Duration::from_nanos(ns.max(0) as u64))
}

/// Runs a command to its end, returning how long it took; it must succeed.
async fn time_command(mut cmd: Command) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let t = Instant::now();
        let out = cmd.stderr(Stdio::piped()).output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!(
                "{:?} failed ({}): {}",
                cmd,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(d)
    })
    .await?
}

fn unshare_true() -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--net",
        "--uts",
        "--ipc",
        "true",
    ]);
    c
}

fn bwrap_true() -> Command {
    let mut c = Command::new("bwrap");
    c.args([
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "true",
    ]);
    c
}

// ---------------------------------------------------------------------------------------
// crun: `crun run` of /bin/true in a minimal busybox bundle, with the job's limits.
// ---------------------------------------------------------------------------------------

/// A bundle whose rootfs holds only a static busybox; its config is `crun spec`'s with
/// `/bin/true` as the process and the same limits the jobs get.
fn crun_bundle(dir: &Path) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("crun-bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox (busybox-static)")?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    let st = Command::new("crun")
        .arg("spec")
        .current_dir(&bundle)
        .status()?;
    if !st.success() {
        bail!("crun spec failed");
    }
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["/bin/true"]);
    config["linux"]["cgroupsPath"] = json!(format!("/jobworker-bench-crun-{}", std::process::id()));
    let l = job_limits();
    config["linux"]["resources"] = json!({
        "memory": { "limit": l.memory_bytes },
        "pids": { "limit": l.pids },
        "cpu": { "quota": u64::from(l.cpu_millis.unwrap_or(1000)) * 100, "period": 100_000 },
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}

/// crun 1.8 refuses a hybrid cgroup layout (v1 controllers plus a cgroup2 mount with
/// controllers). On such a host each run happens in a private mount namespace without
/// the cgroup2 mount, which this process cannot enter itself (no unsafe code here): a
/// helper (this binary, `--crun-helper`) is started once under `unshare --mount` and
/// times each `crun run` it is asked for over stdin/stdout.
struct Crun {
    helper: Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Crun {
    fn start(bundle: &Path, root: &Path) -> anyhow::Result<Crun> {
        let hybrid = Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--"]);
        cmd.arg(exe)
            .arg("--bench")
            .arg("--crun-helper")
            .arg(bundle)
            .arg(root)
            .arg(if hybrid { "hybrid" } else { "plain" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut helper = cmd.spawn()?;
        let to = helper.stdin.take().expect("piped");
        let from = BufReader::new(helper.stdout.take().expect("piped"));
        Ok(Crun { helper, to, from })
    }

    /// One timed `crun run`.
    fn run_once(&mut self) -> anyhow::Result<Duration> {
        writeln!(self.to, "run")?;
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        let line = line.trim();
        match line.strip_prefix("ok ") {
            Some(ns) => Ok(Duration::from_nanos(ns.parse()?)),
            None => bail!("crun: {line}"),
        }
    }
}

impl Drop for Crun {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = self.helper.wait();
    }
}

/// The helper's side (see [`Crun`]): runs in its own mount namespace.
fn crun_helper(args: &[String]) -> anyhow::Result<()> {
    let [bundle, root, layout] = args else {
        bail!("crun helper: bad arguments");
    };
    if layout == "hybrid" {
        let st = Command::new("umount")
            .args(["-l", "/sys/fs/cgroup/unified"])
            .status()?;
        if !st.success() {
            bail!("crun helper: cannot detach /sys/fs/cgroup/unified in its namespace");
        }
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    for line in stdin.lock().lines() {
        if line?.trim() != "run" {
            break;
        }
        n += 1;
        let id = format!("jobworker-bench-{}-{n}", std::process::id());
        let t = Instant::now();
        let o = Command::new("crun")
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let d = t.elapsed();
        if o.status.success() {
            writeln!(out, "ok {}", d.as_nanos())?;
        } else {
            let err = String::from_utf8_lossy(&o.stderr).replace('\n', " ");
            writeln!(out, "error {} {err}", o.status)?;
        }
        out.flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------

/// 1. Start latency over one warm connection, with the baselines interleaved.
async fn scenario_start_latency(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!("1. start latency: {} jobs of /bin/true ...", sizes.starts);
    let mut c = stack.client().await?;
    // Warm the connection and the executor's page cache.
    for _ in 0..5 {
        let id = start(&mut c, &["/bin/true"]).await?;
        follow(&mut c, &id, 0, false).await?;
    }
    let bundle = crun_bundle(&stack.dir)?;
    let mut crun = Crun::start(&bundle, &stack.dir.join("crun-root"))?;
    crun.run_once()?;
    let (mut running, mut final_, mut un, mut bw, mut cr) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..sizes.starts {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        let started = t.elapsed();
        let f = follow(&mut c, &id, 0, false).await?;
        let ended = t.elapsed();
        check_exited_zero(&f.status)?;
        running.push(ms(started));
        final_.push(ms(ended));
        un.push(ms(time_command(unshare_true()).await?));
        bw.push(ms(time_command(bwrap_true()).await?));
        // Blocks this thread for one run: nothing else is in flight meanwhile.
        cr.push(ms(crun.run_once()?));
    }
    drop(crun);
    let (running, final_) = (Samples::new(running), Samples::new(final_));
    let (un, bw, cr) = (Samples::new(un), Samples::new(bw), Samples::new(cr));
    let s = "1 start latency";
    let f = |x: &Samples| format!("{:.2} / {:.2} ms", x.p50(), x.p99());
    report.row(s, "StartJob -> running, p50/p99", f(&running), "", "");
    report.row(
        s,
        "StartJob -> final status, p50/p99",
        f(&final_),
        &format!("bwrap {}", f(&bw)),
        &ratio(final_.p50(), bw.p50()),
    );
    report.row(
        s,
        "",
        String::new(),
        &format!("crun {}", f(&cr)),
        &ratio(final_.p50(), cr.p50()),
    );
    report.row(
        s,
        "",
        String::new(),
        &format!("unshare {}", f(&un)),
        &ratio(final_.p50(), un.p50()),
    );
    report.json.insert(
        "1_start_latency".into(),
        json!({
            "jobs": sizes.starts,
            "start_to_running": running.json(),
            "start_to_final_status": final_.json(),
            "baseline_unshare": un.json(),
            "baseline_bwrap": bw.json(),
            "baseline_crun": cr.json(),
            "final_vs_bwrap_p50": round3(final_.p50() / bw.p50()),
            "final_vs_crun_p50": round3(final_.p50() / cr.p50()),
            "targets": {
                "final_within_1_5x_bwrap": final_.p50() <= 1.5 * bw.p50(),
                "final_below_crun": final_.p50() < cr.p50(),
            },
        }),
    );
    Ok(())
}

/// 2. Sustained starts by concurrent clients.
async fn scenario_sustained(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "2. sustained starts: {} clients for {:?} ...",
        sizes.clients, sizes.sustained
    );
    let mut clients = Vec::new();
    for _ in 0..sizes.clients {
        clients.push(stack.client().await?);
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (cpu0, machine0, jobs0) = (stack.cpu(), machine_cpu(), stack.jobs_cpu());
    let t = Instant::now();
    let deadline = t + sizes.sustained;
    let mut tasks = Vec::new();
    for mut c in clients {
        let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let s = Instant::now();
                match start(&mut c, &["/bin/true"]).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        latencies.push(ms(s.elapsed()));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = t.elapsed().as_secs_f64();
    let machine1 = machine_cpu();
    let cpu = stack.cpu().since(&cpu0);
    let (exec_cpu, api_cpu, client_cpu) = (cpu.exec, cpu.api, cpu.client);
    // The last jobs may still be ending; their share is small against thousands.
    let jobs_cpu = match (jobs0, stack.jobs_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let busy = (machine1.0 - machine0.0) / (machine1.1 - machine0.1);
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let rate = ok as f64 / elapsed;
    let lat = Samples::new(latencies);
    if let Some(e) = first_error.lock().unwrap().as_ref() {
        eprintln!("bench: sustained starts: first error: {e}");
    }
    let s = "2 sustained starts";
    report.row(
        s,
        &format!("jobs/s, {} clients, {:.0} s", sizes.clients, elapsed),
        format!("{rate:.1}"),
        "",
        "",
    );
    report.row(s, "errors", errors.to_string(), "must be 0", "");
    report.row(
        s,
        "StartJob p50/p99 under load",
        format!("{:.1} / {:.1} ms", lat.p50(), lat.p99()),
        "",
        "",
    );
    report.row(
        s,
        "CPU ms per job: executor, API, client, job",
        format!(
            "{:.2}, {:.2}, {:.2}, {:.2}",
            exec_cpu * 1000.0 / ok as f64,
            api_cpu * 1000.0 / ok as f64,
            client_cpu * 1000.0 / ok as f64,
            jobs_cpu * 1000.0 / ok as f64
        ),
        &format!("machine busy {:.0}%", busy * 100.0),
        "",
    );
    report.json.insert(
        "2_sustained_starts".into(),
        json!({
            "clients": sizes.clients,
            "seconds": round3(elapsed),
            "jobs": ok,
            "jobs_per_second": round3(rate),
            "errors": errors,
            "start_latency": lat.json(),
            "machine_cpu_busy_fraction": round3(busy),
            "executor_cpu_seconds_per_second": round3(exec_cpu / elapsed),
            "api_cpu_seconds_per_second": round3(api_cpu / elapsed),
            "cpu_ms_per_job": {
                "executor": round3(exec_cpu * 1000.0 / ok as f64),
                "api": round3(api_cpu * 1000.0 / ok as f64),
                "client": round3(client_cpu * 1000.0 / ok as f64),
                "job_init_and_command": round3(jobs_cpu * 1000.0 / ok as f64),
            },
        }),
    );
    Ok(())
}

/// 3. One follower streaming a large output from offset 0.
async fn scenario_throughput(
    stack: &Stack,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = sizes.throughput_bytes;
    println!(
        "3. output throughput: {} MiB through one follower ...",
        n / MIB
    );
    let mut c = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let cpu0 = stack.cpu();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/zero"]).await?;
    let f = follow(&mut c, &id, 0, false).await?;
    let d = t.elapsed();
    let cpu = stack.cpu().since(&cpu0);
    check_exited_zero(&f.status)?;
    if f.bytes != n {
        bail!("the follower received {} bytes, not {n}", f.bytes);
    }
    let (exec_peak, api_peak) = stack.peaks();
    let job_cpu = f.status.cpu_usec.unwrap_or(0) as f64 / 1e6;
    let gib = n as f64 / GIB as f64;
    let pipe = time_command({
        let mut c = Command::new("sh");
        c.args(["-c", &format!("head -c {n} /dev/zero | cat >/dev/null")]);
        c
    })
    .await?;
    let rate = n as f64 / d.as_secs_f64() / MB;
    let pipe_rate = n as f64 / pipe.as_secs_f64() / MB;
    let s = "3 output throughput";
    report.row(
        s,
        &format!("{} MiB, 1 follower over mTLS, MB/s", n / MIB),
        format!("{rate:.0}"),
        &format!("pipe {pipe_rate:.0} MB/s"),
        &ratio(rate, pipe_rate),
    );
    report.row(
        s,
        "mean data message",
        format!(
            "{:.1} KiB",
            f.bytes as f64 / f.messages.max(1) as f64 / 1024.0
        ),
        "",
        "",
    );
    report.row(
        s,
        "CPU s/GiB: executor, API, client, job",
        format!(
            "{:.2}, {:.2}, {:.2}, {:.2}",
            cpu.exec / gib,
            cpu.api / gib,
            cpu.client / gib,
            job_cpu / gib
        ),
        "",
        "",
    );
    report.row(
        s,
        "peak RSS executor / API",
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "",
        "",
    );
    report.json.insert(
        "3_output_throughput".into(),
        json!({
            "bytes": n,
            "seconds": round3(d.as_secs_f64()),
            "mb_per_s": round3(rate),
            "baseline_pipe_mb_per_s": round3(pipe_rate),
            "ratio_to_pipe": round3(rate / pipe_rate),
            "job_runtime_s": job_runtime(&f.status).map(|d| round3(d.as_secs_f64())),
            "data_messages": f.messages,
            "cpu_seconds_per_gib": {
                "executor": round3(cpu.exec / gib),
                "api": round3(cpu.api / gib),
                "client": round3(cpu.client / gib),
                "job": round3(job_cpu / gib),
            },
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
            "target_500_mb_per_s": rate >= 500.0,
        }),
    );
    Ok(())
}

/// 4. Many followers of one job.
async fn scenario_fanout(stack: &Stack, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let (n, followers) = (sizes.fanout_bytes, sizes.fanout_followers);
    println!(
        "4. fan-out: {followers} followers of one job writing {} MiB ...",
        n / MIB
    );
    let mut clients = Vec::new();
    for _ in 0..followers {
        clients.push(stack.client().await?);
    }
    let mut c = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/urandom"]).await?;
    let mut tasks = Vec::new();
    for mut fc in clients {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let f = follow(&mut fc, &id, 0, true).await;
            (f, t.elapsed())
        }));
    }
    let mut sums = Vec::new();
    let mut times = Vec::new();
    for task in tasks {
        let (f, d) = task.await?;
        let f = f?;
        check_exited_zero(&f.status)?;
        if f.bytes != n {
            bail!("a follower received {} bytes, not {n}", f.bytes);
        }
        sums.push(f.checksum);
        times.push(d);
    }
    let wall = times.iter().max().copied().unwrap_or_default();
    let identical = sums.windows(2).all(|w| w[0] == w[1]);
    if !identical {
        bail!("followers received different bytes");
    }
    let (exec_peak, api_peak) = stack.peaks();
    let aggregate = (n * followers as u64) as f64 / wall.as_secs_f64() / MB;
    let s = "4 fan-out";
    report.row(
        s,
        &format!(
            "{followers} followers x {} MiB: identical, aggregate MB/s",
            n / MIB
        ),
        format!("{}, {aggregate:.0}", if identical { "yes" } else { "NO" }),
        "",
        "",
    );
    report.row(
        s,
        "peak RSS executor / API",
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "",
        "",
    );
    report.json.insert(
        "4_fanout".into(),
        json!({
            "followers": followers,
            "bytes_each": n,
            "identical": identical,
            "checksum": format!("{:016x}", sums.first().copied().unwrap_or(0)),
            "seconds": round3(wall.as_secs_f64()),
            "aggregate_mb_per_s": round3(aggregate),
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
        }),
    );
    Ok(())
}

/// 5. Many sleeping jobs at once.
async fn scenario_scale(stack: &Stack, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let jobs = sizes.scale_jobs;
    println!("5. scale: {jobs} sleeping jobs ...");
    let mut c = stack.client().await?;
    // StartJob of a short job with nothing else running.
    // unshare runs alongside, to tell the kernel's share of any slow-down.
    let (mut at0, mut un0) = (Vec::new(), Vec::new());
    for _ in 0..sizes.scale_probes {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        at0.push(ms(t.elapsed()));
        follow(&mut c, &id, 0, false).await?;
        un0.push(ms(time_command(unshare_true()).await?));
    }
    let (exec0, api0) = stack.rss_now();
    let mut ids = Vec::new();
    let t = Instant::now();
    for _ in 0..jobs {
        ids.push(start(&mut c, &["sleep", "3600"]).await?);
    }
    let fill = t.elapsed();
    let (exec1, api1) = stack.rss_now();
    let (exec_fds, api_fds) = (open_fds(stack.exec_pid), open_fds(stack.api_pid));
    let (mut at_n, mut un_n) = (Vec::new(), Vec::new());
    for _ in 0..sizes.scale_probes {
        let t = Instant::now();
        let id = start(&mut c, &["/bin/true"]).await?;
        at_n.push(ms(t.elapsed()));
        follow(&mut c, &id, 0, false).await?;
        un_n.push(ms(time_command(unshare_true()).await?));
    }
    let mut list_page = Vec::new();
    let mut list_all = Vec::new();
    let mut listed = 0;
    for _ in 0..20 {
        let t = Instant::now();
        c.list_jobs(pb::ListJobsRequest {
            all: false,
            page_size: 0,
            page_token: String::new(),
        })
        .await?;
        list_page.push(ms(t.elapsed()));
        let t = Instant::now();
        let mut token = String::new();
        let mut count = 0;
        loop {
            let r = c
                .list_jobs(pb::ListJobsRequest {
                    all: false,
                    page_size: 500,
                    page_token: token,
                })
                .await?
                .into_inner();
            count += r.jobs.len();
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        list_all.push(ms(t.elapsed()));
        listed = count;
    }
    let mut status = Vec::new();
    for i in 0..sizes.scale_probes {
        let id = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        let s = c
            .get_job_status(pb::GetJobStatusRequest { id: id.clone() })
            .await?
            .into_inner();
        status.push(ms(t.elapsed()));
        let s = s.status.context("no status")?;
        if s.state != pb::JobState::Running as i32 {
            bail!("sleeping job {id} is {}", state(&s));
        }
    }
    // Stop them all, a few at a time.
    let stop_t = Instant::now();
    let mut pending = ids.clone();
    while !pending.is_empty() {
        let batch: Vec<String> = pending.drain(..pending.len().min(32)).collect();
        let mut tasks = Vec::new();
        for id in batch {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.stop_job(pb::StopJobRequest { id }).await
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let stop = stop_t.elapsed();
    let (at0, at_n) = (Samples::new(at0), Samples::new(at_n));
    let (un0, un_n) = (Samples::new(un0), Samples::new(un_n));
    let (list_page, list_all, status) = (
        Samples::new(list_page),
        Samples::new(list_all),
        Samples::new(status),
    );
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / jobs as f64 / 1024.0;
    let s = "5 scale";
    report.row(
        s,
        &format!("RSS per running job executor / API ({jobs} jobs)"),
        format!("{:.1} / {:.1} KiB", per(exec1, exec0), per(api1, api0)),
        "",
        "",
    );
    report.row(
        s,
        &format!("open fds at {jobs} running: executor / API"),
        format!("{exec_fds} / {api_fds}"),
        "soft RLIMIT_NOFILE is 1024 by default",
        "",
    );
    report.row(
        s,
        &format!("StartJob p50 at {jobs} running"),
        format!("{:.2} ms", at_n.p50()),
        &format!("at 0: {:.2} ms", at0.p50()),
        &ratio(at_n.p50(), at0.p50()),
    );
    report.row(
        s,
        &format!("unshare ... true p50 at {jobs} running"),
        format!("{:.2} ms", un_n.p50()),
        &format!("at 0: {:.2} ms", un0.p50()),
        &ratio(un_n.p50(), un0.p50()),
    );
    report.row(
        s,
        &format!("ListJobs p50 at {jobs}: page of 100; all {listed}"),
        format!("{:.2}; {:.2} ms", list_page.p50(), list_all.p50()),
        "",
        "",
    );
    report.row(
        s,
        &format!("GetJobStatus p50 at {jobs}"),
        format!("{:.2} ms", status.p50()),
        "",
        "",
    );
    report.json.insert(
        "5_scale".into(),
        json!({
            "jobs": jobs,
            "seconds_to_start_all": round3(fill.as_secs_f64()),
            "seconds_to_stop_all": round3(stop.as_secs_f64()),
            "rss_executor_before_bytes": exec0,
            "rss_executor_at_n_bytes": exec1,
            "rss_api_before_bytes": api0,
            "rss_api_at_n_bytes": api1,
            "rss_per_job_executor_kib": round3(per(exec1, exec0)),
            "rss_per_job_api_kib": round3(per(api1, api0)),
            "open_fds_executor_at_n": exec_fds,
            "open_fds_api_at_n": api_fds,
            "start_at_0": at0.json(),
            "start_at_n": at_n.json(),
            "unshare_at_0": un0.json(),
            "unshare_at_n": un_n.json(),
            "list_page_100": list_page.json(),
            "list_all": list_all.json(),
            "jobs_listed": listed,
            "get_status": status.json(),
        }),
    );
    Ok(())
}

/// 6. A follower that stops reading while its job writes a lot.
async fn scenario_stalled(stack: &Stack, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.stalled_bytes;
    println!(
        "6. bounded memory: a stalled follower while its job writes {} MiB ...",
        n / MIB
    );
    let mut c = stack.client().await?;
    let mut stalled_client = stack.client().await?;
    stack.reset_peaks();
    let count = n.to_string();
    let t = Instant::now();
    let id = start(&mut c, &["head", "-c", &count, "/dev/zero"]).await?;
    // The stalled follower reads one message, then nothing more.
    let mut stalled = stalled_client
        .stream_job_output(pb::StreamJobOutputRequest {
            id: id.clone(),
            offset: 0,
            follow: true,
        })
        .await?
        .into_inner();
    let first = stalled.message().await?.context("no first message")?;
    let first_len = match first.event {
        Some(Event::Data(d)) => d.len(),
        _ => 0,
    };
    // The job's end, learnt from a second follower that asks for the last byte only.
    let end = follow(&mut c, &id, n - 1, false).await?;
    let d = t.elapsed();
    check_exited_zero(&end.status)?;
    let runtime = job_runtime(&end.status).unwrap_or(d);
    let (exec_peak, api_peak) = stack.peaks();
    drop(stalled);
    let s = "6 bounded memory";
    let ok = exec_peak < 64 * MIB && api_peak < 64 * MIB;
    report.row(
        s,
        &format!("stalled follower, {} MiB job: peak RSS exec / API", n / MIB),
        format!("{} / {} MiB", mib(exec_peak), mib(api_peak)),
        "< 64 MiB",
        if ok { "ok" } else { "OVER" },
    );
    report.row(
        s,
        "job ran to its end while stalled; runtime",
        format!("{:.2} s", runtime.as_secs_f64()),
        "",
        "",
    );
    report.json.insert(
        "6_bounded_memory".into(),
        json!({
            "bytes": n,
            "stalled_follower_received_first_message_bytes": first_len,
            "job_ended": true,
            "job_output_bytes": end.status.output_bytes,
            "job_runtime_s": round3(runtime.as_secs_f64()),
            "peak_rss_executor_bytes": exec_peak,
            "peak_rss_api_bytes": api_peak,
            "target_under_64_mib": ok,
        }),
    );
    Ok(())
}

/// 7. `jobctl run -- true` as a whole process.
async fn scenario_cli(
    stack: &Stack,
    bins: &Binaries,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "7. command line: {} x jobctl run -- true ...",
        sizes.cli_runs
    );
    let jobctl = |_: ()| {
        let mut c = Command::new(&bins.jobctl);
        c.args(["run", "--", "true"])
            .env(
                "JOBWORKER_SERVER",
                format!("localhost:{}", stack.addr.port()),
            )
            .env("JOBWORKER_CA", stack.pki.join("ca.pem"))
            .env("JOBWORKER_CERT", stack.pki.join("alice.pem"))
            .env("JOBWORKER_KEY", stack.pki.join("alice.key"));
        c
    };
    time_command(jobctl(())).await?;
    let (mut cli, mut un) = (vec![], vec![]);
    for _ in 0..sizes.cli_runs {
        cli.push(ms(time_command(jobctl(())).await?));
        un.push(ms(time_command(unshare_true()).await?));
    }
    let (cli, un) = (Samples::new(cli), Samples::new(un));
    let s = "7 command line";
    report.row(
        s,
        "jobctl run -- true, p50/p99",
        format!("{:.2} / {:.2} ms", cli.p50(), cli.p99()),
        &format!("unshare {:.2} / {:.2} ms", un.p50(), un.p99()),
        &ratio(cli.p50(), un.p50()),
    );
    report.json.insert(
        "7_command_line".into(),
        json!({
            "runs": sizes.cli_runs,
            "jobctl_run_true": cli.json(),
            "baseline_unshare": un.json(),
            "ratio_p50": round3(cli.p50() / un.p50()),
        }),
    );
    Ok(())
}
