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
//! Each scenario starts after a `sync`, so the writeback of earlier scenarios' output
//! files is not part of its figures.
//!
//! Environment: `BENCH_QUICK=1` runs smaller sizes (a smoke test of the harness, not
//! figures to report); `BENCH_ONLY=1,3` runs only the listed scenarios; `BENCH_HOLD=1`
//! keeps the started stack up until a line arrives on stdin (to profile it with other
//! tools), then runs the scenarios; `BENCH_KEEP=1` keeps the stack's directory and logs.
//!
//! Modules: [`machine`] describes the machine; [`stack`] starts the executor and the API
//! server through the test kit (`jobworker-testkit`, which also reads `/proc` for the
//! figures) and measures them; [`client`] makes the calls, follows output
//! and runs the timed baseline commands; [`crun`] is the crun baseline; [`figures`]
//! holds percentiles, the table and the JSON; [`scenarios`] has one function per
//! scenario.

mod client;
mod crun;
mod figures;
mod machine;
mod scenarios;
mod ssh;
mod stack;

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use jobworker_testkit::is_root;
use jobworker_testkit::procfs::rss;

use crate::{crun::*, figures::*, machine::*, scenarios::*, stack::*};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Throughputs are in MB/s of 10^6 bytes.
pub const MB: f64 = 1e6;

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
pub struct Sizes {
    pub starts: usize,
    pub sustained: Duration,
    pub clients: usize,
    pub throughput_bytes: u64,
    pub fanout_followers: usize,
    pub fanout_bytes: u64,
    pub scale_jobs: usize,
    pub scale_probes: usize,
    pub stalled_bytes: u64,
    pub cli_runs: usize,
    pub keystrokes: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
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
                keystrokes: 20,
            }
        } else {
            Sizes {
                starts: 300,
                sustained: Duration::from_secs(10),
                clients: 4,
                throughput_bytes: GIB,
                fanout_followers: 100,
                fanout_bytes: 100 * MIB,
                scale_jobs: 10_000,
                scale_probes: 100,
                stalled_bytes: GIB,
                cli_runs: 100,
                keystrokes: 200,
            }
        }
    }
}

/// Writes back every dirty page of the machine (`sync`) before a scenario.
fn settle() {
    match std::process::Command::new("sync").status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("sync: {s}"),
        Err(e) => eprintln!("sync: {e}"),
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
    let mut sizes = Sizes::new(quick);
    // Scenario 5's count, for a machine that cannot hold the default.
    if let Some(n) = std::env::var("BENCH_SCALE_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        sizes.scale_jobs = n;
    }
    for tool in ["unshare", "bwrap", "crun", "busybox"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: `make bench` installs it (bubblewrap, crun, busybox-static)");
        }
    }
    let machine = machine();
    println!("{}", machine_line(&machine));

    let stack = Stack::start(&sizes)?;
    let template_rss = stack.template_pid.map(|pid| mib(rss(pid).0));
    let template = match (stack.template_pid, template_rss) {
        (Some(pid), Some(r)) => format!("init template pid {pid}, RSS {r} MiB"),
        _ => "no init template found".into(),
    };
    println!(
        "stack: executor pid {} (cgroup {}; {template}), API server pid {} on {}",
        stack.exec_pid, stack.cgroup_backend, stack.api_pid, stack.addr
    );
    if std::env::var_os("BENCH_HOLD").is_some() {
        // A profiling aid: the stack stays up, for other tools, until stdin has a line.
        let vars: Vec<String> = stack
            .pki()
            .jobctl_env("alice", &format!("localhost:{}", stack.addr.port()))
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
            .collect();
        println!("holding: {}", vars.join(" "));
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    // The baseline users would otherwise pick: a private sshd on loopback.
    let ssh_dir = std::env::temp_dir().join(format!("jobworker-bench-ssh-{}", std::process::id()));
    let sshd = ssh::Sshd::start(&ssh_dir)?;
    // One thread, as jobctl has: the client's own cost stays what a real client's is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::default();
    let result = rt.block_on(async {
        // Each scenario starts with no dirty page cache left by the previous one (the
        // output files of 3, 4 and 6 are GiBs), so its figures do not include that
        // writeback.
        let want = |n: u32| {
            let w = want(n);
            if w {
                settle();
            }
            w
        };
        if want(1) {
            scenario_start_latency(&stack, &sizes, &mut report).await?;
        }
        if want(2) {
            scenario_sustained(&stack, &sizes, &mut report).await?;
        }
        if want(3) {
            scenario_throughput(&stack, &sizes, &mut report, sshd.as_ref()).await?;
        }
        if want(4) {
            scenario_fanout(&stack, &sizes, &mut report).await?;
        }
        if want(6) {
            scenario_stalled(&stack, &sizes, &mut report).await?;
        }
        if want(7) {
            scenario_cli(&stack, &sizes, &mut report, sshd.as_ref()).await?;
        }
        if want(8) {
            scenario_keystroke(&stack, &sizes, &mut report, sshd.as_ref()).await?;
        }
        if want(5) {
            scenario_scale(&stack, &sizes, &mut report).await?;
        }
        anyhow::Ok(())
    });
    drop(rt);
    drop(sshd);
    let _ = std::fs::remove_dir_all(&ssh_dir);
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
        "init_template_rss_mib": template_rss,
        "scenarios": report.json,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("figures written to {}", out.canonicalize()?.display());
    Ok(())
}
