//! Cgroups of the tests: a parent group per executor (or per backend test), named by the
//! kit and removed, with anything left under it, from every hierarchy once its users are
//! gone. Nothing else of the machine's cgroups is touched.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use jobworker_executor::cgroup::{Backend, CgroupConfig, Cgroups};

use crate::env::note;

/// The cgroup file system.
const ROOT: &str = "/sys/fs/cgroup";

/// The prefixes of the parents the kit names; it removes no other group.
const PREFIXES: [&str; 2] = ["jobworker-test-", "jobworker-bench-"];

/// A parent group `PREFIX-PID-TAG` (created by the executor given `--cgroup-parent`, or
/// by [`TestParent`]), removed from every hierarchy when dropped.
#[derive(Debug)]
pub struct CgroupParent {
    pub name: String,
}

impl CgroupParent {
    /// `prefix` is `jobworker-test` or `jobworker-bench`; `tag` keeps only its ASCII
    /// letters and digits.
    pub fn new(prefix: &str, tag: &str) -> CgroupParent {
        let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).collect();
        let name = format!("{prefix}-{}-{tag}", std::process::id());
        assert!(
            PREFIXES.iter().any(|p| name.starts_with(p)),
            "not a test parent: {name}"
        );
        CgroupParent { name }
    }

    /// The parent's directory in each hierarchy where it exists: `/sys/fs/cgroup/NAME`
    /// (cgroup v2) and `/sys/fs/cgroup/*/NAME` (each v1 hierarchy), each once.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let root = Path::new(ROOT);
        let mut candidates = vec![root.join(&self.name)];
        if let Ok(entries) = std::fs::read_dir(root) {
            candidates.extend(entries.flatten().map(|e| e.path().join(&self.name)));
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in candidates {
            // Co-mounted controllers show under several names (`cpu` -> `cpu,cpuacct`).
            if let Ok(real) = dir.canonicalize()
                && real.is_dir()
                && !dirs.contains(&real)
            {
                dirs.push(real);
            }
        }
        dirs
    }

    /// Job groups under the parent (`PARENT/ID` on v1, `PARENT/jobs/ID` on v2).
    pub fn job_groups(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for parent in self.dirs() {
            for dir in [parent.clone(), parent.join("jobs")] {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.parse::<jobworker_protocol::JobId>().is_ok() {
                        left.push(e.path());
                    }
                }
            }
        }
        left
    }

    /// Control file `file` of the group above all jobs (v1: the parent, in the
    /// hierarchy of that controller; v2: the parent's `jobs/`).
    pub fn jobs_file(&self, file: &str) -> Option<PathBuf> {
        self.dirs().into_iter().find_map(|parent| {
            [parent.join("jobs").join(file), parent.join(file)]
                .into_iter()
                .find(|path| path.exists())
        })
    }

    /// The job's group directory that holds control file `file` (v1: the hierarchy of
    /// that controller; v2: the one job group).
    pub fn job_file(&self, id: &str, file: &str) -> Option<PathBuf> {
        self.dirs().into_iter().find_map(|parent| {
            [parent.join(id), parent.join("jobs").join(id)]
                .into_iter()
                .map(|dir| dir.join(file))
                .find(|path| path.exists())
        })
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for dir in self.dirs() {
            assert!(
                dir.file_name().is_some_and(|n| *n == *self.name),
                "not a test parent: {}",
                dir.display()
            );
            rmdir_tree(&dir);
        }
    }
}

/// Removes a tree of cgroup directories, deepest first (control files go with their
/// directory). A group still in use stays, with a line saying so.
pub fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cannot remove test cgroup {}: {e}", dir.display());
    }
}

/// The backend the tests ask for: `JOBWORKER_TEST_CGROUP_BACKEND` (`v1`, `v2`; the VM
/// tests set `v2`, so that a guest misdetected as v1 fails instead of testing the wrong
/// backend), else whatever the host offers.
pub fn backend() -> Backend {
    std::env::var("JOBWORKER_TEST_CGROUP_BACKEND")
        .map(|b| b.parse().expect("JOBWORKER_TEST_CGROUP_BACKEND: v1 or v2"))
        .unwrap_or(Backend::Auto)
}

/// `--cgroup-backend` for the executor when the test environment forces one.
pub fn backend_flag() -> Vec<String> {
    match std::env::var("JOBWORKER_TEST_CGROUP_BACKEND") {
        Ok(b) => vec!["--cgroup-backend".into(), b],
        Err(_) => vec![],
    }
}

/// A parent group for a test of the cgroup backend itself, prepared by the backend
/// ([`Cgroups::probe`]) as the executor would, and removed when dropped.
pub struct TestParent {
    pub name: String,
    pub cgroups: Cgroups,
    _parent: CgroupParent,
}

impl TestParent {
    pub fn new(test: &str) -> TestParent {
        let parent = CgroupParent::new("jobworker-test", test);
        let cfg = CgroupConfig::host(backend(), Some(parent.name.clone()));
        let cgroups = Cgroups::probe(&cfg).expect("the cgroup backend");
        println!("{test}: {} under {}", cgroups.name(), parent.name);
        TestParent {
            name: parent.name.clone(),
            cgroups,
            _parent: parent,
        }
    }

    /// The parent's directory in each hierarchy, as the backend has it.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.cgroups {
            Cgroups::V1(b) => b.parents().into_iter().map(Path::to_path_buf).collect(),
            Cgroups::V2(b) => vec![b.parent().to_path_buf()],
        }
    }
}

/// The block device for io limits: `JOBWORKER_TEST_IO_DEVICE` when set (the VM tests'
/// scratch disk), else the whole disk holding `/`; `None` (with a visible note) when `/`
/// is not on a block device, e.g. an overlay or an initramfs.
pub fn io_disk() -> Option<String> {
    if let Ok(dev) = std::env::var("JOBWORKER_TEST_IO_DEVICE") {
        return Some(dev);
    }
    let dev = std::fs::metadata("/").expect("stat /").dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let uevent = |dir: &Path| std::fs::read_to_string(dir.join("uevent")).ok();
    let Some(mut text) = uevent(&sys) else {
        note("SKIPPED (io part): / is not on a block device");
        return None;
    };
    if text.contains("DEVTYPE=partition") {
        text = uevent(&sys.join(".."))?;
    }
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))?;
    let path = format!("/dev/{name}");
    let is_block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        note(&format!(
            "SKIPPED (io part): {path} is not a block device here"
        ));
        return None;
    }
    Some(path)
}

/// Reads a `key value` line of a flat-keyed cgroup file (`cpu.stat`, `memory.events`).
pub fn cgroup_stat(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()))
}
