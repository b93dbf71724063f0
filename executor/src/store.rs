//! The state directory: one directory per job, named by its id, holding the job's record
//! (`status.json`, rewritten atomically) and its output (`output`).
//!
//! ```text
//! <state_dir>/            root, 0700
//!   jobs/<job-id>/        0700
//!     status.json         the JobStatus, JSON
//!     stdout, stderr      each stream as written, up to the cap (see `output`)
//!     index               the order in which the streams wrote
//!     output              (an earlier release's job) stdout and stderr, merged
//! ```
//!
//! Paths are only ever built from a [`JobId`], whose text form is 32 hex digits.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jobworker_protocol::{JobId, JobStatus};

use crate::output::{self, Progress};

pub struct Store {
    jobs: PathBuf,
}

/// A job found on disk at start-up.
pub struct Loaded {
    pub status: JobStatus,
    /// Its output as its files hold it.
    pub output: Progress,
}

impl Store {
    /// Opens (creating as needed, mode 0700) the state directory.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(state_dir)?;
        let jobs = state_dir.join("jobs");
        b.create(&jobs)?;
        Ok(Self { jobs })
    }

    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        self.jobs.join(id.to_string())
    }

    /// Creates the directory of a new job.
    pub fn create_job(&self, id: &JobId) -> io::Result<PathBuf> {
        let dir = self.job_dir(id);
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(dir)
    }

    /// Writes the job's record atomically (temporary file, fsync, rename).
    pub fn save(&self, status: &JobStatus) -> io::Result<()> {
        let dir = self.job_dir(&status.id);
        let tmp = dir.join("status.json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(status).map_err(io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join("status.json"))
    }

    /// Deletes a job's directory and everything in it.
    pub fn remove(&self, id: &JobId) -> io::Result<()> {
        match fs::remove_dir_all(self.job_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Every job on disk. Entries that are not a job directory with a readable record are
    /// reported in `skipped` and left alone.
    pub fn load_all(&self) -> io::Result<(Vec<Loaded>, Vec<String>)> {
        let mut loaded = Vec::new();
        let mut skipped = Vec::new();
        for entry in fs::read_dir(&self.jobs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = name.parse::<JobId>() else {
                skipped.push(format!("{name}: not a job id"));
                continue;
            };
            let dir = self.job_dir(&id);
            let record = match fs::read(dir.join("status.json")) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(format!("{name}: status.json: {e}"));
                    continue;
                }
            };
            let status: JobStatus = match serde_json::from_slice(&record) {
                Ok(s) => s,
                Err(e) => {
                    skipped.push(format!("{name}: status.json: {e}"));
                    continue;
                }
            };
            if status.id != id {
                skipped.push(format!("{name}: record names another job"));
                continue;
            }
            let output = match output::load(&dir, status.output_truncated) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push(format!("{name}: output: {e}"));
                    continue;
                }
            };
            loaded.push(Loaded { status, output });
        }
        Ok((loaded, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_protocol::{JobState, Limits};

    fn status(id: u8) -> JobStatus {
        JobStatus {
            id: JobId::from_bytes([id; 16]),
            owner: "alice".into(),
            argv: vec!["true".into()],
            limits: Limits::default(),
            state: JobState::Exited,
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            error: None,
            started_at_ms: 1,
            ended_at_ms: Some(2),
            cpu_usec: None,
            peak_memory_bytes: None,
            output_bytes: 3,
            output_truncated: false,
            uid: Some(600_001),
            start_failure: None,
            name: None,
            labels: vec![],
        }
    }

    #[test]
    fn records_survive_a_reopen_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let s = status(1);
        store.create_job(&s.id).unwrap();
        fs::write(store.job_dir(&s.id).join("output"), b"abc").unwrap();
        store.save(&s).unwrap();
        fs::create_dir(dir.path().join("state/jobs/not-a-job")).unwrap();
        let orphan = JobId::from_bytes([2; 16]);
        store.create_job(&orphan).unwrap();

        let store = Store::open(&dir.path().join("state")).unwrap();
        let (loaded, mut skipped) = store.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].status, s);
        assert_eq!(loaded[0].output.len, 3);
        skipped.sort();
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].starts_with("02020202"), "{skipped:?}");
        assert!(skipped[1].starts_with("not-a-job"), "{skipped:?}");

        store.remove(&s.id).unwrap();
        store.remove(&s.id).unwrap();
        assert!(!store.job_dir(&s.id).exists());
    }

    #[test]
    fn a_record_written_before_job_ids_and_deadlines_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let id = JobId::from_bytes([5; 16]);
        store.create_job(&id).unwrap();
        // A status.json as the previous release wrote it: no uid, and limits without
        // tmp_bytes or timeout_ms.
        let mut old = serde_json::to_value(status(5)).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("uid");
        o["limits"] =
            serde_json::json!({"cpu_millis": 500, "memory_bytes": 1024, "pids": 5, "io": null});
        fs::write(store.job_dir(&id).join("status.json"), old.to_string()).unwrap();
        fs::write(store.job_dir(&id).join("output"), b"").unwrap();
        let (loaded, skipped) = store.load_all().unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(loaded.len(), 1);
        let s = &loaded[0].status;
        assert_eq!(
            (s.uid, s.limits.tmp_bytes, s.limits.timeout_ms),
            (None, None, None)
        );
        assert_eq!(s.limits.cpu_millis, Some(500));
    }
}
