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
#[derive(Debug, Parser, Default)]
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
    /// User (name or uid) that jobs run as; never root.
    #[arg(long, value_name = "USER")]
    pub job_user: Option<String>,
    /// Group (name or gid) that jobs run as; default: the job user's primary group.
    #[arg(long, value_name = "GROUP")]
    pub job_group: Option<String>,
    /// Most jobs running at once.
    #[arg(long, value_name = "N")]
    pub max_running_jobs: Option<usize>,
    /// Most connections open at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most output bytes kept per job; later output is dropped.
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Most finished jobs kept; the oldest are deleted first.
    #[arg(long, value_name = "N")]
    pub max_finished_jobs: Option<usize>,
    /// Milliseconds between SIGTERM and SIGKILL when stopping a job.
    #[arg(long, value_name = "MS")]
    pub stop_grace_ms: Option<u64>,
    /// Size of each job's private /tmp, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub tmp_size_bytes: Option<u64>,
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
    job_user: Option<String>,
    job_group: Option<String>,
    max_running_jobs: Option<usize>,
    max_connections: Option<usize>,
    max_output_bytes: Option<u64>,
    max_finished_jobs: Option<usize>,
    stop_grace_ms: Option<u64>,
    tmp_size_bytes: Option<u64>,
    #[serde(default)]
    cgroup: FileCgroup,
    #[serde(default)]
    ceilings: FileCeilings,
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_gid: Option<u32>,
    pub state_dir: PathBuf,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub job_uid: u32,
    pub job_gid: u32,
    pub job_user_name: String,
    pub max_running_jobs: usize,
    pub max_connections: usize,
    pub max_output_bytes: u64,
    pub max_finished_jobs: usize,
    pub stop_grace: std::time::Duration,
    pub tmp_size_bytes: u64,
    pub cgroup_backend: Backend,
    pub cgroup_parent: Option<String>,
    pub ceilings: Ceilings,
}

pub const DEFAULT_SOCKET: &str = "/run/jobworker/executor.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jobworker";
pub const DEFAULT_JOB_USER: &str = "jobworker-job";

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
        let (user, job_gid) = job_identity(&flags, &file, db)?;
        let socket_gid = match flags.socket_group.clone().or(file.socket_group.clone()) {
            Some(g) => Some(
                db.group(&g)
                    .ok_or_else(|| invalid("socket_group", format!("no such group: {g:?}")))?,
            ),
            None => None,
        };
        let caps = caps(&flags, &file)?;
        let ceilings = ceilings(&flags, &file)?;
        Ok(Config {
            socket,
            socket_gid,
            state_dir,
            allowed_uids,
            allowed_gids,
            job_uid: user.uid,
            job_gid,
            job_user_name: user.name,
            max_running_jobs: caps.max_running_jobs,
            max_connections: caps.max_connections,
            max_output_bytes: caps.max_output_bytes,
            max_finished_jobs: caps.max_finished_jobs,
            stop_grace: std::time::Duration::from_millis(caps.stop_grace_ms),
            tmp_size_bytes: caps.tmp_size_bytes,
            cgroup_backend: flags
                .cgroup_backend
                .or(file.cgroup.backend)
                .unwrap_or_default(),
            cgroup_parent: flags.cgroup_parent.or(file.cgroup.parent),
            ceilings,
        })
    }
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

/// The job user and group, never root.
fn job_identity(
    flags: &Flags,
    file: &FileConfig,
    db: &users::Db,
) -> Result<(users::User, u32), ConfigError> {
    let user_spec = flags
        .job_user
        .clone()
        .or(file.job_user.clone())
        .unwrap_or_else(|| DEFAULT_JOB_USER.into());
    let user = db
        .user(&user_spec)
        .ok_or_else(|| invalid("job_user", format!("no such user: {user_spec:?}")))?;
    let job_gid = match flags.job_group.clone().or(file.job_group.clone()) {
        Some(g) => db
            .group(&g)
            .ok_or_else(|| invalid("job_group", format!("no such group: {g:?}")))?,
        None => user.gid,
    };
    if user.uid == 0 {
        return Err(invalid("job_user", "jobs never run as root (uid 0)"));
    }
    if job_gid == 0 {
        return Err(invalid("job_group", "jobs never run with gid 0"));
    }
    Ok((user, job_gid))
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
            1024,
        )?,
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
        assert_eq!((c.job_uid, c.job_gid), (990, 990));
        assert_eq!(c.max_running_jobs, 256);
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
            job_user = "nobody"
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
        assert_eq!((c.job_uid, c.job_gid), (65534, 65534));
        assert_eq!(c.max_running_jobs, 7);
        assert_eq!(c.cgroup_backend, Backend::V1);
        assert_eq!(c.cgroup_parent.as_deref(), Some("jw"));
        assert_eq!(c.ceilings.cpu_millis, 500);
        assert_eq!(c.ceilings.memory_bytes, 256 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let e = parse_file(Path::new("x.toml"), "sockte = \"/a\"").unwrap_err();
        assert!(e.to_string().contains("sockte"), "{e}");
        let e = parse_file(Path::new("x.toml"), "[ceilings]\npids = \"many\"").unwrap_err();
        assert!(e.to_string().contains("pids"), "{e}");
    }

    #[test]
    fn refuses_root_jobs_and_missing_peers_and_relative_paths() {
        let mut f = flags();
        f.job_user = Some("root".into());
        assert!(
            err(Config::merge(f, FileConfig::default(), &db()))
                .starts_with("job_user: jobs never run as root")
        );
        let mut f = flags();
        f.job_user = Some("0".into());
        assert!(err(Config::merge(f, FileConfig::default(), &db())).starts_with("job_user:"));
        let mut f = flags();
        f.job_group = Some("root".into());
        assert!(err(Config::merge(f, FileConfig::default(), &db())).starts_with("job_group:"));
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
        let mut f = flags();
        f.job_user = Some("ghost".into());
        assert_eq!(
            err(Config::merge(f, FileConfig::default(), &db())),
            "job_user: no such user: \"ghost\""
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
        f.ceiling_memory_bytes = Some(1024);
        assert!(
            err(Config::merge(f, FileConfig::default(), &db()))
                .starts_with("ceilings.memory_bytes")
        );
    }
}
