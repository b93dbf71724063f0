//! The one test kit of jobworker. Every test suite (`executor/tests`, `api-server/tests`,
//! `client/tests`) and the benchmark (`api-server/benches/stack`) start the real daemons,
//! wait for them and clean up after them through this crate, so that a fix to a race or
//! a leak is made once. Dev-only: a dev-dependency, never shipped.
//!
//! Rules it keeps for every suite: a wait is on an event (a log line, a pipe or FIFO
//! becoming readable, a process exit on a pidfd, a stream message), never on a timer; the
//! rare count that has no event is re-checked by [`process::poll_until`], which says why
//! at each call; every wait is bounded ([`LIMIT`]); a daemon's log is kept in a file and
//! its tail is printed when a test fails (the scratch directory is then kept too); only
//! processes the kit started are signalled, by pid; only cgroups it named are removed.
//!
//! Always built (the executor's suite, also cross-built for musl for the VM tests, so
//! nothing here may pull in TLS or gRPC):
//! - [`env`]: root or a visible `SKIPPED` line, notes, the job user, [`LIMIT`];
//! - [`scratch`]: scratch directories any user can traverse; FIFOs between a test and a
//!   job ([`Gate`]: the test lets the job go on; [`Checkpoint`]: the job tells the test);
//! - [`bins`]: the workspace's binaries, and copies anyone can run (the probe);
//! - [`log`]: a daemon's output kept in a file, with waits on its lines;
//! - [`process`]: signals, exits awaited on a pidfd, a [`Daemon`] stopped on drop;
//! - [`procfs`]: `/proc` counters (fds, threads, RSS, CPU), sockets, process trees;
//! - [`pty`]: a real pseudo-terminal to run a client in, as a person at a terminal;
//! - [`noise`]: reproducible binary bytes, the same in a test and in the probe;
//! - [`cgroup`]: a cgroup parent per test, removed from every hierarchy afterwards;
//! - [`executor`]: the real `jobworker-executor` ([`Executor`]) and a client of its
//!   socket ([`ExecClient`]).
//!
//! Feature `api`: [`api`] (the real `jobworker-api`, as `nobody` when root), [`pki`] (the
//! test PKI as files; [`Pki::dev_certs`] runs the development PKI tool), [`stack`] (both
//! daemons) and [`jobctl`] (jobctl as a subprocess, and what it printed).
//! Feature `grpc` (with `api`): [`grpc`], gRPC clients over the server's own TLS client
//! configuration. Feature `pki` (with `grpc`): [`Pki::generate`], a PKI made in process
//! with the certificates the TLS tests need (expired, revoked, without a common name, of
//! another CA) and a CRL.

pub mod bins;
pub mod cgroup;
pub mod env;
pub mod executor;
pub mod log;
pub mod process;
pub mod procfs;
pub mod pty;
pub mod scratch;

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "api")]
pub mod jobctl;
#[cfg(feature = "api")]
pub mod pki;
#[cfg(feature = "api")]
pub mod stack;

#[cfg(feature = "grpc")]
pub mod grpc;

pub use bins::probe;
pub use cgroup::{CgroupParent, TestParent};
pub use env::{JOB_IDS, LIMIT, NOBODY, is_root, note, skip_unless_root};
pub use executor::{
    ExecClient, Executor, ExecutorOptions, Streamed, assert_unaffected, audit_records,
    audit_verify, pattern, spec,
};
pub use process::{Daemon, Stop, signal, wait_exit};
pub use scratch::{Checkpoint, Gate, Scratch};

#[cfg(feature = "api")]
pub use api::{Api, ApiOptions};
#[cfg(feature = "api")]
pub use pki::Pki;
#[cfg(feature = "api")]
pub use stack::Stack;

/// `len` bytes of reproducible noise from `seed` (xorshift64*): every byte value, no
/// structure a stream's handling could lean on. The probe's `streams` writes these.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
