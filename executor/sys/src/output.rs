//! Job output moved by the kernel, never copied through the daemon's memory.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Moves up to `len` bytes from a pipe to a file at the file's position (`splice(2)`),
/// without waiting on the pipe: `WouldBlock` when it is empty, 0 at its end.
pub fn splice_pipe_to_file(
    pipe: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both offsets are NULL (the pipe has none; the file's position is used and
    // advanced), so the kernel reads and writes no memory of ours; the fds are borrowed
    // and open for the call.
    let n = unsafe {
        libc::splice(
            pipe.as_raw_fd(),
            std::ptr::null_mut(),
            file.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends up to `len` bytes of `file` from `offset` to a socket (`sendfile(2)`) without
/// changing the file's position; returns how many were sent (0: the file ends there).
/// A non-blocking socket that is full gives `WouldBlock`.
pub fn sendfile(
    socket: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset"))?;
    // SAFETY: `off` is a live local the kernel reads and updates for the duration of the
    // call; the fds are borrowed and open for the call.
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
