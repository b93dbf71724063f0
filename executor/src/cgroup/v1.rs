//! The cgroup v1 backend, for hybrid hosts whose controllers are mounted one (or a few)
//! per hierarchy, e.g. `/sys/fs/cgroup/{cpu,cpuacct,memory,blkio,pids,freezer}`.
//!
//! The hierarchies are found in the mount table by their super options, never assumed.
//! A job's group is `<mount>/<parent>/<job-id>` in each hierarchy (co-mounted controllers
//! such as `cpu,cpuacct` share one), and the job's init joins them all by writing `0`
//! into each one's `tasks` file before it execs.
//!
//! `tasks`, not `cgroup.procs`: the init is single-threaded when it joins, so moving its
//! one thread moves the whole process, and the kernel then skips the global
//! threadgroup lock that a `cgroup.procs` write takes. Taking that lock waits for an
//! RCU grace period, which cost about 9 ms per job on the benchmark host (see
//! `docs/benchmarks.md`); the `tasks` write costs tens of microseconds.

use std::path::{Path, PathBuf};

use jobworker_protocol::JobId;

use super::fs::{self, Dirs};
use super::mountinfo::Mount;
use super::{CgroupConfig, CgroupError, JobGroup, ResolvedLimits, Usage};
use crate::sys;

/// The controllers jobs need, each in some mounted hierarchy.
pub const CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"];

/// How many times [`V1::kill`] re-reads `cgroup.procs` for processes that appeared while
/// the group was freezing.
const KILL_PASSES: usize = 4;

/// One mounted hierarchy and the executor's parent group in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// The needed controllers it carries.
    controllers: Vec<&'static str>,
    mount: PathBuf,
    /// `<mount>/<parent>`.
    parent: PathBuf,
}

/// A cgroup v1 host, prepared: the parent exists in every hierarchy.
#[derive(Debug)]
pub struct V1 {
    hierarchies: Vec<Hierarchy>,
    swaps: PathBuf,
    dirs: Dirs,
}

/// What [`detect`] found; [`Plan::prepare`] makes it so.
#[derive(Debug)]
pub(super) struct Plan {
    hierarchies: Vec<Hierarchy>,
    swaps: PathBuf,
    dirs: Dirs,
}

/// Finds a mounted hierarchy under the configured root for every needed controller.
/// `Ok(Err(reason))` names the controllers that are missing.
pub(super) fn detect(
    cfg: &CgroupConfig,
    mounts: &[Mount],
) -> Result<Result<Plan, String>, CgroupError> {
    let parent = super::check_parent(cfg.parent.as_deref().unwrap_or(super::V1_DEFAULT_PARENT))?;
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut missing = Vec::new();
    for controller in CONTROLLERS {
        let found = mounts.iter().find(|m| {
            m.fstype == "cgroup" && m.mount_point.starts_with(&cfg.root) && m.has_option(controller)
        });
        match found {
            None => missing.push(controller),
            Some(m) => match hierarchies.iter_mut().find(|h| h.mount == m.mount_point) {
                Some(h) => h.controllers.push(controller),
                None => hierarchies.push(Hierarchy {
                    controllers: vec![controller],
                    mount: m.mount_point.clone(),
                    parent: m.mount_point.join(&parent),
                }),
            },
        }
    }
    if !missing.is_empty() {
        return Ok(Err(format!(
            "controllers {} are not mounted as cgroup v1 hierarchies under {}",
            missing.join(", "),
            cfg.root.display()
        )));
    }
    Ok(Ok(Plan {
        hierarchies,
        swaps: cfg.swaps.clone(),
        dirs: cfg.dirs.clone(),
    }))
}

impl Plan {
    /// Creates the parent group in every hierarchy (nothing is written into it).
    pub(super) fn prepare(self) -> Result<V1, CgroupError> {
        let mut created = Vec::new();
        for h in &self.hierarchies {
            match fs::create_dir_all(&self.dirs, &h.parent) {
                Ok(mut c) => created.append(&mut c),
                Err(e) => {
                    fs::remove_created(&self.dirs, &created);
                    return Err(e);
                }
            }
        }
        for h in &self.hierarchies {
            tracing::debug!(controllers = ?h.controllers, parent = %h.parent.display(), "cgroup v1 parent ready");
        }
        Ok(V1 {
            hierarchies: self.hierarchies,
            swaps: self.swaps,
            dirs: self.dirs,
        })
    }
}

impl V1 {
    /// The parent group in each hierarchy.
    pub fn parents(&self) -> Vec<&Path> {
        self.hierarchies
            .iter()
            .map(|h| h.parent.as_path())
            .collect()
    }

    /// The parent in the hierarchy carrying `controller`.
    fn parent_of(&self, controller: &str) -> &Path {
        &self
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&controller))
            .expect("detect found a hierarchy for every controller")
            .parent
    }

    /// The totals of all jobs, on the parent in each hierarchy (which holds only job
    /// groups: the executor stays where its service manager put it).
    pub(super) fn set_totals(
        &self,
        memory_bytes: u64,
        pids: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), CgroupError> {
        let memory = self.parent_of("memory");
        fs::write_limit(
            memory,
            "memory.limit_in_bytes",
            "memory",
            &memory_bytes.to_string(),
        )?;
        fs::write_limit(
            self.parent_of("pids"),
            "pids.max",
            "pids",
            &pids.to_string(),
        )?;
        let cpu = self.parent_of("cpu");
        fs::write_limit(
            cpu,
            "cpu.cfs_period_us",
            "cpu",
            &super::CPU_PERIOD_USEC.to_string(),
        )?;
        fs::write_limit(cpu, "cpu.cfs_quota_us", "cpu", &cpu_quota_usec.to_string())
    }

    /// The job's directory in the hierarchy carrying `controller`.
    fn dir(&self, controller: &str, id: &JobId) -> PathBuf {
        let h = self
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&controller))
            .expect("detect found a hierarchy for every controller");
        h.parent.join(id.to_string())
    }

    pub(super) fn create(
        &self,
        job: &JobId,
        limits: &ResolvedLimits,
    ) -> Result<JobGroup, CgroupError> {
        let mut created = Vec::new();
        for h in &self.hierarchies {
            let dir = h.parent.join(job.to_string());
            let made = fs::create_group_dir(&self.dirs, &dir).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    CgroupError::GroupExists { path: dir.clone() }
                } else {
                    CgroupError::CreateGroup {
                        path: dir.clone(),
                        source,
                    }
                }
            });
            if let Err(e) = made {
                fs::remove_created(&self.dirs, &created);
                return Err(e);
            }
            created.push(dir);
        }
        if let Err(e) = self.write_limits(job, limits) {
            fs::remove_created(&self.dirs, &created);
            return Err(e);
        }
        let join_files = created.iter().map(|d| d.join("tasks")).collect();
        Ok(JobGroup {
            id: *job,
            dirs: created,
            join_files,
            dir_fd: None,
        })
    }

    fn write_limits(&self, job: &JobId, limits: &ResolvedLimits) -> Result<(), CgroupError> {
        let cpu = self.dir("cpu", job);
        // The period first: the quota is checked against it.
        fs::write_limit(
            &cpu,
            "cpu.cfs_period_us",
            "cpu",
            &super::CPU_PERIOD_USEC.to_string(),
        )?;
        let quota = super::cpu_quota_usec(limits.cpu_millis);
        fs::write_limit(&cpu, "cpu.cfs_quota_us", "cpu", &quota.to_string())?;

        let memory = self.dir("memory", job);
        let bytes = limits.memory_bytes.to_string();
        // The kernel keeps memsw.limit >= limit. A fresh group starts with both
        // unlimited, so the memory limit goes first, then memsw down to the same value;
        // the other order would be refused (EINVAL).
        fs::write_limit(&memory, "memory.limit_in_bytes", "memory", &bytes)?;
        match fs::write_limit(&memory, "memory.memsw.limit_in_bytes", "swap", &bytes) {
            Err(CgroupError::LimitUnsupported { path, .. }) => {
                if super::host_has_swap(&self.swaps)? {
                    return Err(CgroupError::LimitUnsupported {
                        limit: "swap",
                        path,
                        reason: "; the kernel has no swap accounting and the host has active swap",
                    });
                }
                tracing::debug!(
                    "no swap accounting and no swap: memory.memsw.limit_in_bytes not needed"
                );
            }
            other => other?,
        }
        // Only a preference (the memsw limit is what forbids swap): kept where writable.
        if let Err(e) = fs::write_control(&memory.join("memory.swappiness"), "0") {
            tracing::debug!(error = %e, "memory.swappiness not set");
        }

        let pids = self.dir("pids", job);
        fs::write_limit(&pids, "pids.max", "pids", &limits.pids.to_string())?;

        if let Some(io) = limits.io.as_ref().filter(|io| !io.is_empty()) {
            let (major, minor) = super::block_device(&io.device)?;
            let blkio = self.dir("blkio", job);
            for (file, v) in [
                ("blkio.throttle.read_bps_device", io.read_bps),
                ("blkio.throttle.write_bps_device", io.write_bps),
                ("blkio.throttle.read_iops_device", io.read_iops),
                ("blkio.throttle.write_iops_device", io.write_iops),
            ] {
                if let Some(v) = v {
                    fs::write_limit(&blkio, file, "io", &format!("{major}:{minor} {v}"))?;
                }
            }
        }
        Ok(())
    }

    /// Freezes the group, so that no process can fork or exit and no pid can be reused
    /// while the pids are read, sends SIGKILL to every pid in it, and thaws it, upon which
    /// the processes die. A process still in the middle of a fork while the group is
    /// freezing shows up in `cgroup.procs` a moment later, so the list is re-read until it
    /// holds no pid not yet killed. (A job's processes also share a PID namespace whose
    /// init is among them, and the kernel kills the whole namespace when that init dies.)
    pub(super) fn kill(&self, g: &JobGroup) -> Result<(), CgroupError> {
        self.kill_dir(&self.dir("freezer", &g.id))
    }

    fn kill_dir(&self, freezer: &Path) -> Result<(), CgroupError> {
        let state = freezer.join("freezer.state");
        fs::write(&state, "FROZEN")?;
        let killed = kill_all(&freezer.join("cgroup.procs"));
        let thawed = fs::write(&state, "THAWED");
        killed.and(thawed)
    }

    pub(super) fn usage(&self, g: &JobGroup) -> Usage {
        let memory = self.dir("memory", &g.id);
        Usage {
            cpu_usec: fs::read_number(&self.dir("cpuacct", &g.id).join("cpuacct.usage"))
                .map(|ns| ns / 1000),
            peak_memory_bytes: fs::read_number(&memory.join("memory.max_usage_in_bytes")),
            oom_killed: fs::read_keyed(&memory.join("memory.oom_control"), "oom_kill")
                .is_some_and(|n| n > 0),
        }
    }

    pub(super) fn live(&self, g: &JobGroup) -> super::LiveUsage {
        super::LiveUsage {
            memory_bytes: fs::read_number(&self.dir("memory", &g.id).join("memory.usage_in_bytes")),
            pids: fs::read_number(&self.dir("pids", &g.id).join("pids.current")),
            cpu_usec: fs::read_number(&self.dir("cpuacct", &g.id).join("cpuacct.usage"))
                .map(|ns| ns / 1000),
        }
    }

    pub(super) fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    pub(super) fn reap_stale(&self) -> Result<Vec<JobId>, CgroupError> {
        let mut ids = Vec::new();
        for h in &self.hierarchies {
            ids.extend(super::job_dirs(&h.parent)?);
        }
        ids.sort();
        ids.dedup();
        for id in &ids {
            let dirs: Vec<PathBuf> = self
                .hierarchies
                .iter()
                .map(|h| h.parent.join(id.to_string()))
                .filter(|d| d.is_dir())
                .collect();
            let freezer = self.dir("freezer", id);
            let killed = if freezer.is_dir() {
                self.kill_dir(&freezer)
            } else {
                Ok(())
            };
            if let Err(e) = fs::remove_dirs(&self.dirs, dirs.iter().rev()) {
                let e = killed.err().unwrap_or(e);
                tracing::error!(job = %id, error = %e, "cannot reap a job cgroup left by a previous run");
            }
        }
        Ok(ids)
    }
}

/// Sends SIGKILL to every pid in `procs`, re-reading it until no new pid shows up (at most
/// [`KILL_PASSES`] times). Only positive pids are signalled: `kill(0)` or `kill(-1)` would
/// reach far more than the group.
fn kill_all(procs: &Path) -> Result<(), CgroupError> {
    let mut killed: Vec<i32> = Vec::new();
    for _ in 0..KILL_PASSES {
        let pids = fs::read_pids(procs)?;
        let new: Vec<i32> = pids.into_iter().filter(|p| !killed.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            match sys::kill(pid, libc::SIGKILL) {
                Ok(()) => {}
                // Exited before it was frozen.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Signal {
                        pid,
                        path: procs.to_owned(),
                        source,
                    });
                }
            }
            killed.push(pid);
        }
    }
    Ok(())
}
