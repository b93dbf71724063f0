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
