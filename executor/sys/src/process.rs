//! The calling process: ids, umask, open-file limits, fork, exec, exit and kill.

use std::ffi::{CStr, CString};
use std::io;

use crate::{check, pid_t};

/// The open-file limit the executor started with, `(soft, hard)`, recorded by
/// [`raise_nofile_limit`] so that jobs get it back.
static STARTING_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Sets the process umask and returns the previous one.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask) }
}

/// The process id of the caller.
pub fn getpid() -> pid_t {
    // SAFETY: getpid cannot fail and touches no memory.
    unsafe { libc::getpid() }
}

/// The effective user id of the caller.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn get_nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives on our stack.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the open-file limit (`setrlimit(RLIMIT_NOFILE)`).
pub fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit from `lim`, which lives on our stack.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(drop)
}

/// Raises the soft open-file limit to the hard one and returns it. Each running job holds
/// four descriptors (pidfd, output pipe, report pipe, output file), so the usual soft
/// default of 1024 would run out below 256 running jobs; the executor only uses epoll,
/// never `select`, so a large limit is safe here. Jobs get the starting limit back
/// ([`job_nofile_limit`]).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = get_nofile()?;
    let _ = STARTING_NOFILE.set((soft, hard));
    if soft < hard {
        set_nofile(hard, hard)?;
    }
    Ok(hard)
}

/// The open-file limit jobs get: the one the executor started with, if it raised it.
pub fn job_nofile_limit() -> Option<(u64, u64)> {
    STARTING_NOFILE.get().copied()
}

/// Result of [`fork`].
pub enum Fork {
    Parent(pid_t),
    Child,
}

/// `fork(2)`. Only called by the job init, which is single-threaded, so the child may do
/// anything.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the job init has exactly one thread; fork is sound there.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NUL-terminated strings in NULL-terminated arrays, alive during the call.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Ends the process immediately without running destructors or flushing (`_exit(2)`).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always sound.
    unsafe { libc::_exit(code) }
}

/// Sends `signal` to process `pid` (`kill(2)`).
pub fn kill(pid: pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}
