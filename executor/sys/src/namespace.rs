//! Inside a job's new namespaces: mounts, the session, the host name, `lo`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{check, check_long, cstring};

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

/// `mount_setattr(2)` flags (Linux 5.12).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets and clears `MOUNT_ATTR_*` flags of the mount at `target` and, when `recursive`,
/// of every mount below it (`mount_setattr(2)`, Linux 5.12).
pub fn mount_setattr(target: &str, recursive: bool, set: u64, clear: u64) -> io::Result<()> {
    let target = cstring(target)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `target` is a NUL-terminated string and `attr` a mount_attr of the size
    // passed, both alive during the call, which only reads them.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Creates a character device node (`mknod(2)`) with `mode` (permission bits).
pub fn mknod_char(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let path = cstring(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: a NUL-terminated string alive during the call; the rest are integers.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) }).map(drop)
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
