//! The machine: its description and load (what `/proc` says of a process is the test
//! kit's, `jobworker_testkit::procfs`).

use std::path::PathBuf;

use serde_json::{Value, json};

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn machine() -> Value {
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

pub fn machine_line(m: &Value) -> String {
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

/// Busy and total CPU time of the whole machine, in seconds (from /proc/stat).
pub fn machine_cpu() -> (f64, f64) {
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
