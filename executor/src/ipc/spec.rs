//! The init spec: what a job's init needs to know, prepared and validated by the
//! executor, written once into a pipe as JSON (at most [`MAX_SPEC_LEN`] bytes).

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest spec the init reads.
pub const MAX_SPEC_LEN: usize = 1024 * 1024;

/// What the init needs to know, prepared and validated by the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    pub argv: Vec<String>,
    /// The complete environment of the command, `NAME=value`.
    pub env: Vec<String>,
    /// The job's own user and group ids, never 0.
    pub uid: u32,
    pub gid: u32,
    /// The name the job's `/etc/passwd` and `/etc/group` give them.
    pub user_name: String,
    pub hostname: String,
    /// Size of each private tmpfs (`/tmp`, `/var/tmp`, `/dev/shm`), in bytes.
    pub tmp_size_bytes: u64,
    /// The administrator's bind mounts, validated at the executor's start-up.
    #[serde(default)]
    pub binds: Vec<Bind>,
    /// cgroup v1: the `tasks` files to write "0" into before anything else (the init is
    /// single-threaded, so this moves the whole process; see `cgroup::v1`).
    pub cgroup_join: Vec<PathBuf>,
    /// cgroup v1: unshare the cgroup namespace after joining (v2 jobs get it at clone).
    pub unshare_cgroupns: bool,
    /// cgroup v2: mount the job's own cgroup (its namespace root) read-only on
    /// `/sys/fs/cgroup`, so it can read its limits.
    pub mount_cgroup2: bool,
    /// Working directory of the command.
    pub cwd: String,
    /// The command gets a terminal of this size `(rows, cols)` from the job's devpts.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// The open-file limit `(soft, hard)` the executor started with, which the job gets
    /// instead of the executor's raised one.
    #[serde(default)]
    pub nofile: Option<(u64, u64)>,
}

/// A host path made visible in the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub writable: bool,
}

impl InitSpec {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an InitSpec always serialises")
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        if bytes.len() > MAX_SPEC_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the init spec is larger than its maximum",
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InitSpec {
        InitSpec {
            argv: vec!["sh".into(), "-c".into(), "echo \u{1F600} \"quoted\"".into()],
            env: vec!["PATH=/bin".into(), "A=b=c".into()],
            uid: 600_001,
            gid: 600_001,
            user_name: "job-0123456789ab".into(),
            hostname: "job-0123456789ab".into(),
            tmp_size_bytes: 64 << 20,
            binds: vec![Bind {
                source: "/srv/data".into(),
                target: "/data".into(),
                writable: true,
            }],
            cgroup_join: vec!["/sys/fs/cgroup/pids/jobworker/x/tasks".into()],
            unshare_cgroupns: true,
            mount_cgroup2: false,
            cwd: "/tmp".into(),
            tty: Some((24, 80)),
            nofile: Some((1024, 4096)),
        }
    }

    #[test]
    fn a_spec_round_trips() {
        assert_eq!(InitSpec::decode(&spec().encode()).unwrap(), spec());
    }

    #[test]
    fn an_older_spec_without_nofile_still_decodes() {
        let mut v: serde_json::Value = serde_json::from_slice(&spec().encode()).unwrap();
        v.as_object_mut().unwrap().remove("nofile");
        let s = InitSpec::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(s.nofile, None);
    }

    #[test]
    fn garbage_empty_and_oversized_specs_are_refused() {
        assert!(InitSpec::decode(b"").is_err());
        assert!(InitSpec::decode(b"{\"argv\":").is_err());
        assert!(InitSpec::decode(&vec![b' '; MAX_SPEC_LEN + 1]).is_err());
    }
}
