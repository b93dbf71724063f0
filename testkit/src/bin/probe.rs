//! `jobworker-probe`: a small program the executor's root tests run *as a job*, to check
//! from inside what a job sees and to behave in exact, controllable ways. Not installed.
//!
//! Subcommands:
//! - `pattern BYTES [GATE]`: writes BYTES bytes of the repeating pattern 0,1,...,255 to
//!   stdout. With GATE (a FIFO), it first waits for a line on it, writes the first half,
//!   waits for a second line, then writes the rest.
//! - `streams BYTES [GATE]`: writes BYTES bytes of `noise(1)` to stdout and of
//!   `noise(2)` to stderr, in alternating chunks of varying sizes; with GATE, it waits
//!   for a line on it before starting and again halfway.
//! - `inspect`: prints, as JSON, what the job sees of its isolation (namespaces, network,
//!   host name, credentials, capabilities, seccomp, mounts, cgroup files).
//! - `spin MILLIS [GATE]`: burns CPU for MILLIS of wall time, prints `spun`, then waits
//!   for a line on GATE (if given) and exits.
//! - `hog MIB`: allocates and touches MIB mebibytes, then prints `survived`.
//! - `forkbomb`: forks children that just wait, until fork fails; prints `limit reached
//!   after N` and then waits forever.
//! - `direct-write PATH MIB`: writes MIB mebibytes to PATH with O_DIRECT, 1 MiB at a time,
//!   and prints the elapsed milliseconds.
//! - `pty`: opens a pseudo-terminal from `/dev/ptmx` and prints its path and, on the next
//!   line, the device number of the file system it is on.
//! - `view [PATH...]`: prints, as JSON, the job's view of the file system and of itself:
//!   the names its passwd and group give its ids, the contents of `/dev`, `/run`,
//!   `/sys/class/net`, `/sys/fs/cgroup`, `/home` and `/root`, and for each PATH whether
//!   creating a file there works (`ok`, or the error's name, e.g. `EROFS`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::Instant;

use jobworker_executor::sys;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let r = match args.first().map(String::as_str) {
        Some("pattern") => pattern(rest),
        Some("streams") => streams(rest),
        Some("inspect") => inspect(),
        Some("spin") => spin(rest),
        Some("hog") => hog(rest),
        Some("direct-write") => direct_write(rest),
        Some("forkbomb") => forkbomb(),
        Some("view") => view(rest),
        Some("pty") => pty(),
        _ => Err(
            "usage: jobworker-probe pattern|inspect|spin|hog|direct-write|forkbomb|view ..."
                .to_string(),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what} expected"))
}

fn open_gate(path: Option<&String>) -> Result<Option<BufReader<std::fs::File>>, String> {
    path.map(|p| {
        std::fs::File::open(p)
            .map(BufReader::new)
            .map_err(|e| format!("{p}: {e}"))
    })
    .transpose()
}

fn wait_gate(gate: &mut Option<BufReader<std::fs::File>>) -> Result<(), String> {
    if let Some(g) = gate {
        let mut line = String::new();
        g.read_line(&mut line).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn pattern(args: &[String]) -> Result<(), String> {
    let total: usize = arg(args, 0, "pattern: BYTES")?;
    let mut gate = open_gate(args.get(1))?;
    let block: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let mut out = std::io::stdout().lock();
    wait_gate(&mut gate)?;
    let half = total / 2;
    let mut written = 0;
    for stop in [half, total] {
        while written < stop {
            // Keep the pattern aligned to the absolute offset.
            let start = written % 256;
            let n = (stop - written).min(block.len() - 256);
            out.write_all(&block[start..start + n])
                .map_err(|e| e.to_string())?;
            written += n;
        }
        out.flush().map_err(|e| e.to_string())?;
        if stop == half {
            wait_gate(&mut gate)?;
        }
    }
    Ok(())
}

fn streams(args: &[String]) -> Result<(), String> {
    let total: usize = arg(args, 0, "streams: BYTES")?;
    let mut gate = open_gate(args.get(1))?;
    let data = [
        jobworker_testkit::noise(1, total),
        jobworker_testkit::noise(2, total),
    ];
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut done = [0usize; 2];
    let mut size = 7usize;
    wait_gate(&mut gate)?;
    let mut gated = false;
    while done[0] < total || done[1] < total {
        for (i, d) in data.iter().enumerate() {
            // Chunks from 1 byte to 32 KiB, different each time.
            size = (size * 1103 + 12345) % (32 * 1024) + 1;
            let n = size.min(total - done[i]);
            let chunk = &d[done[i]..done[i] + n];
            let w: &mut dyn Write = if i == 0 { &mut out } else { &mut err };
            w.write_all(chunk)
                .and_then(|()| w.flush())
                .map_err(|e| e.to_string())?;
            done[i] += n;
        }
        if !gated && done[0] >= total / 2 && done[1] >= total / 2 {
            gated = true;
            wait_gate(&mut gate)?;
        }
    }
    Ok(())
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// Opens and closes a socket (std's own sockets cover only IP families).
fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> std::io::Result<()> {
    sys::socket(domain, ty, protocol).map(drop)
}

fn errno_of(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(libc::EPERM) => "EPERM".into(),
            Some(libc::ENOSYS) => "ENOSYS".into(),
            Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT".into(),
            Some(n) => format!("errno {n}"),
            None => e.to_string(),
        },
    }
}

fn inspect() -> Result<(), String> {
    let mut facts: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    facts.insert("pid", std::process::id().into());
    let ns: BTreeMap<String, serde_json::Value> = ["cgroup", "ipc", "mnt", "net", "pid", "uts"]
        .iter()
        .map(|n| {
            let link = std::fs::read_link(format!("/proc/self/ns/{n}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (n.to_string(), link.into())
        })
        .collect();
    facts.insert("namespaces", serde_json::to_value(ns).unwrap_or_default());
    // Session id (field 6 of stat; fields after the command name start at ") ").
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let session: i64 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(-1);
    facts.insert("session", session.into());
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    pids.sort();
    facts.insert("visible_pids", pids.into());
    let init_cmd = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    // The init is non-dumpable: its memory map (its template's) is not the job's to read.
    facts.insert(
        "pid1_maps",
        match std::fs::read_to_string("/proc/1/maps") {
            Ok(_) => "readable".into(),
            Err(e) => format!("{:?}", e.kind()).into(),
        },
    );
    facts.insert(
        "pid1_cmdline",
        String::from_utf8_lossy(&init_cmd)
            .replace('\0', " ")
            .trim()
            .into(),
    );
    let ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    facts.insert("interfaces", ifaces.into());
    // lo is up if a loopback connection works.
    let lo_up = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| std::net::TcpStream::connect(l.local_addr()?).map(|_| l))
        .is_ok();
    facts.insert("lo_up", lo_up.into());
    facts.insert(
        "hostname",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .into(),
    );
    for (k, key) in [
        ("uid", "Uid:"),
        ("gid", "Gid:"),
        ("groups", "Groups:"),
        ("cap_eff", "CapEff:"),
        ("cap_prm", "CapPrm:"),
        ("cap_inh", "CapInh:"),
        ("cap_bnd", "CapBnd:"),
        ("cap_amb", "CapAmb:"),
        ("no_new_privs", "NoNewPrivs:"),
        ("seccomp", "Seccomp:"),
    ] {
        facts.insert(k, status_field(&status, key).into());
    }
    facts.insert(
        "mount",
        errno_of(sys::mount(Some("tmpfs"), "/mnt", Some("tmpfs"), 0, None)).into(),
    );
    facts.insert(
        "unshare_user",
        errno_of(sys::unshare(libc::CLONE_NEWUSER as u64)).into(),
    );
    facts.insert(
        "unshare_net",
        errno_of(sys::unshare(libc::CLONE_NEWNET as u64)).into(),
    );
    // Socket families: what the job may open, and what its filter refuses.
    for (name, domain, ty, protocol) in [
        ("socket_inet", libc::AF_INET, libc::SOCK_STREAM, 0),
        (
            "socket_netlink_route",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        ),
        ("socket_vsock", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        ("socket_packet", libc::AF_PACKET, libc::SOCK_RAW, 0),
        (
            "socket_uevent",
            libc::AF_NETLINK,
            libc::SOCK_DGRAM,
            libc::NETLINK_KOBJECT_UEVENT,
        ),
    ] {
        facts.insert(name, errno_of(socket(domain, ty, protocol)).into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The last mount on /tmp is the one in effect.
    let tmp_mount = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/tmp"))
        .unwrap_or("")
        .to_owned();
    facts.insert("tmp_mount", tmp_mount.into());
    let marker = format!("/tmp/probe-{}", std::process::id());
    facts.insert("tmp_writable", std::fs::write(&marker, b"x").is_ok().into());
    facts.insert(
        "cwd",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
            .into(),
    );
    facts.insert(
        "cgroup",
        std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .into(),
    );
    let mut cg_files: Vec<String> = match std::fs::read_dir("/sys/fs/cgroup") {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    cg_files.sort();
    let cg_mounts: Vec<String> = mountinfo
        .lines()
        .filter(|l| l.contains("cgroup"))
        .map(str::to_owned)
        .collect();
    facts.insert("cg_mounts", cg_mounts.into());
    facts.insert("cg_files", cg_files.into());
    for file in ["memory.max", "pids.max", "cpu.max", "memory.swap.max"] {
        if let Ok(v) = std::fs::read_to_string(format!("/sys/fs/cgroup/{file}")) {
            facts.insert(
                match file {
                    "memory.max" => "cg_memory_max",
                    "pids.max" => "cg_pids_max",
                    "cpu.max" => "cg_cpu_max",
                    _ => "cg_memory_swap_max",
                },
                v.trim().into(),
            );
        }
    }
    facts.insert(
        "env",
        std::env::vars()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .into(),
    );
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    facts.insert("fds", fds.into());
    println!(
        "{}",
        serde_json::to_string(&facts).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// The entries of a directory, sorted, or the error's kind.
fn listing(dir: &str) -> serde_json::Value {
    match std::fs::read_dir(dir) {
        Ok(d) => {
            let mut names: Vec<String> = d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.into()
        }
        Err(e) => format!("{:?}", e.kind()).into(),
    }
}

/// The name an `/etc/passwd`-style file gives id `id` (third field).
fn name_of(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(id)).then(|| f[0].to_owned())
        })
        .unwrap_or_default()
}

fn error_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EROFS) => "EROFS".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        _ => e.to_string(),
    }
}

fn view(paths: &[String]) -> Result<(), String> {
    let mut facts: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let id = |key: &str| -> u32 {
        status_field(&status, key)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let (uid, gid) = (id("Uid:"), id("Gid:"));
    facts.insert("uid".into(), uid.into());
    facts.insert("gid".into(), gid.into());
    facts.insert("user_name".into(), name_of("/etc/passwd", uid).into());
    facts.insert("group_name".into(), name_of("/etc/group", gid).into());
    for dir in [
        "/dev",
        "/run",
        "/sys/class/net",
        "/sys/fs/cgroup",
        "/home",
        "/root",
        "/dev/pts",
    ] {
        facts.insert(format!("ls {dir}"), listing(dir));
    }
    let mut writes = serde_json::Map::new();
    for path in paths {
        let file = std::path::Path::new(path).join(format!("probe-{}", std::process::id()));
        let r = std::fs::write(&file, b"x").map(|()| "ok".to_string());
        writes.insert(path.clone(), r.unwrap_or_else(|e| error_name(&e)).into());
    }
    facts.insert("writes".into(), writes.into());
    println!(
        "{}",
        serde_json::to_string(&facts).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn pty() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (_master, n) = sys::open_pty("/dev/ptmx").map_err(|e| format!("/dev/ptmx: {e}"))?;
    let path = format!("/dev/pts/{n}");
    let dev = std::fs::metadata(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .dev();
    println!("{path}\n{dev}");
    Ok(())
}

fn spin(args: &[String]) -> Result<(), String> {
    let ms: u64 = arg(args, 0, "spin: MILLIS")?;
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed().as_millis() < u128::from(ms) {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    println!("spun");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Opened only now: opening a FIFO blocks until the test opens its end.
    let mut gate = open_gate(args.get(1))?;
    wait_gate(&mut gate)
}

fn hog(args: &[String]) -> Result<(), String> {
    let mib: usize = arg(args, 0, "hog: MIB")?;
    let mut blocks = Vec::new();
    for _ in 0..mib {
        // Touch every page so the memory is really charged.
        blocks.push(vec![1u8; 1 << 20]);
    }
    std::hint::black_box(&blocks);
    println!("survived");
    Ok(())
}

fn forkbomb() -> Result<(), String> {
    let mut n = 0u32;
    let err = loop {
        match sys::fork() {
            Ok(sys::Fork::Child) => loop {
                std::thread::park();
            },
            Ok(sys::Fork::Parent(_)) => n += 1,
            Err(e) => break e,
        }
        if n > 100_000 {
            return Err("fork never failed".into());
        }
    };
    println!("limit reached after {n}: {err}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}

fn direct_write(args: &[String]) -> Result<(), String> {
    let path: String = arg(args, 0, "direct-write: PATH")?;
    let mib: usize = arg(args, 1, "direct-write: MIB")?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    // O_DIRECT needs an aligned buffer: take a 4096-aligned window of a larger one.
    let raw = vec![0x5au8; (1 << 20) + 4096];
    let skip = (4096 - (raw.as_ptr() as usize % 4096)) % 4096;
    let buf = &raw[skip..skip + (1 << 20)];
    let start = Instant::now();
    use std::os::unix::fs::FileExt;
    for i in 0..mib {
        file.write_all_at(buf, (i as u64) << 20)
            .map_err(|e| format!("write: {e}"))?;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    println!("{}", start.elapsed().as_millis());
    Ok(())
}
