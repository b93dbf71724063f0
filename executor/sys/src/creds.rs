//! Dropping privileges: groups, uid and gid, capabilities, `no_new_privs`, dumpability.

use std::io;

use crate::{check, check_long};

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
