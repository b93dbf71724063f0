//! Process handles: pidfds, signals through them, and reaping exits.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::{check, check_long, pid_t};

/// Waits for the child behind `pidfd` to exit and reaps it (`waitid(P_PIDFD, WEXITED)`).
pub fn wait_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: `info` is a zeroed siginfo_t the kernel writes into; P_PIDFD = 3.
        let r = unsafe {
            libc::waitid(
                3 as libc::idtype_t,
                pidfd.as_raw_fd() as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens a pidfd for an existing process (`pidfd_open(2)`).
pub fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })?;
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Registers a pidfd with the async runtime, to wait for the process's exit.
pub fn async_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for its whole life and always returns the same raw fd,
    // and the AsyncFd takes ownership of it, which is what `register` requires.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Sends a signal through a pidfd (`pidfd_send_signal(2)`): never hits a recycled pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the info pointer is NULL (kernel fills it in); no memory is passed.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })
    .map(drop)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Decodes a wait(2) status word.
    pub fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }

    /// Encodes as a wait(2) status word.
    pub fn to_wait_status(self) -> libc::c_int {
        match self {
            Exit::Code(c) => (c & 0xff) << 8,
            Exit::Signal(s) => s & 0x7f,
        }
    }
}

/// Reaps the child behind `pidfd` if it has exited (`waitid(P_PIDFD, WEXITED|WNOHANG)`).
pub fn try_reap_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<Exit>> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is a zeroed siginfo_t the kernel writes into; P_PIDFD = 3.
    check(unsafe {
        libc::waitid(
            3 as libc::idtype_t,
            pidfd.as_raw_fd() as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOHANG,
        )
    })?;
    // SAFETY: zero-initialised and possibly filled by the kernel: valid either way.
    let info = unsafe { info.assume_init() };
    // SAFETY: si_pid/si_status are valid to read for SIGCHLD-style siginfo, which is
    // what waitid fills; a zero pid means "not exited yet" (WNOHANG).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Exit::Code(status),
        _ => Exit::Signal(status),
    }))
}

/// Reaps any exited child without blocking (`waitpid(-1, WNOHANG)`).
pub fn reap_any() -> io::Result<Option<(pid_t, Exit)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid int the kernel writes into.
    match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
        0 => Ok(None),
        -1 => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECHILD) {
                Ok(None)
            } else {
                Err(e)
            }
        }
        pid => Ok(Some((pid, Exit::from_wait_status(status)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_round_trips() {
        for e in [
            Exit::Code(0),
            Exit::Code(7),
            Exit::Code(255),
            Exit::Signal(9),
            Exit::Signal(15),
        ] {
            assert_eq!(Exit::from_wait_status(e.to_wait_status()), e);
        }
    }
}
