//! The job's own view of the file system, set up by the job init (still root, in the
//! job's new mount namespace) before it drops its privileges.
//!
//! In order:
//!
//! 1. every mount becomes private (nothing propagates back to the host);
//! 2. the host's whole tree becomes read-only, `nosuid` and `nodev` for the job
//!    (`mount_setattr` with `AT_RECURSIVE`, in this namespace only);
//! 3. the administrator's bind mounts, each read-only or writable as configured;
//! 4. `/proc` (this PID namespace's), `/sys` (a fresh, read-only sysfs of this network
//!    namespace), `/dev` (a minimal set, as OCI runtimes and bubblewrap build it) and
//!    `/run` (empty) replace the host's, which are detached;
//! 5. `/home` and `/root` are hidden under empty read-only tmpfs;
//! 6. private tmpfs on `/tmp`, `/var/tmp` and `/dev/shm`, of the job's size;
//! 7. on cgroup v2, the job's own cgroup (its namespace root) read-only on
//!    `/sys/fs/cgroup`; on v1 that directory stays empty;
//! 8. `/etc/passwd` and `/etc/group` with an entry for the job's user, so programs that
//!    look up the current user work.
//!
//! Every tmpfs page a job writes is charged to the job's memory cgroup (the cgroup of the
//! process that first touches a page pays for it), so the memory limit bounds the sum of
//! all of a job's tmpfs whatever their sizes; each size only caps one of them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Context, Step};
use crate::ipc::spec::{Bind, InitSpec};
use crate::sys;

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
/// Host directories a job never sees.
const HIDDEN: [&str; 2] = ["/home", "/root"];
/// The device nodes of a job's `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// The links of a job's `/dev`.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Builds the job's view; see the module documentation.
pub(super) fn build(spec: &InitSpec) -> Result<(), Step> {
    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .step(|| "making all mounts private".into())?;
    let all = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr("/", true, all, 0)
        .step(|| "making the host's file system read-only for the job".into())?;
    for bind in &spec.binds {
        bind_mount(bind)?;
    }
    replace("/proc", || {
        let flags = NOSUID_NODEV | libc::MS_NOEXEC;
        sys::mount(Some("proc"), "/proc", Some("proc"), flags, None)
    })?;
    replace("/sys", mount_sys)?;
    replace("/dev", || mount_dev(spec.tmp_size_bytes))?;
    replace("/run", || {
        tmpfs("/run", "size=64k,mode=0755", libc::MS_NOEXEC)
    })?;
    for dir in HIDDEN {
        if Path::new(dir).is_dir() {
            let flags = libc::MS_RDONLY | libc::MS_NOEXEC;
            tmpfs(dir, "size=4k,mode=0755", flags).step(|| format!("hiding {dir}"))?;
        }
    }
    let opts = format!("size={},mode=1777", spec.tmp_size_bytes);
    for dir in ["/tmp", "/var/tmp"] {
        // /tmp must exist; /var/tmp only when the host has it.
        if dir == "/tmp" || Path::new(dir).is_dir() {
            tmpfs(dir, &opts, 0).step(|| format!("mounting a private tmpfs on {dir}"))?;
        }
    }
    if spec.mount_cgroup2 {
        let flags = NOSUID_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        sys::mount(
            Some("cgroup2"),
            "/sys/fs/cgroup",
            Some("cgroup2"),
            flags,
            None,
        )
        .step(|| "mounting the job's cgroup on /sys/fs/cgroup".into())?;
    }
    accounts(spec)
}

/// Detaches the host's mount at `dir` (and everything below it), if `dir` is a mount
/// point, and mounts the job's over it.
fn replace(dir: &str, mount: impl FnOnce() -> std::io::Result<()>) -> Result<(), Step> {
    match sys::umount_detach(dir) {
        // Not a mount point on this host (`/run` on some): there is nothing to detach.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        r => r.step(|| format!("detaching the host's {dir}"))?,
    }
    mount().step(|| format!("mounting the job's {dir}"))
}

fn tmpfs(dir: &str, opts: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    sys::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        NOSUID_NODEV | flags,
        Some(opts),
    )
}

/// A fresh sysfs of the job's network namespace (its `class/net` lists only `lo`),
/// read-only.
fn mount_sys() -> std::io::Result<()> {
    let flags = NOSUID_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    sys::mount(Some("sysfs"), "/sys", Some("sysfs"), flags, None)
}

/// A tmpfs with the standard device nodes and links, made read-only, then a devpts
/// instance of the job's own on `/dev/pts` and a tmpfs on `/dev/shm`.
fn mount_dev(shm_size: u64) -> std::io::Result<()> {
    // Not `nodev`, unlike every other tmpfs of the job: it holds the device nodes.
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    let opts = "size=64k,mode=0755";
    sys::mount(Some("tmpfs"), "/dev", Some("tmpfs"), flags, Some(opts))?;
    for (name, major, minor) in DEVICES {
        let path = format!("/dev/{name}");
        sys::mknod_char(&path, 0o666, major, minor)?;
        // The umask (077) applies to mknod: set the mode it was asked for.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    }
    for dir in ["pts", "shm"] {
        let path = format!("/dev/{dir}");
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    for (name, to) in DEV_LINKS {
        std::os::unix::fs::symlink(to, format!("/dev/{name}"))?;
    }
    let ro = libc::MS_REMOUNT | flags | libc::MS_RDONLY;
    sys::mount(None, "/dev", None, ro, Some(opts))?;
    sys::mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    tmpfs("/dev/shm", &format!("size={shm_size},mode=1777"), 0)
}

/// One of the administrator's bind mounts (validated at the executor's start-up: an
/// absolute source that exists, an absolute target that exists in the host's tree).
fn bind_mount(bind: &Bind) -> Result<(), Step> {
    let what = || format!("bind-mounting {} on {}", bind.source, bind.target);
    sys::mount(Some(&bind.source), &bind.target, None, libc::MS_BIND, None).step(what)?;
    let safe = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    let (set, clear) = if bind.writable {
        (safe, sys::MOUNT_ATTR_RDONLY)
    } else {
        (safe | sys::MOUNT_ATTR_RDONLY, 0)
    };
    sys::mount_setattr(&bind.target, false, set, clear).step(what)
}

/// `/etc/passwd` and `/etc/group` of the job: root, the job's own user and group, and
/// nobody. Written into the job's `/run` (still empty), bind-mounted read-only over the
/// host's files, then unlinked, so `/run` stays empty and the mounts keep the files.
fn accounts(spec: &InitSpec) -> Result<(), Step> {
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         {name}:x:{uid}:{gid}:jobworker job:/tmp:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        name = spec.user_name,
        uid = spec.uid,
        gid = spec.gid,
    );
    let group = format!(
        "root:x:0:\n{name}:x:{gid}:\nnogroup:x:65534:\n",
        name = spec.user_name,
        gid = spec.gid,
    );
    for (file, text) in [("passwd", passwd), ("group", group)] {
        let staged = format!("/run/{file}");
        let target = format!("/etc/{file}");
        let what = || format!("giving the job its own {target}");
        std::fs::write(&staged, text).step(what)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).step(what)?;
        sys::mount(Some(&staged), &target, None, libc::MS_BIND, None).step(what)?;
        let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        sys::mount_setattr(&target, false, ro, 0).step(what)?;
        std::fs::remove_file(&staged).step(what)?;
    }
    Ok(())
}
