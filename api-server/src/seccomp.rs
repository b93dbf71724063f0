//! The server's own seccomp allow-list.
//!
//! Applied to every thread (TSYNC) once the keys are loaded, the listener is bound and
//! the signal handlers are installed. From then on the process can serve connections
//! and reach the executor's Unix socket, and nothing else: no `open`, no `execve`, no
//! new network sockets, no executable memory. A call outside the list fails with
//! `EPERM` (rather than killing the process, so a rare path that was missed shows up
//! as a logged error on one request instead of dropping every connection).
//!
//! The list is data: one entry per system call with the reason it is needed, and an
//! optional argument condition that narrows it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A further condition on one argument of an allowed call.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// Any arguments.
    Any,
    /// Argument `index` equals `value`.
    Eq(u8, u64),
    /// Argument `index` has none of the bits of `mask` set.
    NoBits(u8, u64),
    /// Argument `index` equals this process's id (known when the filter is built).
    OwnPid(u8),
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub nr: i64,
    pub name: &'static str,
    pub arg: Arg,
    pub why: &'static str,
}

const fn allow(nr: i64, name: &'static str, why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        arg: Arg::Any,
        why,
    }
}

const fn allow_if(nr: i64, name: &'static str, arg: Arg, why: &'static str) -> Allowed {
    Allowed { nr, name, arg, why }
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// The allow-list.
pub const ALLOWED: &[Allowed] = &[
    // Network and socket I/O.
    allow(libc::SYS_read, "read", "TLS records and executor frames"),
    allow(libc::SYS_readv, "readv", "vectored socket reads"),
    allow(
        libc::SYS_write,
        "write",
        "TLS records, executor frames, log lines on stderr",
    ),
    allow(
        libc::SYS_writev,
        "writev",
        "vectored socket writes (HTTP/2 frames)",
    ),
    allow(
        libc::SYS_recvfrom,
        "recvfrom",
        "socket reads through recv()",
    ),
    allow(libc::SYS_sendto, "sendto", "socket writes through send()"),
    allow(
        libc::SYS_recvmsg,
        "recvmsg",
        "socket reads with ancillary data",
    ),
    allow(
        libc::SYS_sendmsg,
        "sendmsg",
        "socket writes through sendmsg()",
    ),
    allow(libc::SYS_accept4, "accept4", "accepting client connections"),
    allow_if(
        libc::SYS_socket,
        "socket",
        Arg::Eq(0, libc::AF_UNIX as u64),
        "connecting to the executor: Unix sockets only, no new network sockets",
    ),
    allow(
        libc::SYS_connect,
        "connect",
        "connecting to the executor's socket",
    ),
    allow(
        libc::SYS_getsockopt,
        "getsockopt",
        "SO_ERROR after a non-blocking connect",
    ),
    allow(
        libc::SYS_setsockopt,
        "setsockopt",
        "TCP_NODELAY and keepalive on accepted connections",
    ),
    allow(
        libc::SYS_getsockname,
        "getsockname",
        "local address of a socket",
    ),
    allow(
        libc::SYS_getpeername,
        "getpeername",
        "remote address of a connection",
    ),
    allow(libc::SYS_shutdown, "shutdown", "half-closing a connection"),
    allow(libc::SYS_close, "close", "closing connections"),
    allow(libc::SYS_fcntl, "fcntl", "file descriptor flags of sockets"),
    // The async runtime.
    #[cfg(target_arch = "x86_64")]
    allow(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "waiting for I/O readiness",
    ),
    allow(
        libc::SYS_epoll_pwait,
        "epoll_pwait",
        "waiting for I/O readiness",
    ),
    allow(
        libc::SYS_epoll_pwait2,
        "epoll_pwait2",
        "waiting for I/O readiness",
    ),
    allow(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "registering sockets for readiness events",
    ),
    allow(libc::SYS_eventfd2, "eventfd2", "waking the I/O driver"),
    allow(
        libc::SYS_futex,
        "futex",
        "locks, condition variables, thread parking",
    ),
    allow(
        libc::SYS_sched_yield,
        "sched_yield",
        "spin loops in locks and channels",
    ),
    allow(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "timers (when the vDSO is not used)",
    ),
    allow(
        libc::SYS_gettimeofday,
        "gettimeofday",
        "wall clock for logs (vDSO fallback)",
    ),
    allow(
        libc::SYS_clock_nanosleep,
        "clock_nanosleep",
        "blocking-pool idle waits",
    ),
    allow(
        libc::SYS_restart_syscall,
        "restart_syscall",
        "calls interrupted by a signal",
    ),
    // Threads: the runtime starts blocking-pool threads on demand.
    allow(
        libc::SYS_clone,
        "clone",
        "creating threads (glibc fallback)",
    ),
    allow(libc::SYS_clone3, "clone3", "creating threads"),
    allow(
        libc::SYS_set_robust_list,
        "set_robust_list",
        "thread start-up in glibc",
    ),
    allow(libc::SYS_rseq, "rseq", "thread start-up in glibc"),
    allow(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "per-thread stack overflow guard",
    ),
    allow(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "signal masks around thread creation",
    ),
    allow(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "returning from the SIGTERM/SIGINT handler",
    ),
    allow(
        libc::SYS_sched_getaffinity,
        "sched_getaffinity",
        "thread pool sizing",
    ),
    allow_if(
        libc::SYS_prctl,
        "prctl",
        Arg::Eq(0, libc::PR_SET_NAME as u64),
        "naming new threads; no other prctl operation",
    ),
    allow(libc::SYS_gettid, "gettid", "thread ids in panics and logs"),
    allow(libc::SYS_getpid, "getpid", "process id"),
    allow_if(
        libc::SYS_tgkill,
        "tgkill",
        Arg::OwnPid(0),
        "abort() on a fatal error signals this process only",
    ),
    allow(libc::SYS_exit, "exit", "thread exit"),
    allow(libc::SYS_exit_group, "exit_group", "process exit"),
    // Memory.
    allow(libc::SYS_brk, "brk", "heap growth"),
    allow_if(
        libc::SYS_mmap,
        "mmap",
        Arg::NoBits(2, PROT_EXEC),
        "allocation and thread stacks, never executable",
    ),
    allow_if(
        libc::SYS_mprotect,
        "mprotect",
        Arg::NoBits(2, PROT_EXEC),
        "stack guard pages, never executable",
    ),
    allow(libc::SYS_munmap, "munmap", "freeing memory"),
    allow(libc::SYS_mremap, "mremap", "growing large buffers"),
    allow(
        libc::SYS_madvise,
        "madvise",
        "returning freed memory to the kernel",
    ),
    // Cryptography.
    allow(
        libc::SYS_getrandom,
        "getrandom",
        "TLS key shares and nonces",
    ),
];

/// Why the filter could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("applying the seccomp filter: {0}")]
    Apply(String),
}

fn condition(arg: Arg) -> Result<Option<SeccompCondition>, seccompiler::BackendError> {
    Ok(match arg {
        Arg::Any => None,
        Arg::Eq(index, value) => Some(SeccompCondition::new(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            value,
        )?),
        Arg::NoBits(index, mask) => Some(SeccompCondition::new(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?),
        Arg::OwnPid(index) => Some(SeccompCondition::new(
            index,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(std::process::id()),
        )?),
    })
}

/// Compiles the allow-list for this architecture.
pub fn program() -> Result<BpfProgram, SeccompError> {
    let build = |e: &dyn std::fmt::Display| SeccompError::Build(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in ALLOWED {
        let rule = match condition(entry.arg).map_err(|e| build(&e))? {
            None => Vec::new(),
            Some(c) => vec![SeccompRule::new(vec![c]).map_err(|e| build(&e))?],
        };
        rules.insert(entry.nr, rule);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| build(&e))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| build(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(&e))
}

/// Applies the allow-list to every thread of the process (and sets no_new_privs).
pub fn apply() -> Result<(), SeccompError> {
    let program = program()?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| SeccompError::Apply(e.to_string()))
}

/// Applies the filter and checks that calls outside it fail with EPERM while the
/// process keeps running. Prints one line per check; returns whether all held.
pub fn self_test() -> bool {
    if let Err(e) = apply() {
        println!("apply: {e}");
        return false;
    }
    let denied = |what: &str, result: std::io::Result<()>| match result {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            println!("{what}: denied (EPERM)");
            true
        }
        Err(e) => {
            println!("{what}: failed otherwise: {e}");
            false
        }
        Ok(()) => {
            println!("{what}: ALLOWED");
            false
        }
    };
    let open = denied(
        "open /etc/hostname",
        std::fs::File::open("/etc/hostname").map(drop),
    );
    let tcp = denied(
        "tcp socket",
        std::net::TcpListener::bind("127.0.0.1:0").map(drop),
    );
    let exec = denied(
        "spawn /bin/true",
        std::process::Command::new("/bin/true").status().map(drop),
    );
    open && tcp && exec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_a_reason_and_appears_once() {
        let mut seen = std::collections::HashSet::new();
        for entry in ALLOWED {
            assert!(!entry.why.is_empty(), "{}", entry.name);
            assert!(seen.insert(entry.nr), "{} listed twice", entry.name);
        }
    }

    #[test]
    fn dangerous_calls_are_not_listed() {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_mount,
            libc::SYS_kill,
            libc::SYS_setuid,
        ] {
            assert!(ALLOWED.iter().all(|e| e.nr != nr), "{nr} is allowed");
        }
    }

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        assert!(!program().unwrap().is_empty());
    }
}
