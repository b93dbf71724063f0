//! Signals: a signalfd for the job init, and the reset before a command's exec.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{check, check_long};

fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set.
    check(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    for &s in signals {
        // SAFETY: the set was initialised above.
        check(unsafe { libc::sigaddset(set.as_mut_ptr(), s) })?;
    }
    // SAFETY: initialised by sigemptyset.
    Ok(unsafe { set.assume_init() })
}

/// Blocks `signals` and returns a signalfd that reads them (`signalfd(2)`).
pub fn block_into_signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = sigset(signals)?;
    // SAFETY: `set` is initialised; the old mask is not needed.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: `set` is initialised; -1 asks for a new fd.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one signal number from a signalfd.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::zeroed();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which has that size.
    let n = check_long(
        unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) } as libc::c_long,
    )?;
    if n as usize != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short signalfd read",
        ));
    }
    // SAFETY: fully written by the kernel (checked length).
    Ok(unsafe { info.assume_init() }.ssi_signo as libc::c_int)
}

/// Restores the default disposition of every signal and unblocks them all: what a
/// freshly started program expects (the executor's runtime ignores SIGPIPE, which
/// `execve` would otherwise pass on).
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal; errors
        // (signals reserved by libc) are ignored on purpose.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let empty = sigset(&[])?;
    // SAFETY: `empty` is initialised.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) }).map(drop)
}
