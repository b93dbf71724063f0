//! The cgroup v2 (unified hierarchy) backend.
//!
//! Layout under the delegated parent `P` (the executor's own cgroup unless configured):
//!
//! ```text
//! P/cgroup.subtree_control      +cpu +memory +io +pids
//! P/supervisor/                 the executor, when it was started in P itself
//! P/jobs/cgroup.subtree_control +cpu +memory +io +pids
//! P/jobs/<job-id>/              one leaf per job: cpu.max memory.max memory.swap.max pids.max io.max
//! ```
//!
//! cgroup v2 lets only leaves hold processes when controllers are enabled for children
//! (the "no internal processes" rule), hence the executor's own leaf and the `jobs`
//! group between `P` and the jobs.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jobworker_protocol::JobId;

use super::fs::{self, Dirs};
use super::mountinfo::{self, Mount};
use super::{CgroupConfig, CgroupError, JobGroup, ResolvedLimits, Usage};

/// The controllers jobs need.
pub const CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];
/// What enables them in a `cgroup.subtree_control`.
const ENABLE: &str = "+cpu +memory +io +pids";
/// The executor's own leaf under the parent.
pub const SUPERVISOR: &str = "supervisor";
/// The group holding the jobs' groups.
pub const JOBS: &str = "jobs";

/// A cgroup v2 host, prepared: the parent exists with the controllers enabled.
#[derive(Debug)]
pub struct V2 {
    parent: PathBuf,
    jobs: PathBuf,
    swaps: PathBuf,
    dirs: Dirs,
}

/// What [`detect`] found; [`Plan::prepare`] makes it so.
#[derive(Debug)]
pub(super) struct Plan {
    /// The cgroup2 mount point.
    mount: PathBuf,
    /// The delegated parent group.
    parent: PathBuf,
    /// The executor's own group, when it is visible in this mount.
    own: Option<PathBuf>,
    swaps: PathBuf,
    dirs: Dirs,
}

/// Looks for a cgroup2 mount under the configured root with the jobs' controllers
/// available. `Ok(Err(reason))` says why cgroup v2 cannot be used; `Err` is a failure to
/// read the host's files.
pub(super) fn detect(
    cfg: &CgroupConfig,
    mounts: &[Mount],
) -> Result<Result<Plan, String>, CgroupError> {
    let candidates = || {
        mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2" && m.mount_point.starts_with(&cfg.root))
    };
    // The unified hierarchy at the root itself is a pure v2 host; one below it (the
    // hybrid layout's `unified`) usually has no controllers, which the check below says.
    let Some(mount) = candidates()
        .find(|m| m.mount_point == cfg.root)
        .or_else(|| candidates().next())
    else {
        return Ok(Err(format!(
            "no cgroup2 filesystem is mounted under {}",
            cfg.root.display()
        )));
    };

    let self_cgroup = super::read(&cfg.self_cgroup)?;
    let own = mountinfo::unified_path(&self_cgroup).and_then(|p| path_in_mount(mount, p));
    let parent = match parent_group(cfg, mount, own.as_deref())? {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    if let Err(why) = controllers_available(mount, &parent) {
        return Ok(Err(why));
    }
    Ok(Ok(Plan {
        mount: mount.mount_point.clone(),
        parent,
        own,
        swaps: cfg.swaps.clone(),
        dirs: cfg.dirs.clone(),
    }))
}

/// The delegated parent: the configured one under the mount, else the executor's own
/// group. `Ok(Err(reason))` when neither can be had.
fn parent_group(
    cfg: &CgroupConfig,
    mount: &Mount,
    own: Option<&Path>,
) -> Result<Result<PathBuf, String>, CgroupError> {
    Ok(Ok(match (&cfg.parent, own) {
        (Some(p), _) => mount.mount_point.join(super::check_parent(p)?),
        // Started again in the leaf this module moved it to (a second probe in the same
        // process): the parent is the leaf's parent.
        (None, Some(own)) if own.file_name().is_some_and(|n| n == SUPERVISOR) => {
            own.parent().unwrap_or(own).to_path_buf()
        }
        (None, Some(own)) => own.to_path_buf(),
        (None, None) => {
            return Ok(Err(format!(
                "no parent is configured and the executor's own cgroup v2 group is not \
                 visible under {} ({} has no usable 0:: line)",
                mount.mount_point.display(),
                cfg.self_cgroup.display()
            )));
        }
    }))
}

/// Checks that the jobs' controllers are available in the parent or, while it does not
/// exist yet, in its nearest existing ancestor; the error says which are missing.
fn controllers_available(mount: &Mount, parent: &Path) -> Result<(), String> {
    let existing = parent
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(&mount.mount_point)
        .to_path_buf();
    let controllers_file = existing.join("cgroup.controllers");
    let available = std::fs::read_to_string(&controllers_file)
        .map_err(|e| format!("cannot read {}: {e}", controllers_file.display()))?;
    let missing = missing_controllers(&available);
    if !missing.is_empty() {
        return Err(format!(
            "controllers {} are not available in {} (its cgroup.controllers lists: {}; on a \
             hybrid host they are bound to cgroup v1 hierarchies)",
            missing.join(", "),
            existing.display(),
            if available.trim().is_empty() {
                "none"
            } else {
                available.trim()
            }
        ));
    }
    Ok(())
}

/// The directory of a `/proc/self/cgroup` path in this mount, if the mount shows it.
fn path_in_mount(mount: &Mount, cgroup_path: &str) -> Option<PathBuf> {
    let rel = Path::new(cgroup_path).strip_prefix(&mount.root).ok()?;
    if rel.as_os_str().is_empty() {
        Some(mount.mount_point.clone())
    } else {
        Some(mount.mount_point.join(rel))
    }
}

fn missing_controllers(available: &str) -> Vec<&'static str> {
    CONTROLLERS
        .into_iter()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect()
}

impl Plan {
    /// Creates the parent if missing, moves the executor into its leaf when it sits in
    /// the parent itself, and enables the controllers for `jobs/` and the jobs' groups.
    pub(super) fn prepare(self) -> Result<V2, CgroupError> {
        let mut created = fs::create_dir_all(&self.dirs, &self.parent)?;
        let jobs = self.parent.join(JOBS);
        let result = self.prepare_parent(&created).and_then(|()| {
            match fs::create_group_dir(&self.dirs, &jobs) {
                Ok(()) => created.push(jobs.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::CreateGroup {
                        path: jobs.clone(),
                        source,
                    });
                }
            }
            prepare_jobs(&jobs)
        });
        if let Err(e) = result {
            fs::remove_created(&self.dirs, &created);
            return Err(e);
        }
        tracing::debug!(mount = %self.mount.display(), parent = %self.parent.display(), "cgroup v2 parent ready");
        Ok(V2 {
            parent: self.parent,
            jobs,
            swaps: self.swaps,
            dirs: self.dirs,
        })
    }

    fn prepare_parent(&self, created: &[PathBuf]) -> Result<(), CgroupError> {
        // The controllers must reach the outermost group this module created (or the
        // parent, if it existed): only its parent's subtree_control can grant them, and
        // that group is not ours.
        let first = created.first().unwrap_or(&self.parent);
        let available = super::read(&first.join("cgroup.controllers"))?;
        let missing = missing_controllers(&available);
        if !missing.is_empty() {
            return Err(CgroupError::MissingControllers {
                path: first.clone(),
                missing: missing.join(", "),
            });
        }
        // Hand them down through the intermediate groups created above the parent.
        for dir in created.iter().filter(|d| **d != self.parent) {
            enable_controllers(dir)?;
        }
        if self.own.as_deref() == Some(self.parent.as_path()) {
            self.move_self_into_leaf()?;
        }
        enable_controllers(&self.parent)
    }

    fn move_self_into_leaf(&self) -> Result<(), CgroupError> {
        let leaf = self.parent.join(SUPERVISOR);
        match fs::create_group_dir(&self.dirs, &leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::CreateGroup { path: leaf, source }),
        }
        let pid = std::process::id();
        let procs = leaf.join("cgroup.procs");
        fs::write_control(&procs, &pid.to_string()).map_err(|source| CgroupError::MoveSelf {
            path: procs.clone(),
            pid,
            source,
        })?;
        tracing::info!(leaf = %leaf.display(), "moved the executor into its own leaf cgroup");
        Ok(())
    }
}

/// Enables the controllers for the jobs' groups and checks the kernel can kill a group.
fn prepare_jobs(jobs: &Path) -> Result<(), CgroupError> {
    enable_controllers(jobs)?;
    let kill = jobs.join("cgroup.kill");
    if !kill.exists() {
        return Err(CgroupError::MissingFeature {
            feature: "cgroup.kill (Linux 5.14 or later)",
            path: kill,
        });
    }
    Ok(())
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    fs::write_control(&path, ENABLE)
        .map_err(|source| CgroupError::EnableControllers { path, source })
}

impl V2 {
    /// The delegated parent group.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// The totals of all jobs, on `jobs/` (the executor's own leaf is outside it).
    pub(super) fn set_totals(
        &self,
        memory_bytes: u64,
        pids: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), CgroupError> {
        let jobs = &self.jobs;
        fs::write_limit(jobs, "memory.max", "memory", &memory_bytes.to_string())?;
        fs::write_limit(jobs, "pids.max", "pids", &pids.to_string())?;
        let cpu = format!("{cpu_quota_usec} {}", super::CPU_PERIOD_USEC);
        fs::write_limit(jobs, "cpu.max", "cpu", &cpu)
    }

    pub(super) fn create(
        &self,
        job: &JobId,
        limits: &ResolvedLimits,
    ) -> Result<JobGroup, CgroupError> {
        let dir = self.jobs.join(job.to_string());
        match fs::create_group_dir(&self.dirs, &dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::GroupExists { path: dir });
            }
            Err(source) => return Err(CgroupError::CreateGroup { path: dir, source }),
        }
        let fd = self
            .write_limits(&dir, limits)
            .and_then(|()| open_dir(&dir));
        match fd {
            Ok(fd) => Ok(JobGroup {
                id: *job,
                dirs: vec![dir],
                join_files: Vec::new(),
                dir_fd: Some(fd),
            }),
            Err(e) => {
                fs::remove_created(&self.dirs, &[dir]);
                Err(e)
            }
        }
    }

    fn write_limits(&self, dir: &Path, limits: &ResolvedLimits) -> Result<(), CgroupError> {
        let quota = super::cpu_quota_usec(limits.cpu_millis);
        fs::write_limit(
            dir,
            "cpu.max",
            "cpu",
            &format!("{quota} {}", super::CPU_PERIOD_USEC),
        )?;
        fs::write_limit(
            dir,
            "memory.max",
            "memory",
            &limits.memory_bytes.to_string(),
        )?;
        match fs::write_limit(dir, "memory.swap.max", "swap", "0") {
            Err(CgroupError::LimitUnsupported { path, .. }) => {
                if super::host_has_swap(&self.swaps)? {
                    return Err(CgroupError::LimitUnsupported {
                        limit: "swap",
                        path,
                        reason: "; the kernel has no swap accounting and the host has active swap",
                    });
                }
                tracing::debug!("no swap accounting and no swap: memory.swap.max not needed");
            }
            other => other?,
        }
        fs::write_limit(dir, "pids.max", "pids", &limits.pids.to_string())?;
        if let Some(io) = limits.io.as_ref().filter(|io| !io.is_empty()) {
            let (major, minor) = super::block_device(&io.device)?;
            let mut value = format!("{major}:{minor}");
            for (key, v) in [
                ("rbps", io.read_bps),
                ("wbps", io.write_bps),
                ("riops", io.read_iops),
                ("wiops", io.write_iops),
            ] {
                if let Some(v) = v {
                    value.push_str(&format!(" {key}={v}"));
                }
            }
            fs::write_limit(dir, "io.max", "io", &value)?;
        }
        Ok(())
    }

    pub(super) fn kill(&self, g: &JobGroup) -> Result<(), CgroupError> {
        fs::write(&self.dir(g).join("cgroup.kill"), "1")
    }

    pub(super) fn usage(&self, g: &JobGroup) -> Usage {
        let dir = self.dir(g);
        Usage {
            cpu_usec: fs::read_keyed(&dir.join("cpu.stat"), "usage_usec"),
            peak_memory_bytes: fs::read_number(&dir.join("memory.peak")),
            oom_killed: fs::read_keyed(&dir.join("memory.events"), "oom_kill")
                .is_some_and(|n| n > 0),
        }
    }

    pub(super) fn live(&self, g: &JobGroup) -> super::LiveUsage {
        let dir = self.dir(g);
        super::LiveUsage {
            memory_bytes: fs::read_number(&dir.join("memory.current")),
            pids: fs::read_number(&dir.join("pids.current")),
            cpu_usec: fs::read_keyed(&dir.join("cpu.stat"), "usage_usec"),
        }
    }

    pub(super) fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    pub(super) fn reap_stale(&self) -> Result<Vec<JobId>, CgroupError> {
        let ids = super::job_dirs(&self.jobs)?;
        for id in &ids {
            let dir = self.jobs.join(id.to_string());
            let killed = fs::write(&dir.join("cgroup.kill"), "1");
            if let Err(e) = fs::remove_dirs(&self.dirs, [&dir].into_iter()) {
                // A group that could not be emptied: the kill error says more.
                let e = killed.err().unwrap_or(e);
                tracing::error!(job = %id, error = %e, "cannot reap a job cgroup left by a previous run");
            }
        }
        Ok(ids)
    }

    fn dir(&self, g: &JobGroup) -> PathBuf {
        self.jobs.join(g.id.to_string())
    }
}

/// Opens the group's directory read-only for `CLONE_INTO_CGROUP`.
fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::OpenGroup {
            path: dir.to_owned(),
            source,
        })
}
