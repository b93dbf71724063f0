//! Scratch directories, and FIFOs between a test and a job.
//!
//! Jobs run as an unprivileged user with their own `/tmp` and `/var/tmp`, and the checkout
//! may live under a mode 0700 directory, so as root the scratch area is
//! `/var/lib/jobworker-tests` (or `JOBWORKER_TEST_SCRATCH`), every directory in it mode
//! 0755. Without root (no job runs then) it is the system's temporary directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::env::{is_root, note};

/// Where scratch directories go: `JOBWORKER_TEST_SCRATCH`, else
/// `/var/lib/jobworker-tests` as root, else the system's temporary directory.
pub fn base() -> PathBuf {
    let own = match std::env::var_os("JOBWORKER_TEST_SCRATCH") {
        Some(dir) => PathBuf::from(dir),
        None if is_root() => PathBuf::from("/var/lib/jobworker-tests"),
        None => return std::env::temp_dir(),
    };
    std::fs::create_dir_all(&own).unwrap_or_else(|e| panic!("creating {}: {e}", own.display()));
    chmod(&own, 0o755);
    own
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A directory any user can traverse, removed when dropped, unless the thread is
/// panicking (a failing test keeps its daemons' logs and state for a look, and says
/// where) or [`Scratch::keep`] was called.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    keep: Arc<AtomicBool>,
    /// Whether this is a top directory (not made by [`Scratch::child`]): only those say
    /// that they were kept.
    top: bool,
}

impl Scratch {
    /// A new directory `TAG-XXXXXX` in [`base`].
    pub fn new(tag: &str) -> Scratch {
        Self::new_in(&base(), tag)
    }

    /// A new directory `TAG-XXXXXX` in `dir`.
    pub fn new_in(dir: &Path, tag: &str) -> Scratch {
        let path = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in(dir)
            .unwrap_or_else(|e| panic!("a scratch directory in {}: {e}", dir.display()))
            .keep();
        chmod(&path, 0o755);
        Scratch {
            path,
            keep: Arc::default(),
            top: true,
        }
    }

    /// A subdirectory, kept or removed with this one.
    pub fn child(&self, name: &str) -> Scratch {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        chmod(&path, 0o755);
        Scratch {
            path,
            keep: self.keep.clone(),
            top: false,
        }
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// A subdirectory jobs (running as the job user) may write into.
    pub fn writable(&self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        chmod(&dir, 0o777);
        dir
    }

    /// Keeps the directory (and its children) after the drop.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    /// A short tag unique to this directory: the random part of its name.
    pub fn unique(&self) -> String {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let random = name.rsplit('-').next().unwrap_or_default();
        random.chars().filter(char::is_ascii_alphanumeric).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) || std::thread::panicking() {
            if self.top {
                note(&format!("kept {}", self.path.display()));
            }
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A FIFO anyone can open, `NAME` in a scratch directory of its own, and the test's end
/// of it, open for reading and writing: on Linux that open never blocks, and with it a
/// job's own open of the FIFO (either way) never blocks and its writes never fail.
fn fifo(name: &str) -> (Scratch, PathBuf, File) {
    let dir = Scratch::new(name);
    let path = dir.join(name);
    let st = Command::new("mkfifo")
        .arg("-m")
        .arg("0666")
        .arg(&path)
        .status()
        .expect("running mkfifo");
    assert!(st.success(), "mkfifo {}: {st}", path.display());
    let end = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    (dir, path, end)
}

/// A FIFO a job reads from: the job blocks at `read x < GATE` until the test lets it go
/// on with [`Gate::open`], one line per step. The test's end stays open from the start,
/// so a job that opens the gate between two steps never finds it without a writer.
pub struct Gate {
    pub path: PathBuf,
    end: File,
    _dir: Scratch,
}

impl Gate {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Gate {
        let (dir, path, end) = fifo("gate");
        Gate {
            path,
            end,
            _dir: dir,
        }
    }

    /// Lets the job take its next step: one line into the FIFO (it never blocks: the
    /// line waits in the FIFO for the job's read).
    pub fn open(&mut self) {
        self.end.write_all(b"go\n").expect("writing to the gate");
    }
}

/// A FIFO a job writes one line into when it reaches a point (`echo done > CHECKPOINT`):
/// the test waits for that line, an event, instead of asking until something is true.
pub struct Checkpoint {
    pub path: PathBuf,
    end: Option<File>,
    _dir: Scratch,
}

impl Checkpoint {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Checkpoint {
        let (dir, path, end) = fifo("checkpoint");
        Checkpoint {
            path,
            end: Some(end),
            _dir: dir,
        }
    }

    /// Waits (at most `within`) for the job's line, and returns it without its newline.
    pub async fn reached(&mut self, within: Duration) -> String {
        let end = self.end.take().expect("a checkpoint is reached once");
        let pipe = tokio::net::unix::pipe::Receiver::from_file(end).expect("the checkpoint FIFO");
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(pipe);
        tokio::time::timeout(within, reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("the job did not reach its checkpoint within {within:?}"))
            .expect("reading the checkpoint");
        line.trim_end_matches('\n').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::env::LIMIT;
    use crate::process::wait_child;

    #[tokio::test]
    async fn a_gate_lets_a_process_go_on_and_a_checkpoint_says_it_did() {
        let mut gate = Gate::new();
        let mut checkpoint = Checkpoint::new();
        let script = format!(
            "read x < {} && echo \"$x reached\" > {}",
            gate.path.display(),
            checkpoint.path.display()
        );
        let mut child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
        gate.open();
        assert_eq!(checkpoint.reached(LIMIT).await, "go reached");
        assert!(wait_child(&mut child, LIMIT).unwrap().success());
    }

    #[test]
    fn a_scratch_directory_goes_with_its_children_unless_kept() {
        let top = Scratch::new("scratch-test");
        let child = top.child("inner");
        let writable = top.writable("w");
        assert!(writable.is_dir());
        let (top_path, child_path) = (top.path.clone(), child.path.clone());
        drop(child);
        assert!(!child_path.exists());
        drop(top);
        assert!(!top_path.exists());

        let kept = Scratch::new("scratch-test");
        kept.keep();
        let path = kept.path.clone();
        drop(kept);
        assert!(path.is_dir());
        std::fs::remove_dir_all(path).unwrap();
    }
}
