//! Both backends against a temporary directory standing in for the cgroup root.
//!
//! A real cgroup filesystem fills every new group with control files and lets `rmdir`
//! remove a group despite them; the stand-in ([`StandInDirs`]) does the same, driven by
//! the test's template of control files.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;

type Template = Box<dyn Fn(&Path) -> Vec<(&'static str, String)>>;

thread_local! {
    static TEMPLATE: RefCell<Option<Template>> = const { RefCell::new(None) };
}

/// Group directories in a temporary directory: a new group is filled with the control
/// files of the current test's template, and emptied of them before `rmdir`, as a
/// cgroup filesystem does.
#[derive(Debug)]
struct StandInDirs;

impl GroupDirs for StandInDirs {
    fn make(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        populate(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        depopulate(path)?;
        std::fs::remove_dir(path)
    }
}

/// Fills a new group directory with the control files of the current test's template.
fn populate(dir: &Path) -> io::Result<()> {
    TEMPLATE.with(|t| match &*t.borrow() {
        Some(template) => {
            for (name, content) in template(dir) {
                std::fs::write(dir.join(name), content)?;
            }
            Ok(())
        }
        None => Ok(()),
    })
}

/// Removes the control files of a stand-in group before `rmdir`.
fn depopulate(dir: &Path) -> io::Result<()> {
    if TEMPLATE.with(|t| t.borrow().is_none()) {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

const ID: &str = "0123456789abcdef0123456789abcdef";
const ID2: &str = "fedcba9876543210fedcba9876543210";

fn id(s: &str) -> JobId {
    s.parse().unwrap()
}

const NO_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
const SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile                               file\t\t1048572\t\t0\t\t-2\n";

/// A stand-in host: a temporary directory with `root` (the cgroup root), `mountinfo`,
/// `cgroup` (the executor's membership) and `swaps`.
struct Host {
    tmp: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Self {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(host.root()).unwrap();
        host.write("swaps", NO_SWAP);
        host
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.tmp.path().join(name), text).unwrap();
    }

    fn config(&self, backend: Backend, parent: Option<&str>) -> CgroupConfig {
        CgroupConfig {
            backend,
            parent: parent.map(str::to_owned),
            root: self.root(),
            mountinfo: self.tmp.path().join("mountinfo"),
            self_cgroup: self.tmp.path().join("cgroup"),
            swaps: self.tmp.path().join("swaps"),
            dirs: std::sync::Arc::new(StandInDirs),
        }
    }

    /// A mountinfo line for a filesystem mounted at `root/<at>`.
    fn mount_line(&self, n: u32, at: &str, fstype: &str, options: &str) -> String {
        let point = if at.is_empty() {
            self.root()
        } else {
            self.root().join(at)
        };
        format!(
            "{n} 1 0:{n} / {} rw,relatime - {fstype} {fstype} {options}\n",
            point.display()
        )
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A block device of this machine and its `major:minor`, for io limits; `None` (and a
/// visible note) where there is none.
fn some_block_device() -> Option<(String, String)> {
    use std::os::unix::fs::FileTypeExt;
    let found = std::fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
        let meta = e.metadata().ok()?;
        meta.file_type().is_block_device().then(|| {
            let rdev = meta.rdev();
            (
                e.path().display().to_string(),
                format!("{}:{}", libc::major(rdev), libc::minor(rdev)),
            )
        })
    });
    if found.is_none() {
        println!("SKIPPED (io part): this machine has no block device in /dev");
    }
    found
}

fn limits(io_device: Option<&str>) -> ResolvedLimits {
    ResolvedLimits {
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        pids: 32,
        io: io_device.map(|d| ResolvedIo {
            device: d.to_owned(),
            read_bps: Some(1 << 20),
            write_bps: Some(2 << 20),
            read_iops: Some(100),
            write_iops: Some(200),
        }),
    }
}

// ----- cgroup v2 -----

const V2_FILES: &[&str] = &[
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cgroup.procs",
    "cgroup.kill",
    "cpu.max",
    "cpu.stat",
    "memory.max",
    "memory.swap.max",
    "memory.peak",
    "memory.events",
    "pids.max",
    "io.max",
];

/// Every new v2 group gets `V2_FILES` except `omit`, with all controllers available.
fn v2_template(omit: &'static [&'static str]) -> Template {
    Box::new(move |_dir| {
        V2_FILES
            .iter()
            .filter(|f| !omit.contains(f))
            .map(|f| {
                let content = match *f {
                    "cgroup.controllers" => "cpuset cpu io memory hugetlb pids rdma misc\n",
                    _ => "",
                };
                (*f, content.to_owned())
            })
            .collect()
    })
}

fn set_template(t: Template) {
    TEMPLATE.with(|cell| *cell.borrow_mut() = Some(t));
}

/// A pure v2 host with the executor in `/system.slice/jobworker.service`.
fn v2_host() -> Host {
    let host = Host::new();
    host.write(
        "mountinfo",
        &host.mount_line(30, "", "cgroup2", "rw,nsdelegate"),
    );
    host.write("cgroup", "0::/system.slice/jobworker.service\n");
    set_template(v2_template(&[]));
    let own = host.root().join("system.slice/jobworker.service");
    std::fs::create_dir_all(&own).unwrap();
    populate(&own).unwrap();
    populate(&host.root().join("system.slice")).unwrap();
    populate(&host.root()).unwrap();
    std::fs::write(
        own.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    host
}

fn v2(c: &Cgroups) -> &v2::V2 {
    match c {
        Cgroups::V2(b) => b,
        Cgroups::V1(_) => panic!("expected cgroup v2"),
    }
}

#[test]
fn v2_probe_moves_the_executor_into_a_leaf_and_enables_the_controllers() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    assert_eq!(cg.name(), "cgroup v2");
    let parent = host.root().join("system.slice/jobworker.service");
    assert_eq!(v2(&cg).parent(), parent);
    assert_eq!(
        read(parent.join("supervisor/cgroup.procs")),
        std::process::id().to_string()
    );
    assert_eq!(
        read(parent.join("cgroup.subtree_control")),
        "+cpu +memory +io +pids"
    );
    assert_eq!(
        read(parent.join("jobs/cgroup.subtree_control")),
        "+cpu +memory +io +pids"
    );
    // Nothing above the delegated group is touched.
    assert_eq!(
        read(host.root().join("system.slice/cgroup.subtree_control")),
        ""
    );
    assert_eq!(read(host.root().join("cgroup.subtree_control")), "");

    // Probing again from the leaf keeps the same parent.
    host.write("cgroup", "0::/system.slice/jobworker.service/supervisor\n");
    let again = Cgroups::probe(&host.config(Backend::V2, None)).unwrap();
    assert_eq!(v2(&again).parent(), parent);
}

#[test]
fn v2_probe_creates_a_configured_parent_and_hands_controllers_down() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jobworker/test"))).unwrap();
    let outer = host.root().join("jobworker");
    assert_eq!(v2(&cg).parent(), outer.join("test"));
    // Created by the executor, so it may enable controllers there.
    assert_eq!(
        read(outer.join("cgroup.subtree_control")),
        "+cpu +memory +io +pids"
    );
    assert_eq!(
        read(outer.join("test/cgroup.subtree_control")),
        "+cpu +memory +io +pids"
    );
    // The executor is not in that parent: it stays where it is.
    assert!(!outer.join("test/supervisor").exists());
    assert_eq!(read(host.root().join("cgroup.subtree_control")), "");
}

#[test]
fn v2_probe_refuses_a_parent_whose_ancestor_does_not_delegate_the_controllers() {
    let host = v2_host();
    std::fs::write(host.root().join("cgroup.controllers"), "cpu memory\n").unwrap();
    set_template(Box::new(|_| {
        vec![("cgroup.controllers", "cpu memory\n".to_owned())]
    }));
    let err = Cgroups::probe(&host.config(Backend::V2, Some("jobworker"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cgroup v2 cannot be used: controllers io, pids are not available in {} (its \
             cgroup.controllers lists: cpu memory; on a hybrid host they are bound to cgroup v1 \
             hierarchies)",
            host.root().display()
        )
    );
    assert!(!host.root().join("jobworker").exists());
}

#[test]
fn v2_probe_fails_without_cgroup_kill_and_removes_what_it_created() {
    let host = v2_host();
    set_template(v2_template(&["cgroup.kill"]));
    let err = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap_err();
    assert!(
        matches!(&err, CgroupError::MissingFeature { path, .. } if path.ends_with("jw/jobs/cgroup.kill")),
        "{err}"
    );
    assert!(!host.root().join("jw").exists());
}

#[test]
fn v2_create_writes_every_limit() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let dev = some_block_device();
    let g = cg
        .create(&id(ID), &limits(dev.as_ref().map(|d| d.0.as_str())))
        .unwrap();
    let dir = host.root().join("jw/jobs").join(ID);
    assert_eq!(g.dirs(), std::slice::from_ref(&dir));
    assert!(g.join_files().is_empty());
    let fd = g.clone_into_fd().expect("a v2 group has a directory fd");
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .unwrap();
    assert_eq!(link, dir);

    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(dir.join("memory.max")), "67108864");
    assert_eq!(read(dir.join("memory.swap.max")), "0");
    assert_eq!(read(dir.join("pids.max")), "32");
    match dev {
        Some((_, majmin)) => assert_eq!(
            read(dir.join("io.max")),
            format!("{majmin} rbps=1048576 wbps=2097152 riops=100 wiops=200")
        ),
        None => assert_eq!(read(dir.join("io.max")), ""),
    }

    cg.remove(&g).unwrap();
    assert!(!dir.exists());
}

#[test]
fn cpu_quota_has_the_kernel_minimum() {
    assert_eq!(cpu_quota_usec(1), 1000);
    assert_eq!(cpu_quota_usec(10), 1000);
    assert_eq!(cpu_quota_usec(200), 20_000);
    assert_eq!(cpu_quota_usec(2000), 200_000);
}

#[test]
fn v2_io_limit_writes_only_the_given_keys() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let Some((dev, majmin)) = some_block_device() else {
        return;
    };
    let mut l = limits(None);
    l.io = Some(ResolvedIo {
        device: dev,
        read_bps: None,
        write_bps: Some(4096),
        read_iops: None,
        write_iops: None,
    });
    let g = cg.create(&id(ID), &l).unwrap();
    assert_eq!(
        read(g.dirs()[0].join("io.max")),
        format!("{majmin} wbps=4096")
    );
    cg.remove(&g).unwrap();
}

#[test]
fn v2_a_missing_control_file_is_an_error_naming_the_limit_and_leaves_no_group() {
    for (omit, limit) in [
        (&["cpu.max"][..], "cpu"),
        (&["memory.max"][..], "memory"),
        (&["pids.max"][..], "pids"),
        (&["io.max"][..], "io"),
    ] {
        let host = v2_host();
        let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
        set_template(v2_template(Box::leak(omit.to_vec().into_boxed_slice())));
        // Any block device will do; without one the io case cannot arise.
        let dev = some_block_device().map(|d| d.0).unwrap_or_default();
        if limit == "io" && dev.is_empty() {
            continue;
        }
        let err = cg
            .create(&id(ID), &limits((!dev.is_empty()).then_some(dev.as_str())))
            .unwrap_err();
        let dir = host.root().join("jw/jobs").join(ID);
        assert_eq!(err.limit(), Some(limit), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the {limit} limit cannot be enforced on this host: {} is missing",
                dir.join(omit[0]).display()
            )
        );
        assert!(!dir.exists(), "the half-created group of {limit} is left");
    }
}

#[test]
fn v2_a_refused_value_is_an_error_naming_the_limit_and_leaves_no_group() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    // A directory in place of the file makes the write fail as the kernel's EINVAL would.
    let jobs = host.root().join("jw/jobs");
    let template = v2_template(&["memory.max"]);
    set_template(Box::new(move |dir| {
        std::fs::create_dir(dir.join("memory.max")).unwrap();
        template(dir)
    }));
    let err = cg.create(&id(ID), &limits(None)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::LimitRejected { limit: "memory", value, .. } if value == "67108864"),
        "{err}"
    );
    // The stand-in cannot rmdir a directory holding a directory; the real cgroupfs has no
    // such entries. The group was attempted: only memory.max/ is left.
    let dir = jobs.join(ID);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["memory.max"]);
}

#[test]
fn v2_swap_file_missing_is_fine_only_without_swap() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    set_template(v2_template(&["memory.swap.max"]));
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    cg.remove(&g).unwrap();

    host.write("swaps", SWAP);
    let err = cg.create(&id(ID), &limits(None)).unwrap_err();
    assert_eq!(err.limit(), Some("swap"));
    assert!(err.to_string().ends_with(
        "memory.swap.max is missing; the kernel has no swap accounting and the host has active swap"
    ), "{err}");
    assert!(!host.root().join("jw/jobs").join(ID).exists());
}

#[test]
fn v2_a_device_that_is_not_a_block_device_is_refused() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let err = cg.create(&id(ID), &limits(Some("/dev/null"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the io limit device /dev/null is not a block device"
    );
    let err = cg
        .create(&id(ID), &limits(Some("/dev/no-such-disk")))
        .unwrap_err();
    assert!(
        matches!(&err, CgroupError::IoDevice { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(!host.root().join("jw/jobs").join(ID).exists());
}

#[test]
fn v2_an_existing_group_is_refused_and_kept() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let dir = host.root().join("jw/jobs").join(ID);
    std::fs::create_dir(&dir).unwrap();
    let err = cg.create(&id(ID), &limits(None)).unwrap_err();
    assert!(matches!(err, CgroupError::GroupExists { .. }), "{err}");
    assert!(dir.exists());
}

#[test]
fn v2_kill_and_usage() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let dir = g.dirs()[0].clone();
    assert_eq!(cg.usage(&g), Usage::default());
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.peak"), "4096\n").unwrap();
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    assert_eq!(
        cg.usage(&g),
        Usage {
            cpu_usec: Some(1234),
            peak_memory_bytes: Some(4096),
            oom_killed: true
        }
    );
    cg.kill(&g).unwrap();
    assert_eq!(read(dir.join("cgroup.kill")), "1");
    cg.remove(&g).unwrap();
}

#[test]
fn v2_reap_stale_takes_only_job_groups() {
    let host = v2_host();
    let cg = Cgroups::probe(&host.config(Backend::V2, Some("jw"))).unwrap();
    let jobs = host.root().join("jw/jobs");
    for name in [ID, ID2, "not-a-job", "0123456789ABCDEF0123456789ABCDEF"] {
        std::fs::create_dir(jobs.join(name)).unwrap();
        populate(&jobs.join(name)).unwrap();
    }
    // A file named like a job is no group.
    std::fs::write(jobs.join("00000000000000000000000000000000"), "").unwrap();
    assert_eq!(cg.reap_stale().unwrap(), [id(ID), id(ID2)]);
    assert!(!jobs.join(ID).exists() && !jobs.join(ID2).exists());
    assert!(jobs.join("not-a-job").exists());
    assert!(jobs.join("0123456789ABCDEF0123456789ABCDEF").exists());
    assert!(jobs.join("00000000000000000000000000000000").exists());
    assert_eq!(cg.reap_stale().unwrap(), []);
}

// ----- cgroup v1 -----

/// The control files of each v1 controller.
fn v1_files(controller: &str) -> &'static [&'static str] {
    match controller {
        "cpu" => &["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.stat"],
        "cpuacct" => &["cpuacct.usage"],
        "memory" => &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.max_usage_in_bytes",
            "memory.oom_control",
        ],
        "blkio" => &[
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ],
        "pids" => &["pids.max"],
        "freezer" => &["freezer.state"],
        _ => &[],
    }
}

/// Every new v1 group gets `cgroup.procs` and the files of the controllers of its
/// hierarchy (named by the mount directory, e.g. `cpu,cpuacct`), except `omit`.
fn v1_template(root: PathBuf, omit: &'static [&'static str]) -> Template {
    Box::new(move |dir| {
        let mount = dir.strip_prefix(&root).unwrap().iter().next().unwrap();
        let mut files = vec![("cgroup.procs", String::new())];
        for c in mount.to_str().unwrap().split(',') {
            files.extend(v1_files(c).iter().map(|f| (*f, String::new())));
        }
        files.retain(|(f, _)| !omit.contains(f));
        files
    })
}

/// A hybrid host like this project's CI machines: separate v1 hierarchies, an empty
/// cgroup2 at `unified`. `mounts` names the v1 mount directories.
fn v1_host(mounts: &[&str]) -> Host {
    let host = Host::new();
    let mut mi = host.mount_line(20, "", "tmpfs", "rw,mode=755");
    for (i, m) in mounts.iter().enumerate() {
        let n = 21 + u32::try_from(i).unwrap();
        mi += &host.mount_line(n, m, "cgroup", &format!("rw,{m}"));
        std::fs::create_dir(host.root().join(m)).unwrap();
    }
    mi += &host.mount_line(40, "systemd", "cgroup", "rw,name=systemd");
    mi += &host.mount_line(41, "unified", "cgroup2", "rw");
    std::fs::create_dir(host.root().join("unified")).unwrap();
    std::fs::write(host.root().join("unified/cgroup.controllers"), "").unwrap();
    host.write("mountinfo", &mi);
    host.write("cgroup", "2:cpu:/\n1:name=systemd:/\n0::/\n");
    set_template(v1_template(host.root(), &[]));
    host
}

const SEPARATE: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];
const COMOUNTED: &[&str] = &["cpu,cpuacct", "memory", "freezer", "blkio", "pids"];

fn v1(c: &Cgroups) -> &v1::V1 {
    match c {
        Cgroups::V1(b) => b,
        Cgroups::V2(_) => panic!("expected cgroup v1"),
    }
}

#[test]
fn hybrid_host_probes_as_v1_with_the_parent_in_each_hierarchy() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    assert_eq!(cg.name(), "cgroup v1");
    let expected: Vec<PathBuf> = ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"]
        .iter()
        .map(|m| host.root().join(m).join("jobworker"))
        .collect();
    assert_eq!(v1(&cg).parents(), expected);
    assert!(expected.iter().all(|p| p.is_dir()));
    // Hierarchies the jobs do not use are left alone.
    assert!(!host.root().join("cpuset/jobworker").exists());
    assert!(!host.root().join("devices/jobworker").exists());
}

#[test]
fn co_mounted_controllers_share_one_group() {
    let host = v1_host(COMOUNTED);
    let cg = Cgroups::probe(&host.config(Backend::V1, Some("jw/test"))).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let expected: Vec<PathBuf> = ["cpu,cpuacct", "memory", "blkio", "pids", "freezer"]
        .iter()
        .map(|m| host.root().join(m).join("jw/test").join(ID))
        .collect();
    assert_eq!(g.dirs(), expected);
    let joins: Vec<PathBuf> = expected.iter().map(|d| d.join("tasks")).collect();
    assert_eq!(g.join_files(), joins);
    assert!(g.clone_into_fd().is_none());
    cg.remove(&g).unwrap();
    assert!(expected.iter().all(|d| !d.exists()));
}

#[test]
fn no_backend_names_what_is_missing_for_each() {
    let host = v1_host(&["cpu", "memory"]);
    let err = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no usable cgroup backend: cgroup v2: controllers cpu, memory, io, pids are not \
             available in {} (its cgroup.controllers lists: none; on a hybrid host they are \
             bound to cgroup v1 hierarchies); cgroup v1: controllers cpuacct, blkio, pids, \
             freezer are not mounted as cgroup v1 hierarchies under {}",
            host.root().join("unified").display(),
            host.root().display()
        )
    );
}

#[test]
fn nothing_mounted_under_the_root_is_no_backend() {
    let host = Host::new();
    host.write("mountinfo", "22 1 0:21 / /proc rw - proc proc rw\n");
    host.write("cgroup", "0::/\n");
    let err = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "no usable cgroup backend: cgroup v2: no cgroup2 filesystem is mounted under {}",
            host.root().display()
        )),
        "{err}"
    );
}

#[test]
fn forcing_v2_on_a_hybrid_host_says_why_not() {
    let host = v1_host(SEPARATE);
    let err = Cgroups::probe(&host.config(Backend::V2, None)).unwrap_err();
    assert!(matches!(err, CgroupError::V2Unavailable(_)), "{err}");
    let err = Cgroups::probe(&host.config(Backend::V1, Some("../escape"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid cgroup parent \"../escape\": only plain group names separated by '/' are allowed"
    );
}

#[test]
fn a_pure_v2_host_is_preferred_by_auto() {
    let host = v2_host();
    let mut mi = read(host.tmp.path().join("mountinfo"));
    // A stray v1 hierarchy elsewhere does not change the choice.
    mi += "50 1 0:50 / /elsewhere/cpu rw - cgroup cgroup rw,cpu\n";
    host.write("mountinfo", &mi);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    assert_eq!(cg.name(), "cgroup v2");
}

#[test]
fn v1_create_writes_every_limit_in_its_hierarchy() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let dev = some_block_device();
    let g = cg
        .create(&id(ID), &limits(dev.as_ref().map(|d| d.0.as_str())))
        .unwrap();
    let dir = |m: &str| host.root().join(m).join("jobworker").join(ID);
    assert_eq!(g.join_files().len(), 6);

    let mut written = BTreeMap::new();
    for m in ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"] {
        for entry in std::fs::read_dir(dir(m)).unwrap().flatten() {
            let content = read(entry.path());
            if !content.is_empty() {
                written.insert(
                    format!("{m}/{}", entry.file_name().to_str().unwrap()),
                    content,
                );
            }
        }
    }
    let mut expected: BTreeMap<String, String> = [
        ("cpu/cpu.cfs_period_us", "100000"),
        ("cpu/cpu.cfs_quota_us", "50000"),
        ("memory/memory.limit_in_bytes", "67108864"),
        ("memory/memory.memsw.limit_in_bytes", "67108864"),
        ("memory/memory.swappiness", "0"),
        ("pids/pids.max", "32"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some((_, majmin)) = &dev {
        for (f, v) in [
            ("read_bps_device", "1048576"),
            ("write_bps_device", "2097152"),
            ("read_iops_device", "100"),
            ("write_iops_device", "200"),
        ] {
            expected.insert(format!("blkio/blkio.throttle.{f}"), format!("{majmin} {v}"));
        }
    }
    assert_eq!(written, expected);
    cg.remove(&g).unwrap();
    assert!(!dir("cpu").exists() && !dir("freezer").exists());
    assert!(
        host.root().join("cpu/jobworker").exists(),
        "the parent stays"
    );
}

#[test]
fn v1_memory_limit_is_written_before_memsw() {
    // With both at "max", the kernel refuses memsw below limit_in_bytes; writing
    // limit_in_bytes first is the only order that works on a fresh group. The stand-in
    // records the order through the files' modification order.
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let dir = host.root().join("memory/jobworker").join(ID);
    let modified = |f: &str| std::fs::metadata(dir.join(f)).unwrap().modified().unwrap();
    assert!(modified("memory.limit_in_bytes") <= modified("memory.memsw.limit_in_bytes"));
    cg.remove(&g).unwrap();
}

#[test]
fn v1_without_memsw_needs_a_host_without_swap() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    set_template(v1_template(
        host.root(),
        &["memory.memsw.limit_in_bytes", "memory.swappiness"],
    ));
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    cg.remove(&g).unwrap();

    host.write("swaps", SWAP);
    let err = cg.create(&id(ID), &limits(None)).unwrap_err();
    assert_eq!(err.limit(), Some("swap"), "{err}");
    for m in ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"] {
        assert!(
            !host.root().join(m).join("jobworker").join(ID).exists(),
            "{m}"
        );
    }
}

#[test]
fn v1_a_missing_control_file_removes_the_group_in_every_hierarchy() {
    let Some((dev, _)) = some_block_device() else {
        return;
    };
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    set_template(v1_template(
        host.root(),
        &["blkio.throttle.write_iops_device"],
    ));
    let err = cg.create(&id(ID), &limits(Some(&dev))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the io limit cannot be enforced on this host: {} is missing",
            host.root()
                .join("blkio/jobworker")
                .join(ID)
                .join("blkio.throttle.write_iops_device")
                .display()
        )
    );
    for m in ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"] {
        assert!(
            !host.root().join(m).join("jobworker").join(ID).exists(),
            "{m}"
        );
    }
}

#[test]
fn v1_usage_reads_cpuacct_and_memory() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    assert_eq!(cg.usage(&g), Usage::default());
    let dir = |m: &str| host.root().join(m).join("jobworker").join(ID);
    std::fs::write(dir("cpuacct").join("cpuacct.usage"), "2500999\n").unwrap();
    std::fs::write(dir("memory").join("memory.max_usage_in_bytes"), "8192\n").unwrap();
    std::fs::write(
        dir("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(
        cg.usage(&g),
        Usage {
            cpu_usec: Some(2500),
            peak_memory_bytes: Some(8192),
            oom_killed: true
        }
    );
    cg.remove(&g).unwrap();
}

#[test]
fn v1_kill_freezes_signals_every_pid_and_thaws() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let freezer = host.root().join("freezer/jobworker").join(ID);

    // An empty group: frozen and thawed.
    cg.kill(&g).unwrap();
    assert_eq!(read(freezer.join("freezer.state")), "THAWED");

    // A group listing a child of this test: it gets SIGKILL.
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(freezer.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
    cg.kill(&g).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(read(freezer.join("freezer.state")), "THAWED");
    std::fs::write(freezer.join("cgroup.procs"), "").unwrap();
    cg.remove(&g).unwrap();
}

#[test]
fn v1_kill_never_signals_a_pid_that_is_not_positive_and_still_thaws() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let freezer = host.root().join("freezer/jobworker").join(ID);
    for bad in ["0\n", "-1\n", "x\n"] {
        std::fs::write(freezer.join("cgroup.procs"), bad).unwrap();
        let err = cg.kill(&g).unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
        assert_eq!(read(freezer.join("freezer.state")), "THAWED");
    }
    std::fs::write(freezer.join("cgroup.procs"), "").unwrap();
    cg.remove(&g).unwrap();
}

#[test]
fn v1_kill_without_freezer_kills_nobody() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let freezer = host.root().join("freezer/jobworker").join(ID);
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(freezer.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
    std::fs::remove_file(freezer.join("freezer.state")).unwrap();
    let err = cg.kill(&g).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Write { value, .. } if value == "FROZEN"),
        "{err}"
    );
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "killed without freezing first"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(freezer.join("cgroup.procs"), "").unwrap();
    cg.remove(&g).unwrap();
}

#[test]
fn v1_reap_stale_takes_only_job_groups_in_any_hierarchy() {
    let host = v1_host(SEPARATE);
    let cg = Cgroups::probe(&host.config(Backend::Auto, None)).unwrap();
    let g = cg.create(&id(ID), &limits(None)).unwrap();
    let dirs = g.dirs().to_vec();
    drop(g);
    // A group left half-made, in one hierarchy only, and a directory that is no job.
    let half = host.root().join("pids/jobworker").join(ID2);
    std::fs::create_dir(&half).unwrap();
    populate(&half).unwrap();
    let other = host.root().join("memory/jobworker/other");
    std::fs::create_dir(&other).unwrap();

    assert_eq!(cg.reap_stale().unwrap(), [id(ID), id(ID2)]);
    assert!(dirs.iter().all(|d| !d.exists()));
    assert!(!half.exists());
    assert!(other.exists());
}
