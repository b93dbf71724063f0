//! The crun baseline.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::stack::*;

/// A bundle whose rootfs holds only a static busybox; its config is `crun spec`'s with
/// `/bin/true` as the process and the same limits the jobs get.
pub fn crun_bundle(dir: &Path) -> anyhow::Result<PathBuf> {
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
pub struct Crun {
    pub helper: Child,
    pub to: std::process::ChildStdin,
    pub from: BufReader<std::process::ChildStdout>,
}

impl Crun {
    pub fn start(bundle: &Path, root: &Path) -> anyhow::Result<Crun> {
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
    pub fn run_once(&mut self) -> anyhow::Result<Duration> {
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
pub fn crun_helper(args: &[String]) -> anyhow::Result<()> {
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
