//! The jobworker executor: the small root daemon that alone creates namespaces and
//! cgroups, runs jobs, keeps their output and streams it back over its Unix socket.
//!
//! - [`audit`]: the hash-chained audit trail (group commit, rotation, verification);
//! - [`config`]: the TOML file and flags, validated at start-up;
//! - [`server`]: the Unix socket, peer checks, one handler per request kind;
//! - [`engine`]: the job table and each job's supervisor;
//! - [`output`]: per-job output files and their followers;
//! - [`store`]: the state directory (job records and output survive restarts);
//! - [`spawn`]: the one seam that starts a job (clone3 into new namespaces);
//! - [`template`]: the init template, this binary re-executed once, which every job
//!   init is cloned from;
//! - [`init`]: the job init, PID 1 of each job (a clone of the template);
//! - [`ipc`]: the executor's private byte formats (template messages, the init's
//!   descriptors, spec and report, the exec status), each with a fuzzed decoder;
//! - [`cgroup`]: cgroup v2 and v1 backends behind one interface;
//! - [`seccomp`]: the job's seccomp filter;
//! - [`users`]: resolving the job user and groups;
//! - [`sys`]: every raw system call, from the `jobworker-sys` crate (`executor/sys/`),
//!   the only crate of the workspace allowed `unsafe`; this crate forbids it.

pub mod audit;
pub mod cgroup;
pub mod config;
pub mod engine;
pub mod init;
pub mod ipc;
pub mod output;
pub mod seccomp;
pub mod server;
pub mod spawn;
pub mod store;
pub use jobworker_sys as sys;
pub mod template;
pub mod totals;
pub mod users;
