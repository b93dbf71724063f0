//! Checks that the cgroup v2 test guest (`make test-vm`) is what the v2 root tests need.
//!
//! Runs only where `JOBWORKER_TEST_CGROUP_BACKEND=v2`, which the guest's init sets;
//! anywhere else every test says it was skipped and passes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Once;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether this process runs in the cgroup v2 guest; says once, visibly, if not.
fn in_v2_guest() -> bool {
    static SKIP_NOTICE: Once = Once::new();
    if std::env::var_os("JOBWORKER_TEST_CGROUP_BACKEND").as_deref() == Some("v2".as_ref()) {
        return true;
    }
    SKIP_NOTICE.call_once(|| {
        // Straight to the stream: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "vm_env: skipped: not in the cgroup v2 guest (JOBWORKER_TEST_CGROUP_BACKEND is not v2)"
        );
    });
    false
}

/// One line of `/proc/self/mountinfo`: (mount point, filesystem type, super options).
fn mounts() -> Vec<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_options = right.nth(1).unwrap_or("");
            Some((mount_point.into(), fstype.into(), super_options.into()))
        })
        .collect()
}

#[test]
fn cgroup2_is_mounted_with_nsdelegate_and_no_v1_hierarchy() {
    if !in_v2_guest() {
        return;
    }
    let mounts = mounts();
    let (_, _, options) = mounts
        .iter()
        .find(|(point, fstype, _)| point == CGROUP_ROOT && fstype == "cgroup2")
        .unwrap_or_else(|| panic!("no cgroup2 at {CGROUP_ROOT}: {mounts:?}"));
    assert!(
        options.split(',').any(|o| o == "nsdelegate"),
        "cgroup2 mounted without nsdelegate: {options}"
    );
    let v1: Vec<_> = mounts.iter().filter(|(_, t, _)| t == "cgroup").collect();
    assert!(v1.is_empty(), "cgroup v1 hierarchies mounted: {v1:?}");
}

#[test]
fn root_subtree_control_enables_cpu_memory_io_pids() {
    if !in_v2_guest() {
        return;
    }
    let path = format!("{CGROUP_ROOT}/cgroup.subtree_control");
    let enabled = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    for controller in ["cpu", "memory", "io", "pids"] {
        assert!(
            enabled.contains(&controller),
            "{controller} missing from {path}: {enabled:?}"
        );
    }
}

#[test]
fn io_test_device_is_a_block_device_writable_by_all() {
    if !in_v2_guest() {
        return;
    }
    let device = std::env::var("JOBWORKER_TEST_IO_DEVICE").unwrap_or_else(|_| "/dev/vda".into());
    let meta = fs::metadata(&device).unwrap_or_else(|e| panic!("stat {device}: {e}"));
    assert!(
        meta.file_type().is_block_device(),
        "{device} is not a block device"
    );
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o666,
        0o666,
        "{device} has mode {mode:o}, not rw for all"
    );
}

#[test]
fn runs_as_root_and_the_job_user_exists() {
    if !in_v2_guest() {
        return;
    }
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid: line in /proc/self/status");
    let effective = uids.split_whitespace().nth(1).expect("effective uid");
    assert_eq!(effective, "0", "not root: Uid:{uids}");

    let user = std::env::var("JOBWORKER_TEST_JOB_USER").unwrap_or_else(|_| "nobody".into());
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(user.as_str()))
        .unwrap_or_else(|| panic!("job user {user} not in /etc/passwd"));
    let uid = entry.split(':').nth(2).expect("uid field");
    assert_ne!(uid, "0", "job user {user} is root");
}

#[test]
fn tmp_is_a_sticky_world_writable_tmpfs() {
    if !in_v2_guest() {
        return;
    }
    assert!(
        mounts().iter().any(|(p, t, _)| p == "/tmp" && t == "tmpfs"),
        "/tmp is not a tmpfs"
    );
    let mode = fs::metadata("/tmp")
        .expect("stat /tmp")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o1777, "/tmp has mode {mode:o}");
}

#[test]
fn executor_binary_is_present() {
    if !in_v2_guest() {
        return;
    }
    let path = std::env::var("JOBWORKER_EXECUTOR_BIN").expect("JOBWORKER_EXECUTOR_BIN is set");
    let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    assert!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "{path} is not an executable file"
    );
}
