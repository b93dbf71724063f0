//! One job's shared state: what never changes after its start, and what its supervisor
//! updates (its final status, its cgroup while it runs).

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use std::sync::Arc;

use jobworker_protocol::{JobId, JobState, JobStatus, Label, Limits, ListFilter};
use tokio::sync::{Notify, mpsc, watch};

use super::exec::ExecOrder;
use super::lock;
use crate::cgroup::{Cgroups, JobGroup};
use crate::output::Progress;

pub(super) struct Job {
    pub id: JobId,
    pub owner: String,
    pub argv: Vec<String>,
    pub limits: Limits,
    pub name: Option<String>,
    pub labels: Vec<Label>,
    /// Position in start order (the table's index for listing and eviction).
    pub seq: u64,
    pub started_at_ms: u64,
    pub uid: Option<u32>,
    pub progress: watch::Receiver<Progress>,
    pub live: Mutex<Live>,
    /// Wakes the supervisor when a stop is asked for.
    pub stop: Notify,
    pub stop_requested: AtomicBool,
    /// What a client attaches to: the job's terminal.
    pub attach: Mutex<Attach>,
    /// Exec requests, to the job's supervisor (`None` once it has ended, or for a job
    /// loaded from the state directory).
    pub exec_tx: Option<mpsc::Sender<Box<ExecOrder>>>,
    /// Execs alive in the job.
    pub execs: AtomicUsize,
    /// Set once nothing of the job's supervisor is left to do (its record is final):
    /// only then may the job be removed.
    pub cleaned: watch::Sender<bool>,
}

/// The job's end a client attaches to.
#[derive(Default)]
pub(super) struct Attach {
    /// The job's terminal (a duplicate of its master), from when its init opened it to
    /// the job's end.
    pub terminal: Option<Arc<OwnedFd>>,
}

pub(super) struct Live {
    /// Set once the job has ended (or was loaded as ended).
    pub final_status: Option<JobStatus>,
    /// The job's cgroup while it runs, for live usage figures.
    pub group: Option<Arc<JobGroup>>,
}

/// What a job is, fixed at its start.
pub(super) struct JobInfo {
    pub id: JobId,
    pub owner: String,
    pub argv: Vec<String>,
    pub limits: Limits,
    pub name: Option<String>,
    pub labels: Vec<Label>,
    pub started_at_ms: u64,
    /// The job's own user and group id (`None`: recorded before jobs had one).
    pub uid: Option<u32>,
}

impl JobInfo {
    /// The fixed part of a recorded job.
    pub fn of(status: &JobStatus) -> Self {
        JobInfo {
            id: status.id,
            owner: status.owner.clone(),
            argv: status.argv.clone(),
            limits: status.limits.clone(),
            name: status.name.clone(),
            labels: status.labels.clone(),
            started_at_ms: status.started_at_ms,
            uid: status.uid,
        }
    }
}

impl Live {
    /// A job that runs in `group`.
    pub fn running(group: &Arc<JobGroup>) -> Self {
        Live {
            final_status: None,
            group: Some(group.clone()),
        }
    }
}

impl Job {
    /// A job that is starting now, or that was recorded as ended (`final_status`).
    pub fn new(
        info: JobInfo,
        seq: u64,
        progress: watch::Receiver<Progress>,
        live: Live,
        exec_tx: Option<mpsc::Sender<Box<ExecOrder>>>,
    ) -> Self {
        let ended = live.final_status.is_some();
        Job {
            id: info.id,
            owner: info.owner,
            argv: info.argv,
            limits: info.limits,
            name: info.name,
            labels: info.labels,
            seq,
            started_at_ms: info.started_at_ms,
            uid: info.uid,
            progress,
            live: Mutex::new(live),
            stop: Notify::new(),
            stop_requested: AtomicBool::new(false),
            attach: Mutex::new(Attach::default()),
            exec_tx,
            execs: AtomicUsize::new(0),
            cleaned: watch::Sender::new(ended),
        }
    }

    /// Whether `filter` matches the job as it is now (state, name, labels, owner).
    pub fn matches(&self, filter: &ListFilter) -> bool {
        let state = lock(&self.live)
            .final_status
            .as_ref()
            .map_or(JobState::Running, |s| s.state);
        (filter.states.is_empty() || filter.states.contains(&state))
            && filter.labels.iter().all(|l| self.labels.contains(l))
            && filter
                .name
                .as_ref()
                .is_none_or(|n| self.name.as_ref() == Some(n))
            && filter.owner.as_ref().is_none_or(|o| &self.owner == o)
    }

    pub fn ended(&self) -> bool {
        lock(&self.live).final_status.is_some()
    }

    /// The final status, or the running one with live usage from the job's group.
    pub fn status(&self, cgroups: &Cgroups) -> JobStatus {
        let live = lock(&self.live);
        if let Some(s) = &live.final_status {
            return s.clone();
        }
        let group = live.group.clone();
        drop(live);
        let mut s = self.running_status(None);
        if let Some(g) = group {
            let u = cgroups.usage(&g);
            s.cpu_usec = u.cpu_usec;
            s.peak_memory_bytes = u.peak_memory_bytes;
            s.oom_killed = u.oom_killed;
        }
        s
    }

    /// The status of the job as running, with `progress` (or the latest published) as
    /// its output figures.
    pub fn running_status(&self, progress: Option<&Progress>) -> JobStatus {
        let p = progress.copied().unwrap_or_else(|| *self.progress.borrow());
        JobStatus {
            id: self.id,
            owner: self.owner.clone(),
            argv: self.argv.clone(),
            limits: self.limits.clone(),
            state: JobState::Running,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            started_at_ms: self.started_at_ms,
            ended_at_ms: None,
            cpu_usec: None,
            peak_memory_bytes: None,
            output_bytes: p.len,
            output_truncated: p.truncated,
            uid: self.uid,
            start_failure: None,
            name: self.name.clone(),
            labels: self.labels.clone(),
        }
    }
}
