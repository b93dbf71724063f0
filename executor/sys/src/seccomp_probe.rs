//! Raw system calls for the seccomp filter's tests. Each one is denied by the filter;
//! without the filter it either fails harmlessly before doing anything or changes only
//! the calling process (a throwaway child of the test).
//!
//! Built only with the `seccomp-probe` feature, which only the executor's tests enable.

use std::io;

/// `unshare(flags)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer and touches no memory of ours.
    crate::check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(NULL, NULL, NULL, 0, NULL)`: unfiltered, the kernel fails with EFAULT.
pub fn mount_null() -> io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: null pointers are checked by the kernel before any use; nothing of ours
    // is read or written.
    crate::check_long(unsafe {
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
    crate::check_long(unsafe {
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
    crate::check_long(unsafe {
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
    crate::check_long(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) })
}

/// `personality(persona)`: the previous persona.
pub fn personality(persona: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: personality takes an integer and touches no memory of ours.
    crate::check(unsafe { libc::personality(persona) })
}
