//! What the engine tells about itself: audit records of refused requests and lost
//! jobs, counters for metrics, a running job's live usage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobworker_protocol::observe::{ENDED_STATES, REFUSAL_REASONS};
use jobworker_protocol::{ExecutorMetrics, JobId, JobState, JobStatus, JobUsage, Scope, WireError};

use super::job::Job;
use super::{Engine, lock, now_ms};
use crate::audit::Audit;
use crate::audit::record::{Body, Id, JobEnded};
use crate::cgroup::JobGroup;
use crate::output::Progress;
use crate::spawn::Spawned;
use crate::sys;

/// Why a request was refused, as records and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request's shape (argv, environment, limits out of bounds).
    Invalid,
    /// The owner already has a job of that name.
    NameTaken,
    /// A limit above the executor's ceiling.
    Ceiling,
    /// The owner's quota.
    Quota,
    /// Running jobs or job ids at their cap.
    Capacity,
    /// The audit trail could not be written.
    Audit,
    ShuttingDown,
    Internal,
    /// No such job in the caller's scope.
    NotFound,
    /// The job is not in a state the request needs.
    NotRunning,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::NameTaken => "name_taken",
            Refusal::Ceiling => "ceiling",
            Refusal::Quota => "quota",
            Refusal::Capacity => "capacity",
            Refusal::Audit => "audit",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Internal => "internal",
            Refusal::NotFound => "not_found",
            Refusal::NotRunning => "not_running",
        }
    }

    /// A start refused by [`super::check_start`]: over a ceiling, or malformed.
    pub fn of_check(e: &WireError) -> Refusal {
        if e.message.contains("ceiling") {
            Refusal::Ceiling
        } else {
            Refusal::Invalid
        }
    }
}

/// Counters since the executor started.
pub(super) struct Counters {
    started: AtomicU64,
    ended: [AtomicU64; ENDED_STATES.len()],
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    output_bytes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: AtomicU64::new(0),
            ended: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            output_bytes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self, status: &JobStatus) {
        if let Some(i) = ENDED_STATES
            .iter()
            .position(|s| *s == status.state.as_str())
        {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
        self.output_bytes
            .fetch_add(status.output_bytes, Ordering::Relaxed);
    }

    fn refused(&self, reason: Refusal) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason.as_str()) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Engine {
    /// The audit trail.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> u64 {
        (self.cfg.max_running_jobs - self.running.available_permits()) as u64
    }

    /// Records a refused request of `identity` (counted for metrics when it is a start)
    /// and returns its error for the caller.
    pub fn refused(
        &self,
        request: &str,
        identity: &str,
        job: Option<JobId>,
        reason: Refusal,
        e: WireError,
    ) -> WireError {
        if request == "start" || request == "run" {
            self.counters.refused(reason);
        }
        tracing::debug!(
            request,
            identity,
            reason = reason.as_str(),
            "refused: {}",
            e.message
        );
        self.audit.note(Body::Refused {
            request: request.to_owned(),
            identity: Some(cut(identity, 256)),
            job: job.map(Id),
            reason: reason.as_str().to_owned(),
            message: cut(&e.message, 1024),
        });
        e
    }

    /// A job that ended: counted, and its end appended to the trail.
    pub(super) fn record_end(&self, status: &JobStatus) {
        self.counters.ended(status);
        self.audit
            .note(Body::JobEnded(Box::new(JobEnded::of(status.clone()))));
    }

    /// Records the jobs recovery found running (marked lost at or after `since`);
    /// returns the receivers that learn when each record is durable.
    pub(super) fn record_lost(&self, since: u64) -> Vec<crate::audit::Durable> {
        let mut recorded = Vec::new();
        let jobs = lock(&self.table)
            .page(&Scope::Any, None, usize::MAX, |_| true)
            .unwrap_or_default();
        for job in jobs {
            let lost = lock(&job.live)
                .final_status
                .as_ref()
                .is_some_and(|s| s.state == JobState::Lost && s.ended_at_ms >= Some(since));
            if lost {
                self.counters.ended(&job.status(&self.cgroups));
                recorded.push(self.audit.submit(Body::JobLost {
                    job: Id(job.id),
                    owner: job.owner.clone(),
                }));
            }
        }
        recorded
    }

    /// Undoes a launch whose start could not be recorded: the init never got its spec
    /// (its handover was dropped), so nothing of the job ran; it is killed and reaped,
    /// and its group, id and directory are given back.
    pub(super) async fn abandon(
        self: &Arc<Self>,
        id: JobId,
        uid: u32,
        spawned: Spawned,
        group: JobGroup,
    ) {
        let engine = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;
            let pidfd = spawned.pidfd.as_fd();
            if let Err(e) = sys::pidfd_send_signal(pidfd, libc::SIGKILL)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::error!(job = %id, "killing the init of a job that may not start: {e}");
            }
            if let Err(e) = sys::wait_pidfd(pidfd) {
                tracing::error!(job = %id, "reaping the init of a job that may not start: {e}");
            }
            match engine.cgroups.remove(&group) {
                Ok(()) => lock(&engine.ids).give_back(uid),
                Err(e) => tracing::error!(job = %id, "removing the cgroup of a job that may not start: {e}"),
            }
            if let Err(e) = engine.store.remove(&id) {
                tracing::error!(job = %id, "removing the directory of a job that may not start: {e}");
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(job = %id, "undoing a launch: {e}");
        }
        tracing::warn!(job = %id, "job not started: its start could not be recorded in the audit trail");
    }

    /// The figures of `Metrics`.
    pub fn metrics(&self) -> ExecutorMetrics {
        let jobs = lock(&self.table)
            .page(&Scope::Any, None, usize::MAX, |_| true)
            .unwrap_or_default();
        let on_disk = jobs.iter().map(|j| j.progress.borrow().len).sum();
        let a = self.audit.counters();
        let c = &self.counters;
        ExecutorMetrics {
            running_jobs: self.running_jobs(),
            known_jobs: jobs.len() as u64,
            cgroup_backend: self.cgroups.name().to_owned(),
            output_bytes_on_disk: on_disk,
            output_bytes_total: c.output_bytes.load(Ordering::Relaxed),
            jobs_started: c.started.load(Ordering::Relaxed),
            jobs_ended: c.ended.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
            starts_refused: c
                .refused
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            audit_seq: a.seq.load(Ordering::Relaxed),
            audit_failures: a.failures.load(Ordering::Relaxed),
            audit_api_dropped: a.api_dropped.load(Ordering::Relaxed),
            audit_commits: a.commits.load(Ordering::Relaxed),
            audit_records: a.records.load(Ordering::Relaxed),
        }
    }

    /// A sampler of job `id`'s live usage (which `scope` must see).
    pub fn usage_sampler(&self, scope: &Scope, id: &JobId) -> Result<UsageSampler, WireError> {
        let job = self.find(scope, id)?;
        Ok(UsageSampler { job, last: None })
    }

    /// A sample of what the job uses now; `None` once it has ended.
    fn sample(&self, job: &Job) -> Option<(Instant, crate::cgroup::LiveUsage)> {
        let group = lock(&job.live).group.clone()?;
        Some((Instant::now(), self.cgroups.live(&group)))
    }
}

/// Samples one job's usage, and its CPU rate between samples.
pub struct UsageSampler {
    job: Arc<Job>,
    last: Option<(Instant, crate::cgroup::LiveUsage)>,
}

impl UsageSampler {
    /// The next sample, `interval` after the one before (the first one `interval` after
    /// a first reading, so that it has a CPU rate); `None` once the job has ended, which
    /// ends the wait at once.
    pub async fn next(&mut self, engine: &Engine, interval: Duration) -> Option<JobUsage> {
        if self.last.is_none() {
            self.last = Some(engine.sample(&self.job)?);
        }
        let mut progress = self.job.progress.clone();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = progress.wait_for(|p: &Progress| p.finished) => return None,
        }
        let (at, now) = engine.sample(&self.job)?;
        let (then, before) = self.last.replace((at, now))?;
        let window = at.duration_since(then);
        let cpu_millis = match (now.cpu_usec, before.cpu_usec) {
            (Some(a), Some(b)) if !window.is_zero() => {
                Some(a.saturating_sub(b) * 1000 / (window.as_micros() as u64).max(1))
            }
            _ => None,
        };
        Some(JobUsage {
            memory_bytes: now.memory_bytes,
            pids: now.pids,
            cpu_usec: now.cpu_usec,
            cpu_millis,
            window_ms: window.as_millis() as u64,
            at_ms: now_ms(),
        })
    }

    /// The job's status (final once it has ended).
    pub fn status(&self, engine: &Engine) -> JobStatus {
        self.job.status(&engine.cgroups)
    }

    pub fn id(&self) -> JobId {
        self.job.id
    }
}

/// At most `max` bytes of `s`, cut at a character boundary: a refused request's identity
/// may be anything the peer sent.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
