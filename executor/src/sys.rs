//! Every raw system call of the executor, each `unsafe` block with the reason it is sound.
//!
//! Nothing outside this module may use `unsafe`; the rest of the crate calls these safe
//! wrappers, which return `io::Result` carrying the OS error. Wrappers are grouped by who
//! calls them: the daemon at start-up, the spawn path (clone3 and the code that runs in
//! the child before it re-executes as the init template), the init template (its
//! control socket and the clones it makes), and the job init itself.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

// ---------------------------------------------------------------------------------------
// Process-wide set-up of the daemon.
// ---------------------------------------------------------------------------------------

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

/// The open-file limit the executor started with, `(soft, hard)`, recorded by
/// [`raise_nofile_limit`] so that jobs get it back.
static STARTING_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

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

// ---------------------------------------------------------------------------------------
// Descriptors used by the spawn path.
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// clone3 and the child's few steps before it re-executes as the init template.
// ---------------------------------------------------------------------------------------

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
    /// Target number of the descriptor the child reports a failed `execveat` on.
    pub report: RawFd,
}

/// Clones a child (`clone3(2)` with `CLONE_PIDFD`) and has it re-execute `exe` (an fd
/// of this very binary) with `argv` and an empty environment.
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
        // execveat failed: report the errno without allocating.
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut msg = [0u8; 64];
        let prefix = b"re-executing this binary failed: errno ";
        let mut n = 3 + prefix.len();
        msg[3..n].copy_from_slice(prefix);
        n += write_decimal(&mut msg[n..], errno as u32);
        msg[0] = b'F';
        msg[1..3].copy_from_slice(&((n - 3) as u16).to_le_bytes());
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

/// Writes `v` in decimal into `buf` without allocating; returns the number of bytes.
fn write_decimal(buf: &mut [u8], mut v: u32) -> usize {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = &tmp[i..];
    let n = digits.len().min(buf.len());
    buf[..n].copy_from_slice(&digits[..n]);
    n
}

// ---------------------------------------------------------------------------------------
// The init template: a control socket that carries descriptors, and clones of the
// template, which is single-threaded.
// ---------------------------------------------------------------------------------------

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (message boundaries are kept),
/// close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` is an array of two ints the kernel fills in.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just returned by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most descriptors one control message carries.
pub const MAX_PASSED_FDS: usize = 8;

/// Room for one `SCM_RIGHTS` header with [`MAX_PASSED_FDS`] descriptors, aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
struct FdControl([u8; 64]);

const _: () = assert!(
    std::mem::size_of::<libc::cmsghdr>() + MAX_PASSED_FDS * std::mem::size_of::<RawFd>() <= 64
);

/// Sends one message of `data` with `fds` attached (`sendmsg(2)`, `SCM_RIGHTS`).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    let mut control = FdControl([0; 64]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data, for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload as u32) } as _;
        // SAFETY: `msg_control` points at `control`, 8-aligned and large enough for one
        // header with `payload` bytes (checked at compile time for the most descriptors
        // allowed), so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for `raw`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
        }
    }
    loop {
        // SAFETY: `msg` points at `iov`, `data` and `control`, all alive for the call;
        // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return if n as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "message cut short",
                ))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf` and the descriptors attached to it (close-on-exec),
/// waiting for it (`recvmsg(2)`). `(0, [])` means the peer closed its end. A message or
/// descriptor list that did not fit is an error, after the descriptors that did arrive
/// are closed.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = FdControl([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data, for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both alive and
        // writable for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` and set `msg_controllen`; the CMSG_* macros
    // walk only within it, and each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) /
    // 4` descriptors that now belong to this process and to nothing else in it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message cut short",
        ));
    }
    Ok((n, fds))
}

/// Limits how long a receive on `sock` waits (`SO_RCVTIMEO`); past it, `WouldBlock`.
pub fn set_recv_timeout(sock: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    // SAFETY: `tv` is a timeval alive for the call, and its size is passed.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `dup2(2)`: `fd` also becomes descriptor number `target` (not close-on-exec), closing
/// whatever `target` was. Only for a process taking up fixed descriptor numbers (the
/// clone that becomes a job init), where nothing else owns `target`.
pub fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a descriptor number this process owns; touches no memory.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
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

// ---------------------------------------------------------------------------------------
// Job output: bytes moved by the kernel, never copied through the daemon's memory.
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// The job init (a fresh, single-threaded process).
// ---------------------------------------------------------------------------------------

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string alive during the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map(drop)
}

/// Starts a new session (`setsid(2)`): the job leaves the executor's session and process
/// group, so a terminal's signals (Ctrl-C on a foreground executor) never reach it.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments and touches no memory.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Detaches the mount at `target` (`umount2(MNT_DETACH)`).
pub fn umount_detach(target: &str) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: a NUL-terminated string alive during the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe the bytes of `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `unshare(2)`.
pub fn unshare(flags: u64) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags as libc::c_int) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes integers only.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, which lives
    // on our stack for the duration of the call.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut req,
        )
    })?;
    // SAFETY: the union field written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives on our stack.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) })
        .map(drop)
}

/// Clears the supplementary groups (`setgroups(0, NULL)`).
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list with a NULL pointer.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// Sets real, effective and saved group ids.
pub fn set_gid(gid: u32) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

/// Sets real, effective and saved user ids.
pub fn set_uid(uid: u32) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: every option used here takes integer arguments only.
    check(unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// Keeps permitted capabilities across the switch away from uid 0 (`PR_SET_KEEPCAPS`),
/// so that the bounding set can still be dropped afterwards.
pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong).map(drop)
}

/// Highest capability number the running kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP in the effective set).
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..=last_cap() {
        match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
            Ok(_) => {}
            // A capability number this kernel does not know.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Clears the ambient capability set.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;

/// Sets a given effective capability (keeping it permitted) or, with `None`, clears the
/// effective, permitted and inheritable sets entirely (`capset(2)`).
fn capset(effective_only: Option<u32>) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    if let Some(cap) = effective_only {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective = bit;
        data[word].permitted = bit;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a two-element data array, as version 3 requires, both alive
    // on our stack during the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
}

/// Keeps only CAP_SETPCAP, effective (used right after switching uid with keep-caps, so
/// the bounding set can be dropped).
pub fn keep_only_setpcap() -> io::Result<()> {
    capset(Some(CAP_SETPCAP))
}

/// Clears the effective, permitted and inheritable capability sets.
pub fn clear_caps() -> io::Result<()> {
    capset(None)
}

/// Sets `no_new_privs`: execve can never grant privileges again.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// Marks the process non-dumpable: other processes of the same uid cannot ptrace it or
/// open its `/proc/PID/fd`.
pub fn set_non_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0).map(drop)
}

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

/// Raw system calls for the seccomp filter's tests. Each one is denied by the filter;
/// without the filter it either fails harmlessly before doing anything or changes only
/// the calling process (a throwaway child of the test).
#[cfg(test)]
pub(crate) mod seccomp_probe {
    use std::io;

    fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// `unshare(flags)`.
    pub fn unshare(flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare takes an integer and touches no memory of ours.
        super::check(unsafe { libc::unshare(flags) }).map(drop)
    }

    /// `mount(NULL, NULL, NULL, 0, NULL)`: unfiltered, the kernel fails with EFAULT.
    pub fn mount_null() -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: null pointers are checked by the kernel before any use; nothing of ours
        // is read or written.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_mount,
                null,
                null,
                null,
                0 as libc::c_ulong,
                std::ptr::null::<libc::c_void>(),
            )
        })
        .map(drop)
    }

    /// `clone3(NULL, 0)`: unfiltered, the kernel fails with EINVAL (size too small)
    /// before reading anything.
    pub fn clone3_null() -> io::Result<()> {
        // SAFETY: a zero size makes the kernel reject the call without touching the null
        // pointer; no process is created.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::null::<libc::c_void>(),
                0 as libc::size_t,
            )
        })
        .map(drop)
    }

    /// Raw `clone(flags | CLONE_THREAD)` without `CLONE_SIGHAND`: unfiltered, the kernel
    /// fails with EINVAL before creating anything, so no second thread of execution can
    /// ever return from here.
    pub fn clone_invalid(flags: libc::c_int) -> io::Result<()> {
        let flags = (flags | libc::CLONE_THREAD) & !(libc::CLONE_SIGHAND | libc::CLONE_VM);
        // SAFETY: the flag combination is invalid, so the kernel creates no task; the
        // null stack and tid pointers are never used.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong,
                std::ptr::null::<libc::c_void>(),
                std::ptr::null::<libc::c_int>(),
                std::ptr::null::<libc::c_int>(),
                0 as libc::c_ulong,
            )
        })
        .map(drop)
    }

    /// `getpid` through the x32 system call table: the pid, or ENOSYS on a kernel
    /// without x32 support.
    #[cfg(target_arch = "x86_64")]
    pub fn x32_getpid() -> io::Result<libc::c_long> {
        // SAFETY: getpid takes no arguments and touches no memory.
        check_long(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) })
    }

    /// `personality(persona)`: the previous persona.
    pub fn personality(persona: libc::c_ulong) -> io::Result<libc::c_int> {
        // SAFETY: personality takes an integer and touches no memory of ours.
        super::check(unsafe { libc::personality(persona) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_without_allocation() {
        let mut b = [0u8; 10];
        let n = write_decimal(&mut b, 0);
        assert_eq!(&b[..n], b"0");
        let n = write_decimal(&mut b, 4294967295);
        assert_eq!(&b[..n], b"4294967295");
    }

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
