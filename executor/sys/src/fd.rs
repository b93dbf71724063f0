//! Descriptors: closing what a fresh process inherited, taking over an inherited one,
//! and moving descriptors onto fixed numbers.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::{check, check_long};

/// Closes every file descriptor from `first` upwards (`close_range(2)`; on kernels
/// without it, Linux < 5.9, each descriptor listed in `/proc/self/fd`).
pub fn close_fds_from(first: RawFd) -> io::Result<()> {
    let first = libc::c_uint::try_from(first)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative fd"))?;
    // SAFETY: close_range only closes descriptors; callers own every fd at or above
    // `first` (it is used before any other fd is opened, and in fresh processes).
    let r =
        check_long(unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0u32) });
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        r => return r.map(drop),
    }
    let open: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd >= 0 && fd as libc::c_uint >= first {
            // SAFETY: as above, callers own every fd at or above `first`; the listing's
            // own descriptor is already closed (EBADF, ignored).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Takes ownership of a descriptor inherited from the service manager (socket
/// activation), after checking that it is open, and marks it close-on-exec.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of `fd`; it fails with EBADF if not open.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above; F_SETFD sets the descriptor flags of an open fd.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the fd is open (checked above) and, per the socket activation protocol,
    // passed to this process for it alone to own; nothing else in the process refers
    // to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicates `fd` to the lowest free descriptor at or above `min`, close-on-exec.
pub fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we borrow; it touches no memory.
    let new = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Sets the capacity of a pipe (`F_SETPIPE_SZ`); returns the capacity granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pipe size"))?;
    // SAFETY: F_SETPIPE_SZ takes an integer and touches no memory.
    let got = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) })?;
    Ok(got as usize)
}

/// `dup2(2)`: `fd` also becomes descriptor number `target` (not close-on-exec), closing
/// whatever `target` was. Only for a process taking up fixed descriptor numbers (the
/// clone that becomes a job init), where nothing else owns `target`.
pub fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a descriptor number this process owns; touches no memory.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Points each of `targets` at `/dev/null` (read-write).
pub fn redirect_to_devnull(targets: &[RawFd]) -> io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    for &t in targets {
        // SAFETY: dup2 onto a descriptor number this process owns; touches no memory.
        check(unsafe { libc::dup2(null.as_raw_fd(), t) })?;
    }
    Ok(())
}

/// Moves `fd` to descriptor number `target` (close-on-exec), closing the original.
pub fn move_fd_cloexec(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // SAFETY: dup3 onto a descriptor number the caller owns; touches no memory.
    let new = check(unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) })?;
    // SAFETY: `new` (== target) now refers to the duplicate; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Waits until one of `fds` is readable or hung up (`poll(2)`), for at most `timeout_ms`
/// (`None`: no limit); returns for each fd whether it is ready.
pub fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout_ms: Option<i32>,
) -> io::Result<[bool; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `p` is an array of N pollfd structures alive during the call.
        let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, timeout_ms.unwrap_or(-1)) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.map(|p| p.revents != 0))
}

/// Sets `O_NONBLOCK` on the open file behind `fd` (shared by every duplicate of it).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the file status flags of `fd`.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL sets the status flags of an open fd; touches no memory.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// `read(2)` into `buf`, once.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, alive and writable
    // for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` of `buf`, once; returns how much was written.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`, alive for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Makes `fd` non-blocking and registers it with the async runtime, for reading and
/// writing (a terminal's master, a socket).
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    use tokio::io::Interest;
    set_nonblocking(fd.as_fd())?;
    // SAFETY: an OwnedFd is open for its whole life and always returns the same raw fd,
    // and the AsyncFd takes ownership of it, which is what `register` requires.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            Interest::READABLE | Interest::WRITABLE,
        )
    }
    .map_err(|e| e.into_parts().1)
}
