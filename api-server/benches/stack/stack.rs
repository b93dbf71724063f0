//! The stack under test: the executor and the API server, started by the test kit with
//! the settings of the scenarios, and what is measured of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jobworker_proto::v1 as pb;
use jobworker_proto::v1::job_worker_client::JobWorkerClient;
use jobworker_testkit::procfs::{cpu_seconds, reset_peak_rss, rss};
use jobworker_testkit::{ApiOptions, ExecutorOptions, Pki, Scratch, Stop, procfs};
use tonic::transport::Channel;

use crate::{GIB, MIB};

/// Executor settings for the scenarios: room for 1 GiB of output per job, and (see
/// [`Stack::start`]) for scenario 5's sleeping jobs plus probes.
pub const MAX_OUTPUT_BYTES: u64 = GIB + GIB / 4;
/// Open files the executor holds per running job (pidfd, report pipe, stdout and stderr
/// pipes, the stdout, stderr and index files), and besides its jobs.
const FDS_PER_JOB: u64 = 7;
const FDS_BESIDES_JOBS: u64 = 8192;
/// Limits every benchmark job asks for: a cgroup with real limits.
pub fn job_limits() -> pb::Limits {
    pb::Limits {
        cpu_millis: Some(1000),
        memory_bytes: Some(256 * MIB),
        pids: Some(64),
        io: None,
        tmp_bytes: None,
        timeout_ms: None,
    }
}

/// The executor and the API server, with their PKI, state and cgroup parent; all of it
/// is stopped (SIGTERM, as a service manager does) and removed on drop, unless
/// `BENCH_KEEP` is set.
pub struct Stack {
    inner: jobworker_testkit::Stack,
    /// A directory of the benchmark's own (the crun baseline's bundle).
    pub dir: Scratch,
    pub exec_pid: u32,
    /// The executor's init template (its child that clones every job init); its CPU
    /// time counts as the executor's.
    pub template_pid: Option<u32>,
    pub api_pid: u32,
    pub addr: SocketAddr,
    pub cgroup_backend: String,
}

impl Stack {
    /// Every client of the benchmark is one owner (alice), who may run as many jobs as
    /// the executor: scenario 5's sleeping jobs plus 100. What a host must allow for
    /// that many (see docs/benchmarks.md, "Scale"): open files for the executor
    /// ([`FDS_PER_JOB`] each, raised here as `LimitNOFILE=` would in its unit), and
    /// processes (two per sleeping job: its init and `sleep`) within the total of
    /// all jobs and the kernel's `pid_max`.
    pub fn start(sizes: &crate::Sizes) -> anyhow::Result<Stack> {
        // The state directory (the jobs' output files) in the system's temporary
        // directory, as ever: the file system under the figures stays the same.
        let tmp = std::env::temp_dir();
        let running = sizes.scale_jobs as u64 + 100;
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
            .trim()
            .parse()?;
        // Each job asks for 64 pids: the owner's quota is the executor's; all jobs
        // together may have the host's processes but a reserve for the host itself.
        let total_pids = pid_max.saturating_sub(2048).max(1024);
        let big = (u64::MAX / 4).to_string();
        let mut exec = ExecutorOptions::behind_api().flags(&[
            "--max-running-jobs",
            &running.to_string(),
            "--quota-running-jobs",
            &running.to_string(),
            "--quota-memory-bytes",
            &big,
            "--quota-cpu-millis",
            &big,
            "--quota-pids",
            &big,
            "--total-pids",
            &total_pids.to_string(),
            "--max-output-bytes",
            &MAX_OUTPUT_BYTES.to_string(),
            "--max-finished-jobs",
            "1000",
            "--stop-grace-ms",
            "2000",
        ]);
        // The production default: the figures include no debug logging.
        exec.log_level = "info".into();
        exec.env = worker_override("BENCH_EXEC_WORKERS");
        exec.dir_in = Some(tmp.clone());
        exec.cgroup_prefix = "jobworker-bench".into();
        // Every client of the benchmark is alice, on one address: her caps are the
        // server's.
        let mut api = ApiOptions::default().toml(
            "[limits]\nmax_connections = 512\nmax_connections_per_identity = 512\n\
             max_handshakes_per_source = 128\nmax_calls_per_identity = 256\n\
             max_streams = 1024\nmax_streams_per_identity = 1024\n\
             max_streams_per_connection = 128\n",
        );
        api.env = api_unit_environment()?;
        api.env.extend(worker_override("BENCH_API_WORKERS"));
        api.dir_in = Some(tmp.clone());
        api.on_drop = Stop::Term;
        let dir = Scratch::new_in(&tmp, "jobworker-bench");
        let inner = jobworker_testkit::Stack::start("bench", Pki::dev_certs(), exec, api);
        if std::env::var_os("BENCH_KEEP").is_some() {
            inner.keep();
            dir.keep();
        }
        let exec_pid = inner.exec.pid();
        let nofile = running * FDS_PER_JOB + FDS_BESIDES_JOBS;
        // Raising a hard limit needs CAP_SYS_RESOURCE: without it (a container may not
        // have it), the executor keeps the limit it raised itself to the hard one it
        // inherited, and scenario 5 reports how many jobs that held.
        if !procfs::set_fd_limit(exec_pid, nofile) {
            println!(
                "note: could not raise the executor's open-file limit to {nofile}; it keeps \
                 its own"
            );
        }
        Ok(Stack {
            exec_pid,
            template_pid: procfs::init_templates(exec_pid).first().copied(),
            api_pid: inner.api.pid(),
            addr: inner.api.addr,
            cgroup_backend: inner.exec.backend.clone(),
            dir,
            inner,
        })
    }

    /// The PKI (a development PKI from `jobworker-dev-certs`).
    pub fn pki(&self) -> &Pki {
        &self.inner.pki
    }

    /// A new mTLS connection as `alice`, made the way jobctl makes it.
    pub async fn client(&self) -> anyhow::Result<JobWorkerClient<Channel>> {
        let config = self.pki().client_config("alice");
        let (channel, _) = jobworker_testkit::grpc::channel(self.addr, config).await?;
        Ok(JobWorkerClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }

    pub fn reset_peaks(&self) {
        reset_peak_rss(self.exec_pid);
        reset_peak_rss(self.api_pid);
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
        let read = |path: PathBuf| std::fs::read_to_string(path).ok();
        self.inner
            .exec
            .cgroup_parent()
            .dirs()
            .into_iter()
            .find_map(|dir| {
                // cgroup v2: cpu.stat's usage_usec; v1: cpuacct.usage, in nanoseconds.
                let usec = read(dir.join("cpu.stat")).and_then(|text| {
                    let v = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
                    v.trim().parse::<f64>().ok()
                });
                let nsec = || read(dir.join("cpuacct.usage"))?.trim().parse::<f64>().ok();
                usec.map(|u| u / 1e6).or_else(|| Some(nsec()? / 1e9))
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
fn api_unit_environment() -> anyhow::Result<Vec<(String, Option<String>)>> {
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
                vars.push((k.to_string(), Some(v.to_string())));
            }
            _ => anyhow::bail!("{}: cannot read {line:?}", unit.display()),
        }
    }
    Ok(vars)
}

/// An experiment knob: `BENCH_EXEC_WORKERS=N` / `BENCH_API_WORKERS=N` start that
/// daemon with N tokio worker threads (`TOKIO_WORKER_THREADS`) instead of its default.
fn worker_override(var: &str) -> Vec<(String, Option<String>)> {
    vec![("TOKIO_WORKER_THREADS".into(), std::env::var(var).ok())]
}

/// Where the jobctl binary is (next to this benchmark in `target/release`).
pub fn jobctl() -> PathBuf {
    jobworker_testkit::bins::path("jobctl")
}
