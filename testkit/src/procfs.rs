//! What `/proc` says about a process: counters (descriptors, threads, memory, CPU), its
//! sockets, and process trees. The counters panic for a process that is gone: a daemon
//! that died under a test is a failure, not a count of zero.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// A `Name: value kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in kB.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of a process in bytes: (current, peak since the last
/// [`reset_peak_rss`]).
pub fn rss(pid: u32) -> (u64, u64) {
    (
        status_kb(pid, "VmRSS") * 1024,
        status_kb(pid, "VmHWM") * 1024,
    )
}

/// Resets the peak-RSS mark of a process to its current RSS (`/proc/PID/clear_refs`).
pub fn reset_peak_rss(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("cannot reset the peak RSS of {pid}: {e}");
    }
}

/// Fields of `/proc/PID/stat` after the command name (which may contain spaces): the
/// state is the first (field 3 of the stat line).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time a process has used (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(pid).unwrap_or_else(|| panic!("/proc/{pid}/stat: gone"));
    // utime and stime are fields 14 and 15 of the stat line, in clock ticks (100/s).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The parent of a process, if it still exists.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The PID namespace of a process, e.g. `pid:[4026532301]` (empty if it is gone).
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

/// State letter and start time of a process.
fn state_and_start(pid: u32) -> Option<(char, u64)> {
    let f = stat_fields(pid)?;
    let state = f.first()?.chars().next()?;
    // starttime is field 22 of the stat line: index 19 counting from the state.
    let start = f.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether a state letter is that of a live process: not a zombie (`Z`, waiting to be
/// reaped) nor dead (`X`, being released).
fn alive_state(state: char) -> bool {
    !matches!(state, 'Z' | 'X' | 'x')
}

/// Every pid in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
}

/// The live processes of the job whose PID namespace is `ns`. Take this snapshot while
/// the job runs: once a namespace is gone its inode number can be reused by another job.
/// Zombies are dead (they only wait for the host's PID 1 to reap them) and not listed.
pub fn job_processes(ns: &str) -> Vec<Proc> {
    pids()
        .filter_map(|pid| match state_and_start(pid) {
            Some((state, start)) if alive_state(state) && pid_ns(pid) == ns => {
                Some(Proc { pid, start })
            }
            _ => None,
        })
        .collect()
}

/// Those of `procs` that are still alive (same pid, same start time, not a zombie).
pub fn still_alive(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .copied()
        .filter(|p| {
            matches!(state_and_start(p.pid), Some((state, start)) if alive_state(state) && start == p.start)
        })
        .collect()
}

/// The executor's init templates: its children running `jobworker-init --job-init` in
/// its own PID namespace (the job inits cloned from one are in their own).
pub fn init_templates(executor: u32) -> Vec<u32> {
    let ns = pid_ns(executor);
    pids()
        .filter(|&pid| {
            parent_pid(pid) == Some(executor)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"jobworker-init\0--job-init\0"))
                && pid_ns(pid) == ns
        })
        .collect()
}

/// Inodes of the sockets a process holds (its `socket:[N]` descriptors).
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Inodes of the Unix sockets bound to `path` (the listener and every connection it
/// accepted), from `/proc/net/unix`.
pub fn unix_inodes_bound_to(path: &Path) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
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

/// TCP connections (any state but LISTEN) that process `pid` holds on local `port`: its
/// socket descriptors matched against `/proc/net/tcp` and `tcp6`.
pub fn tcp_connections(pid: u32, port: u16) -> usize {
    let held = socket_inodes(pid);
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let listening = f.get(3) == Some(&"0A");
                    (f.len() > 9 && f[1].ends_with(&port) && !listening)
                        .then(|| f[9].parse::<u64>().ok())?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| held.contains(inode))
        .count()
}

/// The open-file limit of process `pid`, `(soft, hard)`, from `/proc/PID/limits`.
pub fn fd_limit(pid: u32) -> Option<(u64, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.strip_prefix("Max open files")?.split_whitespace();
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
}

/// Sets process `pid`'s open-file limit, soft and hard, to `n` (`prlimit` from
/// util-linux, as root; raising a hard limit needs `CAP_SYS_RESOURCE`). Whether it did.
pub fn set_fd_limit(pid: u32, n: u64) -> bool {
    Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={n}:{n}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Raises this process's soft limit on open files to its hard limit (for tests that
/// hold a thousand connections at once; `prlimit` from util-linux, as root). Returns
/// the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let (soft, hard) = fd_limit(std::process::id()).expect("Max open files in /proc/self/limits");
    if soft < hard {
        set_fd_limit(std::process::id(), hard);
        return hard;
    }
    soft
}
