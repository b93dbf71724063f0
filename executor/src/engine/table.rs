//! The job table: every job the executor knows, in start order, and their names;
//! finding a job by name or id prefix; recovery of recorded jobs at start-up; eviction of
//! the oldest finished jobs beyond the retention cap, and removal on request.
//!
//! The table lock is a plain mutex held only for memory operations, never across an
//! await, and never taken while a job's `live` lock is held (eviction takes job locks
//! while holding the table lock, in that order only).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use jobworker_protocol::{ErrorKind, JobId, JobState, JobStatus, Scope, WireError, validate};
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
    /// `(owner, name)` of every named job kept (or starting).
    names: HashMap<(String, String), JobId>,
}

/// Most candidates an ambiguous reference lists.
const MAX_CANDIDATES: usize = 10;

impl Table {
    /// Adds a job after every other one in start order.
    pub fn insert(
        &mut self,
        info: JobInfo,
        progress: watch::Receiver<Progress>,
        live: Live,
        exec_tx: Option<mpsc::Sender<Box<ExecOrder>>>,
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

    /// Takes `name` among `owner`'s jobs for job `id`; refused if another job has it.
    pub fn claim_name(&mut self, owner: &str, name: &str, id: JobId) -> Result<(), WireError> {
        let key = (owner.to_string(), name.to_string());
        match self.names.get(&key) {
            Some(other) if *other != id => Err(WireError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{owner} already has a job named {name} ({other}); remove it first (jobctl rm)"
                ),
            )),
            _ => {
                self.names.insert(key, id);
                Ok(())
            }
        }
    }

    /// Gives `name` back, if job `id` holds it.
    pub fn release_name(&mut self, owner: &str, name: &str, id: JobId) {
        let key = (owner.to_string(), name.to_string());
        if self.names.get(&key) == Some(&id) {
            self.names.remove(&key);
        }
    }

    /// The job `reference` names among the jobs `scope` may see: its name, else a unique
    /// prefix of its id. Ambiguity is an error listing the candidates.
    pub fn resolve(&self, scope: &Scope, reference: &str) -> Result<JobId, WireError> {
        validate::reference(reference)?;
        let named: Vec<(&String, JobId)> = self
            .names
            .iter()
            .filter(|((owner, name), _)| name == reference && scope.allows(owner))
            .map(|((owner, _), id)| (owner, *id))
            .collect();
        match named.as_slice() {
            [(_, id)] => return Ok(*id),
            [] => {}
            many => {
                let list: Vec<String> = many
                    .iter()
                    .take(MAX_CANDIDATES)
                    .map(|(owner, id)| format!("{owner}'s {id}"))
                    .collect();
                return Err(WireError::invalid(format!(
                    "the name {reference} is ambiguous: {}; use an id",
                    list.join(", ")
                )));
            }
        }
        let hex = reference.len() >= validate::MIN_ID_PREFIX
            && reference.chars().all(|c| c.is_ascii_hexdigit());
        if hex {
            let prefix = reference.to_ascii_lowercase();
            let found: Vec<JobId> = self
                .order
                .values()
                .filter(|id| id.to_string().starts_with(&prefix))
                .filter(|id| self.visible(scope, id).is_some())
                .take(MAX_CANDIDATES + 1)
                .copied()
                .collect();
            match found.as_slice() {
                [id] => return Ok(*id),
                [] => {}
                many => {
                    let list: Vec<String> = many
                        .iter()
                        .take(MAX_CANDIDATES)
                        .map(|id| id.to_string())
                        .collect();
                    let more = if many.len() > MAX_CANDIDATES {
                        ", ..."
                    } else {
                        ""
                    };
                    return Err(WireError::invalid(format!(
                        "the id prefix {reference} is ambiguous: {}{more}",
                        list.join(", ")
                    )));
                }
            }
        }
        Err(WireError::not_found(format!(
            "no job named or starting with {reference}"
        )))
    }

    /// Takes an ended job (whose supervisor is done) out of the table, with its name.
    pub fn remove(&mut self, id: &JobId) -> Option<Arc<Job>> {
        let job = self.jobs.remove(id)?;
        self.order.remove(&job.seq);
        self.finished = self.finished.saturating_sub(1);
        if let Some(name) = &job.name {
            self.release_name(&job.owner, name, job.id);
        }
        Some(job)
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

    /// Up to `n` jobs `scope` may see and `keep` keeps, in start order, from the one
    /// after `after`.
    pub fn page(
        &self,
        scope: &Scope,
        after: Option<&JobId>,
        n: usize,
        keep: impl Fn(&Job) -> bool,
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
            .filter(|j| scope.allows(&j.owner) && keep(j))
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
            if let Some(job) = self.jobs.remove(id)
                && let Some(name) = &job.name
            {
                self.release_name(&job.owner, name, job.id);
            }
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
        if let Some(name) = &status.name
            && let Err(e) = table.claim_name(&status.owner, name, status.id)
        {
            tracing::warn!(job = %status.id, "recorded job: {e}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_protocol::Limits;

    fn add(t: &mut Table, hex: &str, owner: &str, name: Option<&str>) -> JobId {
        let id: JobId = hex.parse().unwrap();
        if let Some(n) = name {
            t.claim_name(owner, n, id).unwrap();
        }
        let info = JobInfo {
            id,
            owner: owner.into(),
            argv: vec!["true".into()],
            limits: Limits::default(),
            name: name.map(String::from),
            labels: vec![],
            started_at_ms: 1,
            uid: None,
        };
        let rx = output::finished_channel(Progress::default()).subscribe();
        let live = Live {
            final_status: None,
            group: None,
        };
        t.insert(info, rx, live, None);
        id
    }

    #[test]
    fn names_then_unique_prefixes_name_jobs_within_the_scope() {
        let mut t = Table::default();
        let a = add(
            &mut t,
            "abcdef00000000000000000000000001",
            "alice",
            Some("build"),
        );
        let b = add(&mut t, "abcdef00000000000000000000000002", "alice", None);
        let c = add(
            &mut t,
            "abcdee00000000000000000000000003",
            "bob",
            Some("build"),
        );
        let alice = Scope::Owner("alice".into());
        let bob = Scope::Owner("bob".into());
        assert_eq!(t.resolve(&alice, "build"), Ok(a));
        assert_eq!(t.resolve(&bob, "build"), Ok(c));
        let e = t.resolve(&Scope::Any, "build").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("ambiguous") && e.message.contains(&a.to_string()));
        // A prefix: unique, ambiguous (listing both), someone else's, too short.
        assert_eq!(t.resolve(&alice, "abcdef00000000000000000000000002"), Ok(b));
        let e = t.resolve(&alice, "abcdef").unwrap_err();
        assert!(
            e.message.contains(&a.to_string()) && e.message.contains(&b.to_string()),
            "{e:?}"
        );
        assert_eq!(t.resolve(&bob, "abcdee"), Ok(c));
        assert_eq!(
            t.resolve(&alice, "abcdee").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            t.resolve(&alice, "abcde").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            t.resolve(&alice, "../etc").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        // A name is taken once per owner, and free again with its job.
        let e = t.claim_name("alice", "build", b).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert!(t.remove(&a).is_some());
        assert!(t.claim_name("alice", "build", b).is_ok());
    }
}
