//! Every raw system call of the jobworker executor, each `unsafe` block with the reason
//! it is sound.
//!
//! This is the only crate of the workspace that may contain `unsafe`: every other crate
//! forbids it, so the compiler keeps raw system calls in this one place. The executor
//! calls these safe wrappers, which return `io::Result` carrying the OS error. The
//! modules follow who calls them:
//!
//! - [`process`]: the calling process (ids, umask, open-file limits, fork, exec, exit,
//!   kill);
//! - [`fd`]: closing inherited descriptors, taking one over, moving them onto fixed
//!   numbers, waiting for them to be readable;
//! - [`clone`]: `clone3` for the init template's start (a re-executed child) and for its
//!   clones (job inits);
//! - [`socket`]: the template's control socket, which carries descriptors;
//! - [`pidfd`]: process handles, signals through them, reaping;
//! - [`output`]: job output moved by `splice` and `sendfile`;
//! - [`namespace`]: mounts, session, host name and `lo` inside a job's namespaces;
//! - [`creds`]: dropping groups, ids and capabilities, `no_new_privs`;
//! - [`signal`]: the init's signalfd and the command's signal reset;
//! - [`tty`]: pseudo-terminals: a master from a devpts instance, window sizes, the
//!   controlling terminal;
//! - `seccomp_probe` (feature `seccomp-probe`, tests only): calls the job filter must
//!   deny.
//!
//! Everything is re-exported at the crate root, so callers write `sys::mount(...)`.

use std::ffi::CString;
use std::io;

pub mod clone;
pub mod creds;
pub mod fd;
pub mod namespace;
pub mod output;
pub mod pidfd;
pub mod process;
#[cfg(feature = "seccomp-probe")]
pub mod seccomp_probe;
pub mod signal;
pub mod socket;
pub mod tty;

pub use clone::*;
pub use creds::*;
pub use fd::*;
pub use namespace::*;
pub use output::*;
pub use pidfd::*;
pub use process::*;
pub use signal::*;
pub use socket::*;
pub use tty::*;

pub use libc::pid_t;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}
