//! Every raw system call of the executor, each `unsafe` block with the reason it is sound.
//!
//! Nothing outside this module may use `unsafe`; the rest of the crate calls these safe
//! wrappers, which return `io::Result` with the OS error.
#![allow(unsafe_code)]

use std::io;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sends `signal` to process `pid` (`kill(2)`).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}
