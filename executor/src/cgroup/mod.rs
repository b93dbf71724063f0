//! Control groups for jobs: one small interface over the cgroup v2 and v1 backends.
//!
//! At start-up [`Cgroups::probe`] reads the mount table and the executor's own cgroup,
//! picks a backend and prepares the executor's parent group. For every job,
//! [`Cgroups::create`] makes the job's group and writes every limit *before* the job
//! starts; the job joins it at clone time (v2, [`JobGroup::clone_into_fd`]) or by writing
//! `0` into each hierarchy's `tasks` file before it execs (v1, [`JobGroup::join_files`]).
//! [`Cgroups::kill`] ends every process of the group, [`Cgroups::usage`] reads what the
//! job consumed, [`Cgroups::remove`] deletes the group once it is empty, and
//! [`Cgroups::reap_stale`] cleans up after a previous run.
//!
//! The executor never modifies a group it did not create, with two exceptions on v2: the
//! delegated parent's `cgroup.subtree_control`, and moving the executor itself into a
//! leaf of that parent.
//!
//! Every path is derived from [`CgroupConfig`], so the file-writing logic is unit-tested
//! against a temporary directory standing in for `/sys/fs/cgroup`.

mod fs;
mod mountinfo;
pub mod v1;
pub mod v2;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use jobworker_protocol::JobId;

pub use fs::{Dirs, GroupDirs, HostDirs};

/// The CFS period used for CPU limits, in microseconds (100 ms, the kernel's default).
pub const CPU_PERIOD_USEC: u64 = 100_000;
/// The smallest CPU quota the kernel accepts, in microseconds.
pub const CPU_MIN_QUOTA_USEC: u64 = 1_000;

/// Which backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// cgroup v2 when the host offers it with the needed controllers, else cgroup v1.
    #[default]
    Auto,
    V1,
    V2,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!(
                "unknown cgroup backend {other:?}: expected auto, v1 or v2"
            )),
        }
    }
}

/// Where the cgroups are and where the executor keeps its jobs' groups.
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    pub backend: Backend,
    /// v2: the delegated group, relative to the cgroup2 mount; default: the executor's
    /// own cgroup (the systemd `Delegate=` case). v1: a group name relative to each
    /// controller's mount; default [`V1_DEFAULT_PARENT`].
    pub parent: Option<String>,
    /// The directory the cgroup filesystems are mounted under; cgroup mounts elsewhere
    /// are ignored. Normally `/sys/fs/cgroup`.
    pub root: PathBuf,
    /// The mount table to read; normally `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// The executor's own cgroup membership; normally `/proc/self/cgroup`.
    pub self_cgroup: PathBuf,
    /// The active swap areas; normally `/proc/swaps`. Consulted only when the kernel has
    /// no swap accounting (see [`Cgroups::create`]).
    pub swaps: PathBuf,
    /// How group directories are made and removed: [`HostDirs`] on a real cgroup
    /// filesystem.
    pub dirs: Dirs,
}

/// The v1 parent group name when none is configured.
pub const V1_DEFAULT_PARENT: &str = "jobworker";

impl CgroupConfig {
    /// The host's real cgroup files.
    pub fn host(backend: Backend, parent: Option<String>) -> Self {
        Self {
            backend,
            parent,
            root: PathBuf::from("/sys/fs/cgroup"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            self_cgroup: PathBuf::from("/proc/self/cgroup"),
            swaps: PathBuf::from("/proc/swaps"),
            dirs: Arc::new(HostDirs),
        }
    }
}

/// A job's limits after the executor merged the request with its ceilings: every value
/// is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// CPU bandwidth in thousandths of one core.
    pub cpu_millis: u32,
    /// Memory in bytes; swap is off for the job.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u32,
    pub io: Option<ResolvedIo>,
}

/// Disk IO limits on one block device; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIo {
    /// The device node, e.g. `/dev/vda`, already checked to have the shape of a device
    /// path; this module checks that it is a block device.
    pub device: String,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl ResolvedIo {
    fn is_empty(&self) -> bool {
        self.read_bps.is_none()
            && self.write_bps.is_none()
            && self.read_iops.is_none()
            && self.write_iops.is_none()
    }
}

/// The CPU quota per [`CPU_PERIOD_USEC`] for a bandwidth of `cpu_millis` thousandths of a
/// core, raised to the kernel's minimum.
pub fn cpu_quota_usec(cpu_millis: u32) -> u64 {
    (u64::from(cpu_millis) * CPU_PERIOD_USEC / 1000).max(CPU_MIN_QUOTA_USEC)
}

/// What a job consumed, read from its group; `None` when the kernel does not report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// The kernel's OOM killer killed a process of the job.
    pub oom_killed: bool,
}

/// What a running job uses now; `None` when the kernel does not report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveUsage {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_usec: Option<u64>,
}

/// The group of one job: the directories created for it, which [`Cgroups::remove`]
/// deletes. Dropping it leaves the group on the host (the next start-up reaps it).
#[derive(Debug)]
#[must_use = "a job group that is not removed stays on the host until the next start-up"]
pub struct JobGroup {
    id: JobId,
    /// One directory per hierarchy (one on v2), in creation order.
    dirs: Vec<PathBuf>,
    /// v1: the `tasks` file of each directory.
    join_files: Vec<PathBuf>,
    /// v2: the group's directory, opened for `CLONE_INTO_CGROUP`.
    dir_fd: Option<OwnedFd>,
}

impl JobGroup {
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The group's directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// v2: a read-only directory fd of the job's group, for clone3's `CLONE_INTO_CGROUP`
    /// (close-on-exec). `None` on v1.
    pub fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.dir_fd.as_ref().map(AsFd::as_fd)
    }

    /// v1: the `tasks` files, one per hierarchy, into which the job's init writes `0`
    /// (its one thread) before it forks or execs. Empty on v2.
    pub fn join_files(&self) -> &[PathBuf] {
        &self.join_files
    }
}

/// A failed step, with the path and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup parent {parent:?}: {reason}")]
    InvalidParent {
        parent: String,
        reason: &'static str,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("no usable cgroup backend: cgroup v2: {v2}; cgroup v1: {v1}")]
    NoBackend { v2: String, v1: String },
    #[error("cgroup v2 cannot be used: {0}")]
    V2Unavailable(String),
    #[error("cgroup v1 cannot be used: {0}")]
    V1Unavailable(String),
    #[error("cannot create cgroup {}: {source}", path.display())]
    CreateGroup { path: PathBuf, source: io::Error },
    #[error("cannot open cgroup {}: {source}", path.display())]
    OpenGroup { path: PathBuf, source: io::Error },
    #[error("cgroup {} already exists", path.display())]
    GroupExists { path: PathBuf },
    #[error("controllers {missing} are not available in {} (its parent must enable them in cgroup.subtree_control)", path.display())]
    MissingControllers { path: PathBuf, missing: String },
    #[error("cannot enable controllers in {}: {source}", path.display())]
    EnableControllers { path: PathBuf, source: io::Error },
    #[error("cannot move the executor (pid {pid}) into {}: {source}", path.display())]
    MoveSelf {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error("the kernel lacks {feature}: {} is missing", path.display())]
    MissingFeature {
        feature: &'static str,
        path: PathBuf,
    },
    #[error("the {limit} limit cannot be enforced on this host: {} is missing{reason}", path.display())]
    LimitUnsupported {
        limit: &'static str,
        path: PathBuf,
        /// Empty, or more about why, starting with "; ".
        reason: &'static str,
    },
    #[error("the kernel refused the {limit} limit ({value:?} into {}): {source}", path.display())]
    LimitRejected {
        limit: &'static str,
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("the io limit device {device} cannot be used: {source}")]
    IoDevice { device: String, source: io::Error },
    #[error("the io limit device {device} is not a block device")]
    NotBlockDevice { device: String },
    #[error("cannot write {value:?} into {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot send SIGKILL to pid {pid} of {}: {source}", path.display())]
    Signal {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove cgroup {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

impl CgroupError {
    /// The limit this error is about, when it is about one: the job asked for something
    /// the host cannot enforce.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::LimitUnsupported { limit, .. } | Self::LimitRejected { limit, .. } => Some(limit),
            Self::IoDevice { .. } | Self::NotBlockDevice { .. } => Some("io"),
            _ => None,
        }
    }
}

/// The backend in use.
#[derive(Debug)]
pub enum Cgroups {
    V1(v1::V1),
    V2(v2::V2),
}

impl Cgroups {
    /// Picks the backend from the mount table and prepares the executor's parent group:
    /// `auto` prefers cgroup v2 with the controllers cpu, memory, io and pids available,
    /// else cgroup v1 with cpu, cpuacct, memory, blkio, pids and freezer mounted. The
    /// error names what is missing for each.
    ///
    /// On v2 this creates the parent (and `jobs/` under it), moves the executor into the
    /// leaf `supervisor` when it sits in the parent itself, and enables the controllers.
    /// On v1 it creates the parent in each hierarchy.
    pub fn probe(cfg: &CgroupConfig) -> Result<Cgroups, CgroupError> {
        let text = read(&cfg.mountinfo)?;
        let mounts = mountinfo::parse_mountinfo(&text).map_err(|reason| CgroupError::Parse {
            path: cfg.mountinfo.clone(),
            reason,
        })?;
        match cfg.backend {
            Backend::V2 => {
                let plan = v2::detect(cfg, &mounts)?.map_err(CgroupError::V2Unavailable)?;
                Ok(Cgroups::V2(plan.prepare()?))
            }
            Backend::V1 => {
                let plan = v1::detect(cfg, &mounts)?.map_err(CgroupError::V1Unavailable)?;
                Ok(Cgroups::V1(plan.prepare()?))
            }
            Backend::Auto => match v2::detect(cfg, &mounts)? {
                Ok(plan) => Ok(Cgroups::V2(plan.prepare()?)),
                Err(v2) => match v1::detect(cfg, &mounts)? {
                    Ok(plan) => Ok(Cgroups::V1(plan.prepare()?)),
                    Err(v1) => Err(CgroupError::NoBackend { v2, v1 }),
                },
            },
        }
    }

    /// `"cgroup v2"` or `"cgroup v1"`, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Cgroups::V1(_) => "cgroup v1",
            Cgroups::V2(_) => "cgroup v2",
        }
    }

    /// Creates the job's group and writes every limit into it. A limit the host cannot
    /// enforce (a missing control file, a value the kernel refuses, a device that is not
    /// a block device) is an error naming the limit, and the half-created group is
    /// removed.
    ///
    /// Swap is turned off for the job (`memory.swap.max` 0 on v2,
    /// `memory.memsw.limit_in_bytes` equal to the memory limit on v1). A kernel without
    /// swap accounting has no such file; that is accepted only while the host has no
    /// active swap area, since then the job cannot swap anyway.
    pub fn create(&self, job: &JobId, limits: &ResolvedLimits) -> Result<JobGroup, CgroupError> {
        match self {
            Cgroups::V1(b) => b.create(job, limits),
            Cgroups::V2(b) => b.create(job, limits),
        }
    }

    /// Kills every process of the group with SIGKILL: `cgroup.kill` on v2; on v1 the
    /// group is frozen, every pid in it is killed, and it is thawed.
    pub fn kill(&self, g: &JobGroup) -> Result<(), CgroupError> {
        match self {
            Cgroups::V1(b) => b.kill(g),
            Cgroups::V2(b) => b.kill(g),
        }
    }

    /// What the job consumed so far.
    pub fn usage(&self, g: &JobGroup) -> Usage {
        match self {
            Cgroups::V1(b) => b.usage(g),
            Cgroups::V2(b) => b.usage(g),
        }
    }

    /// What the job uses now: memory, processes, CPU time so far.
    pub fn live(&self, g: &JobGroup) -> LiveUsage {
        match self {
            Cgroups::V1(b) => b.live(g),
            Cgroups::V2(b) => b.live(g),
        }
    }

    /// Removes the group's directories. The group empties asynchronously right after the
    /// job's last process is reaped, so a busy group is retried a few times within about
    /// half a second; this blocks, so call it off the async runtime.
    pub fn remove(&self, g: &JobGroup) -> Result<(), CgroupError> {
        let dirs = match self {
            Cgroups::V1(b) => b.dirs(),
            Cgroups::V2(b) => b.dirs(),
        };
        fs::remove_dirs(dirs, g.dirs.iter().rev())
    }

    /// Caps all jobs together: memory, pids and CPU on the group above every job group
    /// (v2: `jobs/`; v1: the parent in the memory, pids and cpu hierarchies). The kernel
    /// then holds the sum of the jobs however many run and whatever their own limits.
    /// Call it after [`Cgroups::reap_stale`], so no job of a previous run is in the way.
    pub fn set_totals(&self, t: &crate::totals::Totals) -> Result<(), CgroupError> {
        let quota = cpu_quota_usec(u32::try_from(t.cpu_millis).unwrap_or(u32::MAX));
        match self {
            Cgroups::V1(b) => b.set_totals(t.memory_bytes, t.pids, quota),
            Cgroups::V2(b) => b.set_totals(t.memory_bytes, t.pids, quota),
        }
    }

    /// Kills and removes the job groups a previous run left under the parent (directories
    /// named by a job id) and returns their ids: those jobs are lost whatever happens to
    /// their groups. A group that cannot be killed or removed is logged as an error and
    /// left for the next start-up; only failing to list the parent is an error here.
    pub fn reap_stale(&self) -> Result<Vec<JobId>, CgroupError> {
        match self {
            Cgroups::V1(b) => b.reap_stale(),
            Cgroups::V2(b) => b.reap_stale(),
        }
    }
}

/// Reads a whole file.
fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Checks a configured parent: relative, made of plain names only.
fn check_parent(parent: &str) -> Result<PathBuf, CgroupError> {
    use std::path::Component;
    let invalid = |reason| CgroupError::InvalidParent {
        parent: parent.to_owned(),
        reason,
    };
    let trimmed = parent.trim_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("it names no group"));
    }
    let path = Path::new(trimmed);
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            _ => {
                return Err(invalid(
                    "only plain group names separated by '/' are allowed",
                ));
            }
        }
    }
    if trimmed.split('/').any(str::is_empty) {
        return Err(invalid("it contains an empty component"));
    }
    Ok(path.to_owned())
}

/// Lists the subdirectories of `dir` named by a job id.
fn job_dirs(dir: &Path) -> Result<Vec<JobId>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir
            && let Some(name) = entry.file_name().to_str()
            && let Ok(id) = name.parse::<JobId>()
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Whether the host has an active swap area, from `/proc/swaps` (a header line, then one
/// line per area).
fn host_has_swap(swaps: &Path) -> Result<bool, CgroupError> {
    Ok(read(swaps)?.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// The io limit's device number, after checking that it is a block device.
fn block_device(device: &str) -> Result<(u32, u32), CgroupError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(device).map_err(|source| CgroupError::IoDevice {
        device: device.to_owned(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(CgroupError::NotBlockDevice {
            device: device.to_owned(),
        });
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

#[cfg(test)]
mod tests;
