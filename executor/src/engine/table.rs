//! The job table: every job the executor knows, in start order; recovery of recorded jobs
//! at start-up; eviction of the oldest finished jobs beyond the retention cap.
//!
//! The table lock is a plain mutex held only for memory operations, never across an
//! await, and never taken while a job's `live` lock is held (eviction takes job locks
//! while holding the table lock, in that order only).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use jobworker_protocol::{JobId, JobState, JobStatus, Scope, WireError};
use tokio::sync::{mpsc, watch};

use super::exec::ExecOrder;
use super::job::{Job, JobInfo, Live};
use super::{lock, now_ms};
use crate::output::{self, Progress};
use crate::store::Store;

#[derive(Default)]
pub(super) struct Table {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Start order, for listing and for evicting the oldest finished jobs.
    order: BTreeMap<u64, JobId>,
    next_seq: u64,
    finished: usize,
}

impl Table {
    /// Adds a job after every other one in start order.
    pub fn insert(
        &mut self,
        info: JobInfo,
        progress: watch::Receiver<Progress>,
        live: Live,
        exec_tx: Option<mpsc::Sender<ExecOrder>>,
    ) -> Arc<Job> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ended = live.final_status.is_some();
        let job = Arc::new(Job::new(info, seq, progress, live, exec_tx));
        self.order.insert(seq, job.id);
        self.jobs.insert(job.id, job.clone());
        if ended {
            self.finished += 1;
        }
        job
    }

    /// The job, whoever owns it.
    pub fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        self.jobs.get(id).cloned()
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    /// The job if `scope` may see it; someone else's job is exactly like a missing one.
    pub fn visible(&self, scope: &Scope, id: &JobId) -> Option<Arc<Job>> {
        self.jobs
            .get(id)
            .filter(|j| scope.allows(&j.owner))
            .cloned()
    }

    /// Up to `n` jobs `scope` may see, in start order, from the one after `after`.
    pub fn page(
        &self,
        scope: &Scope,
        after: Option<&JobId>,
        n: usize,
    ) -> Result<Vec<Arc<Job>>, WireError> {
        let from = match after {
            Some(a) => match self.visible(scope, a) {
                Some(j) => j.seq + 1,
                None => return Err(WireError::invalid("page token: no such job")),
            },
            None => 0,
        };
        Ok(self
            .order
            .range(from..)
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|j| scope.allows(&j.owner))
            .take(n)
            .cloned()
            .collect())
    }

    /// Counts a job that just ended and drops the oldest finished jobs beyond `keep`;
    /// returns their ids so the caller can delete their files outside the lock.
    pub fn finish_one(&mut self, keep: usize) -> Vec<JobId> {
        self.finished += 1;
        self.evict(keep)
    }

    /// Drops the oldest finished jobs beyond `keep`.
    pub fn evict(&mut self, keep: usize) -> Vec<JobId> {
        if self.finished <= keep {
            return Vec::new();
        }
        // Oldest first; the walk stops at the last one needed, so it passes at most the
        // running jobs older than them, not the whole table.
        let excess = self.finished - keep;
        let mut evicted = Vec::new();
        for (&seq, id) in &self.order {
            if evicted.len() == excess {
                break;
            }
            if self.jobs.get(id).is_some_and(|j| j.ended()) {
                evicted.push((seq, *id));
            }
        }
        for (seq, id) in &evicted {
            self.order.remove(seq);
            self.jobs.remove(id);
            self.finished -= 1;
        }
        evicted.into_iter().map(|(_, id)| id).collect()
    }
}

/// Loads the jobs recorded in `store` into `table`, oldest first. A job recorded as
/// running was killed with the executor's previous run: it is recorded as lost.
pub(super) fn recover(
    store: &Store,
    table: &Mutex<Table>,
    max_output_bytes: u64,
) -> io::Result<()> {
    let (mut loaded, skipped) = store.load_all()?;
    for s in skipped {
        tracing::warn!("state directory: skipped {s}");
    }
    loaded.sort_by_key(|l| (l.status.started_at_ms, l.status.id));
    let mut table = lock(table);
    for l in loaded {
        let mut status = l.status;
        status.output_bytes = l.output.len;
        if status.state == JobState::Running {
            let stored = l.output.len + output::ENTRY_LEN * l.output.record_count();
            mark_lost(store, &mut status, stored >= max_output_bytes);
        }
        let mut progress = l.output;
        progress.truncated = status.output_truncated;
        let tx = output::finished_channel(progress);
        let live = Live {
            final_status: Some(status.clone()),
            group: None,
        };
        table.insert(JobInfo::of(&status), tx.subscribe(), live, None);
    }
    Ok(())
}

fn mark_lost(store: &Store, status: &mut JobStatus, at_cap: bool) {
    status.state = JobState::Lost;
    status.error =
        Some("the executor restarted while the job was running; the job was killed".into());
    status.ended_at_ms = Some(now_ms());
    status.output_truncated |= at_cap;
    if let Err(e) = store.save(status) {
        tracing::error!(job = %status.id, "recording the job as lost: {e}");
    }
    tracing::warn!(job = %status.id, "job was running when the executor stopped: recorded as lost");
}

/// Deletes the files of evicted jobs (blocking file-system work).
pub(super) fn remove_evicted(store: &Store, ids: Vec<JobId>) {
    for id in ids {
        match store.remove(&id) {
            Ok(()) => tracing::debug!(job = %id, "deleted a finished job beyond the retention cap"),
            Err(e) => tracing::error!(job = %id, "deleting an evicted job: {e}"),
        }
    }
}
