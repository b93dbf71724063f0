//! The jobworker executor: the small root daemon that alone creates namespaces and
//! cgroups, runs jobs, keeps their output and streams it back over its Unix socket.

pub mod cgroup;
pub mod seccomp;
pub mod sys;
