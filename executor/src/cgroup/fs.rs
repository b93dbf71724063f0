//! File operations on cgroup filesystems, shared by both backends.
//!
//! Everything here works on plain paths under the configured cgroup root, so the
//! backends run unchanged against a temporary directory in the unit tests. The one
//! thing a cgroup filesystem does that a directory tree does not (a new group comes
//! filled with control files, and `rmdir` removes a group despite them) sits behind
//! [`GroupDirs`]: [`HostDirs`] on a host, a stand-in that writes control files in the
//! unit tests.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::CgroupError;

/// How group directories are made and removed.
pub trait GroupDirs: Send + Sync + std::fmt::Debug {
    /// Creates one group directory (`mkdir(2)`, failing if it exists).
    fn make(&self, path: &Path) -> io::Result<()>;
    /// Removes one group directory (`rmdir(2)`: the kernel refuses while the group has
    /// processes or children).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// A real cgroup filesystem: the kernel fills a new group with its control files.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostDirs;

impl GroupDirs for HostDirs {
    fn make(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
}

/// A shared handle on the configured [`GroupDirs`].
pub type Dirs = Arc<dyn GroupDirs>;

/// Writes `value` into a control file with a single `write(2)`, as the kernel parses
/// each write on its own. The file is never created: a missing file means the kernel
/// lacks the feature.
pub(super) fn write_control(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    let n = f.write(value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", value.len()),
        ));
    }
    Ok(())
}

/// [`write_control`], with the error naming the path and the value.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_control(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Creates one cgroup directory (failing if it exists), mode 0755 whatever the umask: a
/// job reads its own limits through its cgroup namespace, as the job user.
pub(super) fn create_group_dir(dirs: &Dirs, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    dirs.make(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Writes one limit; a missing file means the host cannot enforce it.
pub(super) fn write_limit(
    dir: &Path,
    file: &str,
    limit: &'static str,
    value: &str,
) -> Result<(), CgroupError> {
    let path = dir.join(file);
    write_control(&path, value).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CgroupError::LimitUnsupported {
                limit,
                path,
                reason: "",
            }
        } else {
            CgroupError::LimitRejected {
                limit,
                path,
                value: value.to_owned(),
                source,
            }
        }
    })
}

/// `mkdir -p`: creates `path` and its missing ancestors, returning the directories it
/// created, outermost first.
pub(super) fn create_dir_all(dirs: &Dirs, path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_owned());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    missing.reverse();
    let mut created = Vec::new();
    for dir in missing {
        match create_group_dir(dirs, &dir) {
            Ok(()) => created.push(dir),
            // Created concurrently by someone else: it is not ours.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                remove_created(dirs, &created);
                return Err(CgroupError::CreateGroup { path: dir, source });
            }
        }
    }
    Ok(created)
}

/// Removes directories this module just created, innermost first, on the error path of a
/// half-done step; a failure here cannot be reported better than the original error.
pub(super) fn remove_created(dirs: &Dirs, created: &[PathBuf]) {
    for dir in created.iter().rev() {
        if let Err(e) = dirs.remove(dir) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove a cgroup created for a failed step");
        }
    }
}

/// Waits between tries of removing a busy group: 5 ms doubling, about 0.6 s in all.
const REMOVE_BACKOFF: [Duration; 7] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
];

/// Removes each directory (`rmdir(2)`; a directory already gone counts as removed). A
/// group that is still busy (`EBUSY`: its last processes are exiting) is retried with a
/// short backoff. Every directory is tried; the first error is returned.
pub(super) fn remove_dirs<'a>(
    dirs: &Dirs,
    paths: impl Iterator<Item = &'a PathBuf>,
) -> Result<(), CgroupError> {
    let mut first_error = None;
    for dir in paths {
        if let Err(e) = remove_dir_retrying(dirs, dir) {
            tracing::warn!(error = %e, "cannot remove a job cgroup");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_dir_retrying(dirs: &Dirs, dir: &Path) -> Result<(), CgroupError> {
    let mut backoff = REMOVE_BACKOFF.iter();
    loop {
        match dirs.remove(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => match backoff.next() {
                Some(wait) => std::thread::sleep(*wait),
                None => {
                    return Err(CgroupError::Remove {
                        path: dir.to_owned(),
                        source: e,
                    });
                }
            },
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

/// The pids listed in a `cgroup.procs` file; anything but a positive number is an error.
pub(super) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = super::read(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(CgroupError::Parse {
                path: path.to_owned(),
                reason: format!("{l:?} is not a pid"),
            }),
        })
        .collect()
}

/// The value of `key` in a flat-keyed file (`key value` lines, as `cpu.stat`).
pub(super) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// Reads a file holding one number.
pub(super) fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads `key` from a flat-keyed file.
pub(super) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    keyed_value(&fs::read_to_string(path).ok()?, key)
}
