//! `clone3`: the re-executed child that becomes the init template, and the template's
//! clones of itself (job inits).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::{check_long, pid_t};

pub const CLONE_NEWNS: u64 = 0x0002_0000;
pub const CLONE_NEWCGROUP: u64 = 0x0200_0000;
pub const CLONE_NEWUTS: u64 = 0x0400_0000;
pub const CLONE_NEWIPC: u64 = 0x0800_0000;
pub const CLONE_NEWPID: u64 = 0x2000_0000;
pub const CLONE_NEWNET: u64 = 0x4000_0000;
const CLONE_PIDFD: u64 = 0x1000;
/// The 64-bit value; `libc::CLONE_INTO_CGROUP` is a truncating `c_int`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl CloneArgs {
    /// `ns_flags` with `CLONE_PIDFD` (the pidfd stored in `pidfd`), and
    /// `CLONE_INTO_CGROUP` when `cgroup` is given; no exit signal.
    fn new(ns_flags: u64, pidfd: &mut RawFd, cgroup: Option<BorrowedFd<'_>>) -> Self {
        let mut args = CloneArgs {
            flags: ns_flags | CLONE_PIDFD,
            pidfd: pidfd as *mut RawFd as u64,
            ..Default::default()
        };
        if let Some(cg) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = cg.as_raw_fd() as u64;
        }
        args
    }
}

/// What the child of [`spawn_reexec`] does before `execveat`.
pub struct ChildFds<'a> {
    /// `(source, target)`: each source is duplicated onto its target number, in order.
    /// Every source must be above every target (see [`dup_above`]), so no step can
    /// clobber a later source.
    pub moves: &'a [(BorrowedFd<'a>, RawFd)],
    /// Target number of the descriptor the child reports a failed `execveat` on: one
    /// write of `report_tag` and the errno (`i32`, little endian).
    pub report: RawFd,
    pub report_tag: u8,
}

/// Clones a child (`clone3(2)` with `CLONE_PIDFD`) and has it re-execute `exe` (an fd
/// of this very binary) with `argv` and an empty environment.
///
/// One function on purpose (about 70 lines): everything the child touches between the
/// clone and its exec must be prepared before the clone and visible in one place.
///
/// The caller may be multi-threaded: between clone and exec the child only calls
/// `dup2`, `execveat`, `write` and `_exit`, all async-signal-safe, on memory prepared
/// before the clone. Returns the child's pid and a pidfd for it.
pub fn spawn_reexec(
    exe: BorrowedFd<'_>,
    argv: &[&CStr],
    child: &ChildFds<'_>,
) -> io::Result<(pid_t, OwnedFd)> {
    // Everything the child touches is built here, before the clone.
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let moves: Vec<(RawFd, RawFd)> = child
        .moves
        .iter()
        .map(|(src, dst)| (src.as_raw_fd(), *dst))
        .collect();
    let exe_fd = exe.as_raw_fd();
    let report = child.report;
    let report_tag = child.report_tag;
    let empty = c"";

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs::new(0, &mut pidfd, None);
    args.exit_signal = libc::SIGCHLD as u64;

    // No stack is given, so the child runs on a copy of this thread's stack like fork(2);
    // in the child (return value 0) only async-signal-safe calls follow, on memory
    // allocated before the clone, and it never returns from here: it execs or `_exit`s.
    // SAFETY: `args` is a valid clone_args of the size passed; `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // In the child.
        for &(src, dst) in &moves {
            // SAFETY: dup2 on descriptors inherited from the parent; async-signal-safe.
            if unsafe { libc::dup2(src, dst) } == -1 {
                // SAFETY: _exit is async-signal-safe and never returns.
                unsafe { libc::_exit(126) };
            }
        }
        // SAFETY: all pointers refer to NUL-terminated strings and NULL-terminated
        // arrays built before the clone and still alive in this copy of the address
        // space; execveat is async-signal-safe.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                exe_fd,
                empty.as_ptr(),
                argv_ptrs.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        // execveat failed: report the tag and the errno without allocating.
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut msg = [report_tag, 0, 0, 0, 0];
        msg[1..].copy_from_slice(&errno.to_le_bytes());
        let n = msg.len();
        // SAFETY: writes `n` initialised bytes of a stack buffer; async-signal-safe.
        unsafe { libc::write(report, msg.as_ptr().cast(), n) };
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(127) };
    }
    check_long(ret)?;
    // SAFETY: the kernel stored a new pidfd, owned by nobody else, since clone3
    // succeeded with CLONE_PIDFD.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as pid_t, pidfd))
}

/// The number of threads of this process (`Threads:` in `/proc/self/status`).
fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no thread count"))
}

/// Which side of [`clone_sibling`] returned.
pub enum Cloned {
    /// In the parent: the child's pid and a pidfd for it.
    Parent(pid_t, OwnedFd),
    /// In the child.
    Child,
}

/// Clones this process into new namespaces (`clone3(2)` with `CLONE_PIDFD`, and
/// `CLONE_INTO_CGROUP` when `cgroup` is given) as a sibling: with `CLONE_PARENT`, the
/// child's parent is this process's parent, which can wait for it through the pidfd.
///
/// Like `fork(2)`, the child continues on a copy of this process, so it may run any code
/// only if this process has a single thread; that is checked first, and a process with
/// more threads gets an error instead of a child.
pub fn clone_sibling(ns_flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Cloned> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "clone_sibling needs a single-threaded process",
        ));
    }
    let mut pidfd: RawFd = -1;
    // No exit signal: with CLONE_PARENT the child gets this process's (SIGCHLD).
    let mut args = CloneArgs::new(ns_flags, &mut pidfd, cgroup);
    args.flags |= libc::CLONE_PARENT as u64;
    // No stack is given, so the child runs on a copy of this thread's stack like fork(2).
    // SAFETY: `args` is a valid clone_args of the size passed and `pidfd` outlives the
    // call; this process has one thread (checked above), so the child's copy of memory
    // is consistent (no lock held by another thread) and it may run any code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check_long(ret)? {
        0 => Ok(Cloned::Child),
        pid => {
            // SAFETY: the kernel stored a new pidfd, owned by nobody else, since clone3
            // succeeded with CLONE_PIDFD.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Cloned::Parent(pid as pid_t, pidfd))
        }
    }
}
