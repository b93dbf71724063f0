//! Configuration: a TOML file (`--config`) and flags, flags winning. Every problem is an
//! error at start-up that names the key.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::users;

/// The jobworker executor: runs isolated, resource-limited jobs for the API server.
///
/// Runs as root and listens only on a Unix socket. Every setting can be given in the
/// TOML file named by --config; a flag overrides the file.
#[derive(Debug, Clone, Parser, Default)]
#[command(name = "jobworker-executor", version, about, long_about = None)]
#[command(
    after_long_help = "Example:\n  jobworker-executor --config /etc/jobworker/executor.toml\n  jobworker-executor --socket /run/jobworker/executor.sock --allow-uid 998 --job-user jobworker-job"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Path of the Unix socket to create (ignored under socket activation).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group (name or gid) that owns the socket; the API server's group.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Directory for job records and output.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Peer uid allowed to connect (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Peer gid allowed to connect (repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gid: Vec<u32>,
    /// Peer group, by name, allowed to connect (repeatable), e.g. the API server's group.
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub allow_group: Vec<String>,
    /// The ids jobs run as, FIRST-LAST: each job gets a user id (and the same group id)
    /// of its own from this range, none of which may exist in /etc/passwd or /etc/group
    /// [default: 600000-665535].
    #[arg(long, value_name = "FIRST-LAST")]
    pub job_ids: Option<IdRange>,
    /// Most jobs running at once.
    #[arg(long, value_name = "N")]
    pub max_running_jobs: Option<usize>,
    /// Most connections open at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections kept for short calls (start, stop, status, list, ...): long ones
    /// (output streams, attached runs and execs, waits) never take these.
    #[arg(long, value_name = "N")]
    pub control_connections: Option<usize>,
    /// Most output bytes kept per job; later output is dropped.
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Most finished jobs kept; the oldest are deleted first.
    #[arg(long, value_name = "N")]
    pub max_finished_jobs: Option<usize>,
    /// Milliseconds between SIGTERM and SIGKILL when stopping a job.
    #[arg(long, value_name = "MS")]
    pub stop_grace_ms: Option<u64>,
    /// Size of each job's private /tmp (and /var/tmp, /dev/shm) when it asks for none,
    /// in bytes.
    #[arg(long, value_name = "BYTES")]
    pub tmp_size_bytes: Option<u64>,
    /// Deadline of a job that asks for none, in milliseconds [default: 24 hours].
    #[arg(long, value_name = "MS")]
    pub default_timeout_ms: Option<u64>,
    /// Longest deadline a job may ask for, in milliseconds [default: 7 days].
    #[arg(long, value_name = "MS")]
    pub max_timeout_ms: Option<u64>,
    /// Default quota: most running jobs per owner [default: a quarter of
    /// --max-running-jobs]. Per-owner quotas are set in the file ([quotas.owners.NAME]).
    #[arg(long, value_name = "N")]
    pub quota_running_jobs: Option<u64>,
    /// Default quota: the most the memory limits of an owner's running jobs may add up
    /// to, in bytes [default: the running-jobs quota x the memory ceiling].
    #[arg(long, value_name = "BYTES")]
    pub quota_memory_bytes: Option<u64>,
    /// Default quota: the most the CPU limits of an owner's running jobs may add up to,
    /// in thousandths of a core [default: the running-jobs quota x the CPU ceiling].
    #[arg(long, value_name = "MILLIS")]
    pub quota_cpu_millis: Option<u64>,
    /// Default quota: the most the pids limits of an owner's running jobs may add up to
    /// [default: the running-jobs quota x the pids ceiling].
    #[arg(long, value_name = "N")]
    pub quota_pids: Option<u64>,
    /// Memory of all jobs together, in bytes [default: 80 % of the host's].
    #[arg(long, value_name = "BYTES")]
    pub total_memory_bytes: Option<u64>,
    /// Processes and threads of all jobs together [default: half of kernel.pid_max].
    #[arg(long, value_name = "N")]
    pub total_pids: Option<u64>,
    /// CPU of all jobs together, in thousandths of a core [default: 90 % of the CPUs].
    #[arg(long, value_name = "MILLIS")]
    pub total_cpu_millis: Option<u64>,
    /// cgroup backend: auto, v2 or v1.
    #[arg(long, value_name = "BACKEND")]
    pub cgroup_backend: Option<Backend>,
    /// Parent of the job groups: v2, a path below the cgroup2 mount (default: the
    /// executor's own, delegated group); v1, a name below each controller's mount
    /// (default: jobworker).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<String>,
    /// Highest CPU limit a job may ask for, in thousandths of a core (default: all cores).
    #[arg(long, value_name = "MILLIS")]
    pub ceiling_cpu_millis: Option<u32>,
    /// Highest memory limit a job may ask for, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub ceiling_memory_bytes: Option<u64>,
    /// Highest pids limit a job may ask for.
    #[arg(long, value_name = "N")]
    pub ceiling_pids: Option<u32>,
    /// Highest IO bytes-per-second limit a job may ask for.
    #[arg(long, value_name = "BPS")]
    pub ceiling_io_bps: Option<u64>,
    /// Highest IO operations-per-second limit a job may ask for.
    #[arg(long, value_name = "IOPS")]
    pub ceiling_io_iops: Option<u64>,
    /// Largest private /tmp size a job may ask for, in bytes [default: 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub ceiling_tmp_bytes: Option<u64>,
    /// Directory of the audit trail [default: STATE_DIR/audit].
    #[arg(long, value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Size at which an audit segment is closed and the next one begun, in bytes
    /// [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub audit_segment_bytes: Option<u64>,
    /// Audit segments kept; the oldest beyond this are deleted [default: 16].
    #[arg(long, value_name = "N")]
    pub audit_segments: Option<usize>,
    /// Tools instead of the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `jobworker-executor` does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `jobworker-executor audit ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Checks the whole hash chain of the audit trail and names the first broken record.
    ///
    /// Every segment, oldest first: each line must be a complete record, each segment
    /// must begin with its segment record, sequence numbers must rise by one, and each
    /// record's prev must be the SHA-256 of the record before it. Exits 0 when the trail
    /// is intact, 1 naming the first broken record otherwise.
    #[command(
        after_long_help = "Examples:\n  jobworker-executor audit verify\n  jobworker-executor audit verify /var/lib/jobworker/audit\n  jobworker-executor --config /etc/jobworker/executor.toml audit verify\n  # compare the end with the head hash of the last `audit trail closed` log line:\n  jobworker-executor audit verify --head 3f5c...e1"
    )]
    Verify {
        /// The trail's directory [default: the configured audit directory].
        dir: Option<PathBuf>,
        /// The hash the last record must have (from the executor's log, `head=`): shows
        /// a tail that was cut off.
        #[arg(long, value_name = "SHA256")]
        head: Option<String>,
    },
}

/// A range of user and group ids, `FIRST-LAST` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    /// How many ids (never zero: a range has its first id).
    pub fn count(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl std::str::FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected FIRST-LAST, e.g. 600000-665535");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first || last >= u32::MAX - 1 {
            return Err(format!(
                "{s:?}: ids must be above 0, below 4294967294, and FIRST no more than LAST"
            ));
        }
        Ok(IdRange { first, last })
    }
}

impl<'de> Deserialize<'de> for IdRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which cgroup backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// cgroup v2 when the host has a usable unified hierarchy, else v1.
    #[default]
    Auto,
    V2,
    V1,
}

/// The configuration file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    allowed_uids: Vec<u32>,
    #[serde(default)]
    allowed_gids: Vec<u32>,
    #[serde(default)]
    allowed_groups: Vec<String>,
    /// Removed: named here so the error can say what replaced them.
    job_user: Option<String>,
    job_group: Option<String>,
    job_ids: Option<IdRange>,
    #[serde(default)]
    binds: Vec<FileBind>,
    #[serde(default)]
    deadlines: FileDeadlines,
    #[serde(default)]
    quotas: FileQuotas,
    #[serde(default)]
    totals: crate::totals::TotalsConfig,
    max_running_jobs: Option<usize>,
    max_connections: Option<usize>,
    control_connections: Option<usize>,
    max_output_bytes: Option<u64>,
    max_finished_jobs: Option<usize>,
    stop_grace_ms: Option<u64>,
    tmp_size_bytes: Option<u64>,
    #[serde(default)]
    cgroup: FileCgroup,
    #[serde(default)]
    ceilings: FileCeilings,
    #[serde(default)]
    audit: FileAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    dir: Option<PathBuf>,
    segment_bytes: Option<u64>,
    segments: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBind {
    source: PathBuf,
    /// Default: the same path as the source.
    target: Option<PathBuf>,
    #[serde(default)]
    writable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeadlines {
    default_ms: Option<u64>,
    max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuotas {
    #[serde(default)]
    default: FileQuota,
    #[serde(default)]
    owners: std::collections::BTreeMap<String, FileQuota>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    running_jobs: Option<u64>,
    memory_bytes: Option<u64>,
    cpu_millis: Option<u64>,
    pids: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCgroup {
    backend: Option<Backend>,
    parent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCeilings {
    cpu_millis: Option<u32>,
    memory_bytes: Option<u64>,
    pids: Option<u32>,
    io_bps: Option<u64>,
    io_iops: Option<u64>,
    tmp_bytes: Option<u64>,
}

/// Highest limits a job may ask for; also the limits of a job that asks for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceilings {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub pids: u32,
    /// `None`: IO rates are not capped.
    pub io_bps: Option<u64>,
    pub io_iops: Option<u64>,
    /// Largest private tmpfs a job may ask for.
    pub tmp_bytes: u64,
    /// Longest time a job may ask to run.
    pub timeout: std::time::Duration,
}

/// What a job that asks for nothing gets, where that is not the ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Size of each private tmpfs.
    pub tmp_bytes: u64,
    /// Time until the job's deadline.
    pub timeout: std::time::Duration,
}

/// Per-owner quotas: `default` for every owner, `owners` field by field over it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuotaConfig {
    pub default: jobworker_protocol::QuotaLimits,
    pub owners: std::collections::BTreeMap<String, jobworker_protocol::QuotaLimits>,
}

impl QuotaConfig {
    /// The quotas of `owner`.
    pub fn of(&self, owner: &str) -> jobworker_protocol::QuotaLimits {
        self.owners.get(owner).copied().unwrap_or(self.default)
    }
}

pub use crate::ipc::spec::Bind;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_gid: Option<u32>,
    pub state_dir: PathBuf,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// The ids jobs run as, one per job.
    pub job_ids: IdRange,
    /// Host paths every job sees, validated at start-up.
    pub binds: Vec<Bind>,
    pub defaults: Defaults,
    pub quotas: QuotaConfig,
    /// Totals for all jobs together, as configured (resolved against the host at
    /// start-up: see [`crate::totals`]).
    pub totals: crate::totals::TotalsConfig,
    pub max_running_jobs: usize,
    pub max_connections: usize,
    /// Of `max_connections`, those long calls never take.
    pub control_connections: usize,
    pub max_output_bytes: u64,
    pub max_finished_jobs: usize,
    pub stop_grace: std::time::Duration,
    pub cgroup_backend: Backend,
    pub cgroup_parent: Option<String>,
    pub ceilings: Ceilings,
    pub audit: crate::audit::AuditConfig,
}

pub const DEFAULT_SOCKET: &str = "/run/jobworker/executor.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jobworker";
/// Default size at which an audit segment is closed.
pub const DEFAULT_AUDIT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default number of audit segments kept.
pub const DEFAULT_AUDIT_SEGMENTS: usize = 16;
/// Smallest audit segment size allowed (a segment always takes at least one commit).
pub const MIN_AUDIT_SEGMENT_BYTES: u64 = 1024;
/// The default range of job ids: 65,536 ids that no Debian or systemd convention uses.
pub const DEFAULT_JOB_IDS: IdRange = IdRange {
    first: 600_000,
    last: 665_535,
};

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Loads the file named by the flags (if any), applies the flags, validates.
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let db = users::Db::system();
        match flags.config.clone() {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::from_text(&path, &text, flags, &db)
            }
            None => Self::merge(flags, FileConfig::default(), &db),
        }
    }

    /// The file's text (read from `path`) with the flags applied, users and groups
    /// resolved in `db`: everything [`Config::load`] does past reading files. Pure, so
    /// it is fuzzed as is.
    pub fn from_text(
        path: &Path,
        text: &str,
        flags: Flags,
        db: &users::Db,
    ) -> Result<Self, ConfigError> {
        Self::merge(flags, parse_file(path, text)?, db)
    }

    /// The flags over the file over the defaults, each key validated as it is taken.
    fn merge(flags: Flags, file: FileConfig, db: &users::Db) -> Result<Self, ConfigError> {
        let socket = flags
            .socket
            .clone()
            .or(file.socket.clone())
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        absolute("socket", &socket)?;
        let state_dir = flags
            .state_dir
            .clone()
            .or(file.state_dir.clone())
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        absolute("state_dir", &state_dir)?;
        let (allowed_uids, allowed_gids) = peers(&flags, &file, db)?;
        let job_ids = job_ids(&flags, &file, db)?;
        let binds = binds(&file.binds)?;
        let socket_gid = match flags.socket_group.clone().or(file.socket_group.clone()) {
            Some(g) => Some(
                db.group(&g)
                    .ok_or_else(|| invalid("socket_group", format!("no such group: {g:?}")))?,
            ),
            None => None,
        };
        let mut caps = caps(&flags, &file)?;
        caps.control_connections = flags
            .control_connections
            .or(file.control_connections)
            .unwrap_or(caps.max_connections / 8);
        if caps.control_connections >= caps.max_connections {
            return Err(invalid(
                "control_connections",
                format!(
                    "{} leaves no connection of max_connections ({}) for output streams",
                    caps.control_connections, caps.max_connections
                ),
            ));
        }
        let mut ceilings = ceilings(&flags, &file)?;
        if caps.tmp_size_bytes > ceilings.tmp_bytes {
            return Err(invalid(
                "tmp_size_bytes",
                format!(
                    "{} is above ceilings.tmp_bytes ({})",
                    caps.tmp_size_bytes, ceilings.tmp_bytes
                ),
            ));
        }
        if job_ids.count() < caps.max_running_jobs as u64 {
            return Err(invalid(
                "job_ids",
                format!(
                    "{} ids cannot give each of max_running_jobs ({}) jobs an id of its own",
                    job_ids.count(),
                    caps.max_running_jobs
                ),
            ));
        }
        let (timeout, max_timeout) = deadlines(&flags, &file)?;
        ceilings.timeout = max_timeout;
        let defaults = Defaults {
            tmp_bytes: caps.tmp_size_bytes,
            timeout,
        };
        let quotas = quotas(&flags, &file, &caps, &ceilings)?;
        let audit = audit(&flags, &file, &state_dir)?;
        Ok(Config {
            socket,
            socket_gid,
            state_dir,
            allowed_uids,
            allowed_gids,
            job_ids,
            binds,
            defaults,
            quotas,
            totals: crate::totals::TotalsConfig {
                memory_bytes: flags.total_memory_bytes.or(file.totals.memory_bytes),
                pids: flags.total_pids.or(file.totals.pids),
                cpu_millis: flags.total_cpu_millis.or(file.totals.cpu_millis),
            },
            max_running_jobs: caps.max_running_jobs,
            max_connections: caps.max_connections,
            control_connections: caps.control_connections,
            max_output_bytes: caps.max_output_bytes,
            max_finished_jobs: caps.max_finished_jobs,
            stop_grace: std::time::Duration::from_millis(caps.stop_grace_ms),
            cgroup_backend: flags
                .cgroup_backend
                .or(file.cgroup.backend)
                .unwrap_or_default(),
            cgroup_parent: flags.cgroup_parent.or(file.cgroup.parent),
            ceilings,
            audit,
        })
    }
}

/// The audit trail's place and rotation.
fn audit(
    flags: &Flags,
    file: &FileConfig,
    state_dir: &Path,
) -> Result<crate::audit::AuditConfig, ConfigError> {
    let dir = flags
        .audit_dir
        .clone()
        .or(file.audit.dir.clone())
        .unwrap_or_else(|| state_dir.join("audit"));
    absolute("audit.dir", &dir)?;
    let segment_bytes = flags
        .audit_segment_bytes
        .or(file.audit.segment_bytes)
        .unwrap_or(DEFAULT_AUDIT_SEGMENT_BYTES);
    if segment_bytes < MIN_AUDIT_SEGMENT_BYTES {
        return Err(invalid(
            "audit.segment_bytes",
            format!("{segment_bytes} is below {MIN_AUDIT_SEGMENT_BYTES}"),
        ));
    }
    let segments = flags
        .audit_segments
        .or(file.audit.segments)
        .unwrap_or(DEFAULT_AUDIT_SEGMENTS);
    if segments < 2 {
        return Err(invalid(
            "audit.segments",
            format!(
                "{segments}: at least 2 segments are kept (the current one and the one before)"
            ),
        ));
    }
    Ok(crate::audit::AuditConfig {
        dir,
        segment_bytes,
        segments,
    })
}

/// Who may connect: uids and gids, groups resolved in `db`; at least one.
fn peers(
    flags: &Flags,
    file: &FileConfig,
    db: &users::Db,
) -> Result<(Vec<u32>, Vec<u32>), ConfigError> {
    let mut allowed_uids = file.allowed_uids.clone();
    allowed_uids.extend(&flags.allow_uid);
    let mut allowed_gids = file.allowed_gids.clone();
    allowed_gids.extend(&flags.allow_gid);
    for name in file.allowed_groups.iter().chain(&flags.allow_group) {
        let gid = db
            .group(name)
            .ok_or_else(|| invalid("allowed_groups", format!("no such group: {name:?}")))?;
        allowed_gids.push(gid);
    }
    if allowed_uids.is_empty() && allowed_gids.is_empty() {
        return Err(invalid(
            "allowed_uids",
            "no peer may connect: set allowed_uids, allowed_gids or allowed_groups (--allow-uid/--allow-gid/--allow-group) to the API server's account",
        ));
    }
    Ok((allowed_uids, allowed_gids))
}

/// The ids jobs run as: none of them may belong to an account or a group of this host,
/// so no job can ever act as one of them (files, signals, ptrace).
fn job_ids(flags: &Flags, file: &FileConfig, db: &users::Db) -> Result<IdRange, ConfigError> {
    for (key, present) in [
        ("job_user", flags_or_file_has(&file.job_user)),
        ("job_group", flags_or_file_has(&file.job_group)),
    ] {
        if present {
            return Err(invalid(
                key,
                "removed: every job now runs as a user and group id of its own, from job_ids",
            ));
        }
    }
    let range = flags.job_ids.or(file.job_ids).unwrap_or(DEFAULT_JOB_IDS);
    if let Some(u) = db
        .users()
        .find(|u| range.contains(u.uid) || range.contains(u.gid))
    {
        return Err(invalid(
            "job_ids",
            format!(
                "{}-{} includes the ids of the user {:?} ({}:{}); choose ids no account uses",
                range.first, range.last, u.name, u.uid, u.gid
            ),
        ));
    }
    if let Some((name, gid)) = db.groups().find(|(_, g)| range.contains(*g)) {
        return Err(invalid(
            "job_ids",
            format!(
                "{}-{} includes the id of the group {name:?} ({gid}); choose ids no group uses",
                range.first, range.last
            ),
        ));
    }
    Ok(range)
}

fn flags_or_file_has(v: &Option<String>) -> bool {
    v.is_some()
}

/// Paths the jobs see in the places the job's view does not own. Sources and targets
/// are absolute, clean and exist (the target in the host's tree, as the job's view is
/// built over it).
fn binds(file: &[FileBind]) -> Result<Vec<Bind>, ConfigError> {
    /// Places the job's view replaces or hides: a bind there would be covered.
    const OWNED: [&str; 8] = [
        "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/home", "/root",
    ];
    let mut out = Vec::new();
    for b in file {
        let target = b.target.clone().unwrap_or_else(|| b.source.clone());
        for (what, p) in [("source", &b.source), ("target", &target)] {
            let clean = p.is_absolute()
                && p.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            let text = p.to_str().filter(|_| clean).ok_or_else(|| {
                invalid(
                    "binds",
                    format!(
                        "{what} {}: must be an absolute path without . or ..",
                        p.display()
                    ),
                )
            })?;
            if !p.exists() {
                return Err(invalid(
                    "binds",
                    format!("{what} {text}: no such file or directory"),
                ));
            }
            if what == "target" && (text == "/" || OWNED.iter().any(|o| p.starts_with(o))) {
                return Err(invalid(
                    "binds",
                    format!("target {text}: the job's own view replaces it; choose another place"),
                ));
            }
        }
        if b.source.is_dir() != target.is_dir() {
            return Err(invalid(
                "binds",
                format!(
                    "{} and {}: a directory binds onto a directory, a file onto a file",
                    b.source.display(),
                    target.display()
                ),
            ));
        }
        out.push(Bind {
            source: b.source.display().to_string(),
            target: target.display().to_string(),
            writable: b.writable,
        });
    }
    Ok(out)
}

/// The default deadline and the longest one a job may ask for.
fn deadlines(
    flags: &Flags,
    file: &FileConfig,
) -> Result<(std::time::Duration, std::time::Duration), ConfigError> {
    let ms = |key, v: Option<u64>, default| positive(key, v, default);
    let default = ms(
        "deadlines.default_ms",
        flags.default_timeout_ms.or(file.deadlines.default_ms),
        24 * 3600 * 1000,
    )?;
    let max = ms(
        "deadlines.max_ms",
        flags.max_timeout_ms.or(file.deadlines.max_ms),
        7 * 24 * 3600 * 1000,
    )?;
    if default > max {
        return Err(invalid(
            "deadlines.default_ms",
            format!("{default} is above deadlines.max_ms ({max})"),
        ));
    }
    Ok((
        std::time::Duration::from_millis(default),
        std::time::Duration::from_millis(max),
    ))
}

/// The default quota (each amount its key; by default a quarter of `max_running_jobs`,
/// and for the sums that many jobs at the ceilings, so that only the number of jobs binds
/// until an administrator tightens a sum) and the per-owner overrides, field by field over
/// it.
fn quotas(
    flags: &Flags,
    file: &FileConfig,
    caps: &Caps,
    c: &Ceilings,
) -> Result<QuotaConfig, ConfigError> {
    let d = &file.quotas.default;
    let share = |key, v: Option<u64>, default: u64| positive(key, v, default).map(Some);
    let running = positive(
        "quotas.default.running_jobs",
        flags.quota_running_jobs.or(d.running_jobs),
        (caps.max_running_jobs as u64 / 4).max(1),
    )?;
    let default = jobworker_protocol::QuotaLimits {
        running_jobs: Some(running),
        memory_bytes: share(
            "quotas.default.memory_bytes",
            flags.quota_memory_bytes.or(d.memory_bytes),
            c.memory_bytes.saturating_mul(running),
        )?,
        cpu_millis: share(
            "quotas.default.cpu_millis",
            flags.quota_cpu_millis.or(d.cpu_millis),
            u64::from(c.cpu_millis).saturating_mul(running),
        )?,
        pids: share(
            "quotas.default.pids",
            flags.quota_pids.or(d.pids),
            u64::from(c.pids).saturating_mul(running),
        )?,
    };
    let mut owners = std::collections::BTreeMap::new();
    for (owner, q) in &file.quotas.owners {
        jobworker_protocol::validate::owner(owner)
            .map_err(|e| invalid("quotas.owners", format!("{owner:?}: {}", e.message)))?;
        let over = |v: Option<u64>, d: Option<u64>| match v {
            Some(0) => Err(invalid(
                "quotas.owners",
                format!("{owner:?}: a quota must be greater than zero"),
            )),
            Some(v) => Ok(Some(v)),
            None => Ok(d),
        };
        owners.insert(
            owner.clone(),
            jobworker_protocol::QuotaLimits {
                running_jobs: over(q.running_jobs, default.running_jobs)?,
                memory_bytes: over(q.memory_bytes, default.memory_bytes)?,
                cpu_millis: over(q.cpu_millis, default.cpu_millis)?,
                pids: over(q.pids, default.pids)?,
            },
        );
    }
    Ok(QuotaConfig { default, owners })
}

/// A value that must be above zero, or the default when unset.
fn positive(key: &'static str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "must be greater than zero")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// The executor's caps and timings.
struct Caps {
    max_running_jobs: usize,
    max_connections: usize,
    control_connections: usize,
    max_output_bytes: u64,
    max_finished_jobs: usize,
    stop_grace_ms: u64,
    tmp_size_bytes: u64,
}

fn caps(flags: &Flags, file: &FileConfig) -> Result<Caps, ConfigError> {
    let count = |key, flag: Option<usize>, file: Option<usize>, default| {
        positive(key, flag.or(file).map(|v| v as u64), default).map(|v| v as usize)
    };
    Ok(Caps {
        max_running_jobs: count(
            "max_running_jobs",
            flags.max_running_jobs,
            file.max_running_jobs,
            256,
        )?,
        max_connections: count(
            "max_connections",
            flags.max_connections,
            file.max_connections,
            2048,
        )?,
        // An eighth of the connections by default (256 of 2,048); 0 keeps none.
        control_connections: 0,
        max_output_bytes: positive(
            "max_output_bytes",
            flags.max_output_bytes.or(file.max_output_bytes),
            64 << 20,
        )?,
        max_finished_jobs: count(
            "max_finished_jobs",
            flags.max_finished_jobs,
            file.max_finished_jobs,
            1000,
        )?,
        stop_grace_ms: flags.stop_grace_ms.or(file.stop_grace_ms).unwrap_or(5000),
        tmp_size_bytes: positive(
            "tmp_size_bytes",
            flags.tmp_size_bytes.or(file.tmp_size_bytes),
            64 << 20,
        )?,
    })
}

/// The highest limits a job may ask for (and the limits of a job that asks for none).
fn ceilings(flags: &Flags, file: &FileConfig) -> Result<Ceilings, ConfigError> {
    let c = &file.ceilings;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu_millis = positive(
        "ceilings.cpu_millis",
        flags.ceiling_cpu_millis.or(c.cpu_millis).map(u64::from),
        cores * 1000,
    )?;
    let cpu_millis =
        u32::try_from(cpu_millis).map_err(|_| invalid("ceilings.cpu_millis", "too large"))?;
    let pids = positive(
        "ceilings.pids",
        flags.ceiling_pids.or(c.pids).map(u64::from),
        1024,
    )?;
    let pids = u32::try_from(pids).map_err(|_| invalid("ceilings.pids", "too large"))?;
    let memory_bytes = positive(
        "ceilings.memory_bytes",
        flags.ceiling_memory_bytes.or(c.memory_bytes),
        1 << 30,
    )?;
    if memory_bytes < 4 << 20 {
        return Err(invalid(
            "ceilings.memory_bytes",
            "must be at least 4 MiB (a job's init needs some memory too)",
        ));
    }
    let rate = |key: &'static str, v: Option<u64>| match v {
        Some(0) => Err(invalid(key, "must be greater than zero")),
        v => Ok(v),
    };
    Ok(Ceilings {
        cpu_millis,
        memory_bytes,
        pids,
        io_bps: rate("ceilings.io_bps", flags.ceiling_io_bps.or(c.io_bps))?,
        io_iops: rate("ceilings.io_iops", flags.ceiling_io_iops.or(c.io_iops))?,
        tmp_bytes: positive(
            "ceilings.tmp_bytes",
            flags.ceiling_tmp_bytes.or(c.tmp_bytes),
            1 << 30,
        )?,
        // Set from the deadlines by the caller.
        timeout: std::time::Duration::MAX,
    })
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn absolute(key: &'static str, p: &Path) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{} is not an absolute path", p.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> users::Db {
        users::Db::parse(
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/:/usr/sbin/nologin\njobworker-job:x:990:990::/:/usr/sbin/nologin\n",
            "root:x:0:\nnogroup:x:65534:\njobworker-job:x:990:\njobworker:x:991:\n",
        )
    }

    fn flags() -> Flags {
        Flags {
            allow_uid: vec![991],
            ..Default::default()
        }
    }

    fn err(r: Result<Config, ConfigError>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults_are_sensible() {
        let c = Config::merge(flags(), FileConfig::default(), &db()).unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.job_ids, DEFAULT_JOB_IDS);
        assert_eq!(c.max_running_jobs, 256);
        assert_eq!(c.defaults.tmp_bytes, 64 << 20);
        assert_eq!(c.defaults.timeout, std::time::Duration::from_secs(86_400));
        assert_eq!(
            c.ceilings.timeout,
            std::time::Duration::from_secs(7 * 86_400)
        );
        assert_eq!(c.ceilings.tmp_bytes, 1 << 30);
        assert_eq!(c.quotas.default.running_jobs, Some(64));
        assert_eq!(c.quotas.default.memory_bytes, Some(64 << 30));
        assert!(c.binds.is_empty());
        assert_eq!(c.stop_grace, std::time::Duration::from_secs(5));
        assert_eq!(c.ceilings.memory_bytes, 1 << 30);
        assert_eq!(c.cgroup_backend, Backend::Auto);
    }

    #[test]
    fn the_file_is_read_and_flags_win() {
        let file = parse_file(
            Path::new("x.toml"),
            r#"
            socket = "/tmp/a.sock"
            socket_group = "jobworker"
            allowed_uids = [5]
            job_ids = "700000-700099"
            max_running_jobs = 3
            [cgroup]
            backend = "v1"
            parent = "jw"
            [ceilings]
            cpu_millis = 500
            memory_bytes = 268435456
            "#,
        )
        .unwrap();
        let mut f = flags();
        f.max_running_jobs = Some(7);
        let c = Config::merge(f, file, &db()).unwrap();
        assert_eq!(c.socket, Path::new("/tmp/a.sock"));
        assert_eq!(c.socket_gid, Some(991));
        assert_eq!(c.allowed_uids, vec![5, 991]);
        assert_eq!(
            c.job_ids,
            IdRange {
                first: 700_000,
                last: 700_099
            }
        );
        assert_eq!(c.max_running_jobs, 7);
        assert_eq!(c.cgroup_backend, Backend::V1);
        assert_eq!(c.cgroup_parent.as_deref(), Some("jw"));
        assert_eq!(c.ceilings.cpu_millis, 500);
        assert_eq!(c.ceilings.memory_bytes, 256 << 20);
    }

    #[test]
    fn the_audit_trail_defaults_to_the_state_dir_and_its_bounds_are_checked() {
        let c = Config::merge(flags(), FileConfig::default(), &db()).unwrap();
        assert_eq!(c.audit.dir, Path::new(DEFAULT_STATE_DIR).join("audit"));
        assert_eq!(c.audit.segment_bytes, DEFAULT_AUDIT_SEGMENT_BYTES);
        assert_eq!(c.audit.segments, DEFAULT_AUDIT_SEGMENTS);
        let file = |text: &str| parse_file(Path::new("x.toml"), text).unwrap();
        let c = Config::merge(
            flags(),
            file("[audit]\ndir = \"/var/log/jw\"\nsegment_bytes = 4096\nsegments = 3"),
            &db(),
        )
        .unwrap();
        assert_eq!(
            (
                c.audit.dir.as_path(),
                c.audit.segment_bytes,
                c.audit.segments
            ),
            (Path::new("/var/log/jw"), 4096, 3)
        );
        for (text, key) in [
            ("[audit]\nsegment_bytes = 10", "audit.segment_bytes"),
            ("[audit]\nsegments = 1", "audit.segments"),
            ("[audit]\ndir = \"relative\"", "audit.dir"),
        ] {
            let e = Config::merge(flags(), file(text), &db()).unwrap_err();
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let e = parse_file(Path::new("x.toml"), "sockte = \"/a\"").unwrap_err();
        assert!(e.to_string().contains("sockte"), "{e}");
        let e = parse_file(Path::new("x.toml"), "[ceilings]\npids = \"many\"").unwrap_err();
        assert!(e.to_string().contains("pids"), "{e}");
    }

    #[test]
    fn refuses_missing_peers_and_relative_paths() {
        assert!(
            err(Config::merge(
                Flags::default(),
                FileConfig::default(),
                &db()
            ))
            .starts_with("allowed_uids:")
        );
        let mut f = flags();
        f.socket = Some("rel.sock".into());
        assert!(err(Config::merge(f, FileConfig::default(), &db())).starts_with("socket:"));
    }

    #[test]
    fn job_ids_belong_to_no_account_and_cover_every_running_job() {
        let file = |text: &str| parse_file(Path::new("x.toml"), text).unwrap();
        // The old single job user is gone, with a message that says what replaced it.
        assert_eq!(
            err(Config::merge(flags(), file("job_user = \"nobody\""), &db())),
            "job_user: removed: every job now runs as a user and group id of its own, from job_ids"
        );
        let mut f = flags();
        f.job_ids = Some("65000-66000".parse().unwrap());
        assert_eq!(
            err(Config::merge(f, FileConfig::default(), &db())),
            "job_ids: 65000-66000 includes the ids of the user \"nobody\" (65534:65534); choose ids no account uses"
        );
        let mut f = flags();
        f.job_ids = Some("991-995".parse().unwrap());
        let e = err(Config::merge(f, FileConfig::default(), &db()));
        assert!(
            e.starts_with("job_ids: 991-995 includes the id of the group \"jobworker\""),
            "{e}"
        );
        let mut f = flags();
        f.job_ids = Some("700000-700009".parse().unwrap());
        assert_eq!(
            err(Config::merge(f, FileConfig::default(), &db())),
            "job_ids: 10 ids cannot give each of max_running_jobs (256) jobs an id of its own"
        );
        for bad in ["0-10", "10-5", "x-1", "5", "1-4294967295"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn binds_are_absolute_existing_and_outside_the_jobs_own_places() {
        // Not under /tmp, which jobs get a tmpfs of their own for.
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let src = std::fs::canonicalize(dir.path()).unwrap().join("data");
        std::fs::create_dir(&src).unwrap();
        let file = |text: String| parse_file(Path::new("x.toml"), &text);
        let ok = file(format!(
            "[[binds]]\nsource = \"{}\"\nwritable = true\n[[binds]]\nsource = \"{}\"\ntarget = \"/usr\"",
            src.display(),
            src.display()
        ))
        .unwrap();
        let c = Config::merge(flags(), ok, &db()).unwrap();
        assert_eq!(c.binds.len(), 2);
        assert_eq!(c.binds[0].target, src.display().to_string());
        assert!(c.binds[0].writable && !c.binds[1].writable);
        let cases = [
            (
                "source = \"relative\"".to_string(),
                "binds: source relative: must be an absolute path without . or ..",
            ),
            (
                format!("source = \"{}/../data\"", src.display()),
                "must be an absolute path without . or ..",
            ),
            (
                "source = \"/no/such/dir\"".to_string(),
                "binds: source /no/such/dir: no such file or directory",
            ),
            (
                format!("source = \"{}\"\ntarget = \"/tmp\"", src.display()),
                "binds: target /tmp: the job's own view replaces it; choose another place",
            ),
            (
                format!("source = \"{}\"\ntarget = \"/etc/hostname\"", src.display()),
                "a directory binds onto a directory, a file onto a file",
            ),
        ];
        for (bind, want) in cases {
            let e = err(Config::merge(
                flags(),
                file(format!("[[binds]]\n{bind}")).unwrap(),
                &db(),
            ));
            assert!(e.contains(want), "{bind}: {e}");
        }
    }

    #[test]
    fn deadlines_tmp_sizes_and_quotas_are_consistent() {
        let file = |text: &str| parse_file(Path::new("x.toml"), text).unwrap();
        let e = err(Config::merge(
            flags(),
            file("[deadlines]\ndefault_ms = 10\nmax_ms = 5"),
            &db(),
        ));
        assert_eq!(e, "deadlines.default_ms: 10 is above deadlines.max_ms (5)");
        let e = err(Config::merge(
            flags(),
            file("tmp_size_bytes = 2048\n[ceilings]\ntmp_bytes = 1024"),
            &db(),
        ));
        assert_eq!(e, "tmp_size_bytes: 2048 is above ceilings.tmp_bytes (1024)");
        let c = Config::merge(
            flags(),
            file("[quotas.default]\nrunning_jobs = 4\n[quotas.owners.carol]\nmemory_bytes = 1024"),
            &db(),
        )
        .unwrap();
        let carol = c.quotas.of("carol");
        assert_eq!(
            (carol.running_jobs, carol.memory_bytes),
            (Some(4), Some(1024))
        );
        assert_eq!(c.quotas.of("alice").running_jobs, Some(4));
        let e = err(Config::merge(
            flags(),
            file("[quotas.owners.carol]\npids = 0"),
            &db(),
        ));
        assert_eq!(
            e,
            "quotas.owners: \"carol\": a quota must be greater than zero"
        );
    }

    #[test]
    fn peer_groups_are_resolved_by_name() {
        let file = parse_file(Path::new("x.toml"), "allowed_groups = [\"jobworker\"]").unwrap();
        let f = Flags {
            allow_group: vec!["nogroup".into()],
            ..Default::default()
        };
        let c = Config::merge(f, file, &db()).unwrap();
        assert_eq!(c.allowed_gids, vec![991, 65534]);
        let file = parse_file(Path::new("x.toml"), "allowed_groups = [\"ghosts\"]").unwrap();
        assert_eq!(
            err(Config::merge(Flags::default(), file, &db())),
            "allowed_groups: no such group: \"ghosts\""
        );
    }

    #[test]
    fn zero_caps_are_refused() {
        let mut f = flags();
        f.max_connections = Some(0);
        assert_eq!(
            err(Config::merge(f, FileConfig::default(), &db())),
            "max_connections: must be greater than zero"
        );
        let mut f = flags();
        f.max_connections = Some(100);
        f.control_connections = Some(100);
        assert_eq!(
            err(Config::merge(f, FileConfig::default(), &db())),
            "control_connections: 100 leaves no connection of max_connections (100) for output streams"
        );
        let c = Config::merge(flags(), FileConfig::default(), &db()).unwrap();
        assert_eq!((c.max_connections, c.control_connections), (2048, 256));
        let mut f = flags();
        f.ceiling_memory_bytes = Some(1024);
        assert!(
            err(Config::merge(f, FileConfig::default(), &db()))
                .starts_with("ceilings.memory_bytes")
        );
    }
}
