//! The job engine: the public operations on jobs, and the rooms they use.
//!
//! - this file: the [`Engine`] and its operations (start, run, stop, wait, status, list,
//!   output), each starting with its checks;
//! - [`limits`]: a start request's limits against the ceilings (pure);
//! - [`launch`]: creating a job's directory, output file and cgroup, cloning its init;
//! - [`table`]: the job table in start order, recovery at start-up, eviction;
//! - [`job`]: one job's shared state and status;
//! - [`quota`]: per-owner quotas, a share taken at each start and given back at its end;
//! - [`uids`]: the pool of job ids, one per live job;
//! - [`supervisor`]: one task per running job, from its start to its record;
//! - [`job_io`]: what the supervisor reads and writes while the job runs: its output,
//!   its terminal, the init's reports and exec requests;
//! - [`exec`]: another process in a running job, started by the job's init;
//! - [`final_status`]: the rule that turns how a job ended into its final status (pure);
//! - [`observe`]: what the engine tells about itself: its audit records of refusals,
//!   counters for metrics, a running job's live usage, job events.
//!
//! Locks: the table lock and each job's `live` lock are plain mutexes held only for
//! memory operations, never across an await, and never the table lock while holding a
//! job lock.

mod exec;
mod final_status;
mod job;
mod job_io;
mod launch;
mod limits;
mod observe;
mod quota;
mod supervisor;
mod table;
mod uids;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use jobworker_protocol::{
    ErrorKind, JobId, JobStatus, LIST_PAGE_BYTES, ListFilter, MAX_CHUNK_LEN, OutputFrom,
    QuotaAmounts, QuotaReport, Scope, Streams, WireError, codec,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use exec::{ExecHandle, ExecOutput, MAX_EXECS_PER_JOB};
pub use limits::{CheckedStart, check_start, human_duration, resolve_limits};
pub use observe::{Refusal, UsageSampler};

use crate::audit::Audit;
use crate::audit::record::{Body, Id, JobStarted};
use crate::cgroup::Cgroups;
use crate::config::{Ceilings, Config, Defaults};
use crate::ipc::report::Failure;
use crate::output::{OutputReader, Progress, Start};
use crate::spawn::Spawner;
use crate::store::Store;
use job::{Job, JobInfo, Live};
use quota::Quotas;
use supervisor::Launched;
use table::Table;
use uids::IdPool;

pub struct Engine {
    cfg: Config,
    store: Store,
    spawner: Spawner,
    cgroups: Cgroups,
    table: Mutex<Table>,
    running: Arc<Semaphore>,
    quotas: Arc<Mutex<Quotas>>,
    ids: Mutex<IdPool>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Number of the next exec, in any job.
    next_exec: AtomicU32,
    /// The audit trail: starts wait for their record, everything else is appended.
    audit: Arc<Audit>,
    /// Counters for metrics.
    counters: observe::Counters,
}

/// Execs queued for one job's supervisor at most.
const EXEC_QUEUE: usize = 4;

/// What the client that runs a job attaches to.
#[derive(Default)]
pub struct Attached {
    /// The write end of the job's stdin pipe, when it reads from the client.
    pub stdin: Option<OwnedFd>,
    /// The job's terminal (its master), when it has one.
    pub terminal: Option<Arc<OwnedFd>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a
    // way that matters more than stopping the daemon would; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a job counts against its owner's quotas.
fn amounts(req: &CheckedStart) -> QuotaAmounts {
    QuotaAmounts {
        running_jobs: 1,
        memory_bytes: req.resolved.memory_bytes,
        cpu_millis: u64::from(req.resolved.cpu_millis),
        pids: u64::from(req.resolved.pids),
    }
}

fn not_found(id: &JobId) -> WireError {
    WireError::not_found(format!("no job {id}"))
}

impl Engine {
    /// Opens the state directory, loads the jobs recorded there (marking those that were
    /// running as lost), kills and removes job groups left by a previous run, and puts
    /// the totals of all jobs on their parent group.
    pub async fn new(
        cfg: Config,
        cgroups: Cgroups,
        totals: crate::totals::Totals,
        audit: Arc<Audit>,
        shutdown: CancellationToken,
    ) -> io::Result<Arc<Self>> {
        let store = Store::open(&cfg.state_dir)?;
        let spawner = Spawner::new()?;
        let mut start = [0u8; 8];
        getrandom::fill(&mut start).map_err(|e| io::Error::other(e.to_string()))?;
        let engine = Arc::new(Engine {
            running: Arc::new(Semaphore::new(cfg.max_running_jobs)),
            quotas: Arc::new(Mutex::new(Quotas::new(cfg.quotas.clone()))),
            ids: Mutex::new(IdPool::new(cfg.job_ids, u64::from_le_bytes(start))),
            cfg,
            store,
            spawner,
            cgroups,
            table: Mutex::new(Table::default()),
            tasks: TaskTracker::new(),
            shutdown,
            next_exec: AtomicU32::new(0),
            audit,
            counters: observe::Counters::default(),
        });
        let lost = engine.recover()?;
        // Ready only once the trail holds the jobs found lost: a reader of the trail
        // after the restart finds them.
        for recorded in lost {
            if !matches!(recorded.await, Ok(Ok(_))) {
                tracing::error!("audit trail: a lost job's record could not be written");
            }
        }
        engine
            .cgroups
            .set_totals(&totals)
            .map_err(|e| io::Error::other(format!("the totals of all jobs: {e}")))?;
        tracing::info!(
            memory_bytes = totals.memory_bytes,
            pids = totals.pids,
            cpu_millis = totals.cpu_millis,
            "totals of all jobs"
        );
        Ok(engine)
    }

    fn recover(&self) -> io::Result<Vec<crate::audit::Durable>> {
        match self.cgroups.reap_stale() {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(job = %id, "killed and removed the group of a job left by a previous run");
                }
            }
            Err(e) => tracing::error!("removing job groups of a previous run: {e}"),
        }
        let recovering = now_ms();
        table::recover(&self.store, &self.table, self.cfg.max_output_bytes)?;
        let lost = self.record_lost(recovering);
        let evicted = lock(&self.table).evict(self.cfg.max_finished_jobs);
        table::remove_evicted(&self.store, evicted);
        Ok(lost)
    }

    /// The backend in use, for logs.
    pub fn cgroup_backend(&self) -> &'static str {
        self.cgroups.name()
    }

    /// The job if `scope` may see it (the server validated the scope).
    fn find(&self, scope: &Scope, id: &JobId) -> Result<Arc<Job>, WireError> {
        lock(&self.table)
            .visible(scope, id)
            .ok_or_else(|| not_found(id))
    }

    /// The limits every start is checked against.
    pub fn ceilings(&self) -> &Ceilings {
        &self.cfg.ceilings
    }

    /// What a start that asks for nothing gets.
    pub fn defaults(&self) -> &Defaults {
        &self.cfg.defaults
    }

    /// Starts a job and returns once its command is running (or failed to start). A
    /// job that reads its stdin needs a client attached: see [`Engine::run`].
    pub async fn start(self: &Arc<Self>, req: CheckedStart) -> Result<JobId, WireError> {
        if req.spec.stdin {
            return Err(WireError::invalid(
                "a job that reads its stdin needs a client attached: run it instead of starting it",
            ));
        }
        let (id, started) = self.launch_job(req).await?;
        started.map(|_| id).map_err(|why| {
            WireError::new(
                ErrorKind::FailedToStart,
                format!("job {id}: {}", why.message),
            )
        })
    }

    /// Starts a job for a client that stays attached: returns once its command is
    /// running, with the job's stdin and terminal, or once it failed to start (nothing
    /// to attach to; its final status says why).
    pub async fn run(self: &Arc<Self>, req: CheckedStart) -> Result<(JobId, Attached), WireError> {
        let (id, started) = self.launch_job(req).await?;
        Ok((id, started.unwrap_or_default()))
    }

    /// Launches a job and supervises it; returns its id once the init said whether the
    /// command started.
    async fn launch_job(
        self: &Arc<Self>,
        req: CheckedStart,
    ) -> Result<(JobId, Result<Attached, Failure>), WireError> {
        let refuse =
            |reason: Refusal, e: WireError| self.refused("start", &req.owner, None, reason, e);
        if self.shutdown.is_cancelled() {
            return Err(refuse(
                Refusal::ShuttingDown,
                WireError::new(ErrorKind::Unavailable, "the executor is shutting down"),
            ));
        }
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            refuse(
                Refusal::Capacity,
                WireError::exhausted(format!(
                    "{} jobs are running, the most this executor allows",
                    self.cfg.max_running_jobs
                )),
            )
        })?;
        let share = Quotas::take(&self.quotas, &req.owner, amounts(&req))
            .map_err(|e| refuse(Refusal::Quota, e))?;
        let uid = lock(&self.ids).take().ok_or_else(|| {
            refuse(
                Refusal::Capacity,
                WireError::exhausted("every job id of this executor's range is in use"),
            )
        })?;
        let id = self
            .new_id()
            .inspect_err(|_| lock(&self.ids).give_back(uid))
            .map_err(|e| refuse(Refusal::Internal, e))?;
        // The name is taken before anything is created, so two starts cannot both have
        // it; a start that fails gives it back.
        if let Some(name) = &req.spec.name
            && let Err(e) = lock(&self.table).claim_name(&req.owner, name, id)
        {
            lock(&self.ids).give_back(uid);
            return Err(refuse(Refusal::NameTaken, e));
        }
        let give_back_name = || {
            if let Some(name) = &req.spec.name {
                lock(&self.table).release_name(&req.owner, name, id);
            }
        };
        let (mut spawned, group, writer, handover) = self
            .launch(&id, &req, uid)
            .inspect_err(|_| {
                lock(&self.ids).give_back(uid);
                give_back_name();
                let _ = self.store.remove(&id);
            })
            .map_err(|e| {
                let reason = match e.kind {
                    ErrorKind::ResourceExhausted => Refusal::Capacity,
                    _ => Refusal::Internal,
                };
                refuse(reason, e)
            })?;
        let started_at_ms = now_ms();
        // No record, no job: the init waits for its spec until the start is durable in
        // the audit trail. If it cannot be written, the init never gets its spec and
        // nothing of the job runs.
        let record = Body::JobStarted(Box::new(JobStarted {
            job: Id(id),
            owner: req.owner.clone(),
            name: req.spec.name.clone(),
            labels: (req.spec.labels.iter())
                .map(|l| format!("{}={}", l.key, l.value))
                .collect(),
            argv: req.spec.argv.clone(),
            env: req.spec.env.iter().map(|v| v.name.clone()).collect(),
            workdir: req.spec.workdir.clone(),
            tty: req.spec.tty.is_some(),
            stdin: req.spec.stdin,
            limits: req.effective.clone(),
            deadline: crate::audit::record::rfc3339_ms(
                started_at_ms
                    .saturating_add(u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX)),
            ),
            uid,
            pid: spawned.pid,
        }));
        if let Err(e) = self.audit.append(record).await {
            drop(handover);
            give_back_name();
            self.abandon(id, uid, spawned, group).await;
            return Err(refuse(Refusal::Audit, e.into()));
        }
        tokio::task::block_in_place(|| handover.give());
        self.counters.started();
        let group = Arc::new(group);
        let info = JobInfo {
            id,
            owner: req.owner,
            argv: req.spec.argv,
            limits: req.effective,
            name: req.spec.name,
            labels: req.spec.labels,
            started_at_ms,
            uid: Some(uid),
        };
        let live = Live::running(&group);
        // Orders are boxed: the channel allocates room for a block of them up front for
        // every running job, and a pointer each is what that costs.
        let (exec_tx, exec_rx) = mpsc::channel(EXEC_QUEUE);
        let job = lock(&self.table).insert(info, writer.sender().subscribe(), live, Some(exec_tx));
        // The record ends with an fsync: it is written on a blocking thread while the init
        // sets the job up. The start is answered once it is on disk, so a job anyone was
        // told about is never missing after a crash; the supervisor also waits for it
        // before writing the final one.
        let recorded = self.record_start(job.running_status(None));
        tracing::info!(job = %id, owner = %job.owner, argv0 = %job.argv[0], pid = spawned.pid, uid, "job started");

        let stdin = spawned.stdin.take();
        let (started_tx, started_rx) = oneshot::channel();
        let launched = Launched {
            spawned,
            group,
            writer,
            started_tx,
            permit,
            share,
            deadline: tokio::time::Instant::now() + req.timeout,
            recorded: recorded.clone(),
            exec_rx,
        };
        self.tasks
            .spawn(self.clone().supervise(job.clone(), launched));
        let started = started_rx.await;
        recorded.await;
        match started {
            Ok(Ok(())) => {
                let terminal = lock(&job.attach).terminal.clone();
                Ok((id, Ok(Attached { stdin, terminal })))
            }
            Ok(Err(why)) => Ok((id, Err(why))),
            Err(_) => Err(WireError::internal(
                "the job's supervisor ended unexpectedly",
            )),
        }
    }

    fn new_id(&self) -> Result<JobId, WireError> {
        loop {
            let mut b = [0u8; 16];
            getrandom::fill(&mut b).map_err(|e| {
                tracing::error!("getrandom: {e}");
                WireError::internal("no randomness for a job id")
            })?;
            let id = JobId::from_bytes(b);
            if !lock(&self.table).contains(&id) {
                return Ok(id);
            }
        }
    }

    /// Stops a job for `caller` and returns its final status; stopping an ended job just
    /// returns it. The request is recorded first (a stop goes ahead even when the trail
    /// cannot be written: stopping is never held back).
    pub async fn stop(
        &self,
        scope: &Scope,
        id: &JobId,
        caller: &str,
    ) -> Result<JobStatus, WireError> {
        let job = self
            .find(scope, id)
            .map_err(|e| self.refused("stop", caller, Some(*id), Refusal::NotFound, e))?;
        if !job.ended() {
            let record = Body::StopRequested {
                job: Id(job.id),
                owner: job.owner.clone(),
                by: caller.to_owned(),
            };
            if self.audit.append(record).await.is_err() {
                tracing::error!(job = %id, caller, "stopping the job without its stop in the audit trail");
            }
            job.stop_requested.store(true, Ordering::SeqCst);
            job.stop.notify_one();
            let mut rx = job.progress.clone();
            // The supervisor publishes `finished` only after setting the final status.
            let _ = rx.wait_for(|p: &Progress| p.finished).await;
        }
        Ok(job.status(&self.cgroups))
    }

    /// Waits for a job to end and returns its final status.
    pub async fn wait(&self, scope: &Scope, id: &JobId) -> Result<JobStatus, WireError> {
        let job = self.find(scope, id)?;
        let mut rx = job.progress.clone();
        // The supervisor publishes `finished` only after setting the final status.
        let _ = rx.wait_for(|p: &Progress| p.finished).await;
        Ok(job.status(&self.cgroups))
    }

    pub fn status(&self, scope: &Scope, id: &JobId) -> Result<JobStatus, WireError> {
        Ok(self.find(scope, id)?.status(&self.cgroups))
    }

    /// One page of the jobs `filter` matches, in start order after `after`, within
    /// `LIST_PAGE_BYTES` (the server validated the scope, the filter and the page size).
    pub fn list(
        &self,
        scope: &Scope,
        after: Option<&JobId>,
        limit: u32,
        filter: &ListFilter,
    ) -> Result<(Vec<JobStatus>, Option<JobId>), WireError> {
        let candidates =
            lock(&self.table).page(scope, after, limit as usize + 1, |j| j.matches(filter))?;
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for job in candidates {
            if page.len() == limit as usize {
                next = page.last().map(|s: &JobStatus| s.id);
                break;
            }
            let s = job.status(&self.cgroups);
            let size = codec::encode(&s).map_or(usize::MAX, |b| b.len());
            if !page.is_empty() && bytes + size > LIST_PAGE_BYTES {
                next = page.last().map(|s: &JobStatus| s.id);
                break;
            }
            bytes += size;
            page.push(s);
        }
        Ok((page, next))
    }

    /// A reader of the job's output of `streams` from `from`.
    pub fn open_output(
        &self,
        scope: &Scope,
        id: &JobId,
        from: OutputFrom,
        streams: Streams,
        follow: bool,
    ) -> Result<(OutputReader, JobId), WireError> {
        let job = self.find(scope, id)?;
        let start = match from {
            OutputFrom::Offset(o) => Start::Offset(o),
            OutputFrom::TailLines(n) => Start::TailLines(n),
        };
        let reader = OutputReader::open(
            &self.store.job_dir(id),
            job.progress.clone(),
            start,
            streams,
            follow,
            MAX_CHUNK_LEN,
        )
        .map_err(|e| {
            tracing::error!(job = %id, "opening the output: {e}");
            WireError::internal("the job's output cannot be read")
        })?;
        Ok((reader, job.id))
    }

    /// The job `reference` (a name or an id prefix) names in `scope`.
    pub fn resolve(&self, scope: &Scope, reference: &str) -> Result<JobId, WireError> {
        lock(&self.table).resolve(scope, reference)
    }

    /// Deletes an ended job's record and output and forgets it; a running one only with
    /// `force`, which stops it first. Returns its last status.
    pub async fn remove(
        self: &Arc<Self>,
        scope: &Scope,
        id: &JobId,
        force: bool,
        caller: &str,
    ) -> Result<JobStatus, WireError> {
        let job = self.find(scope, id)?;
        if !job.ended() {
            if !force {
                return Err(WireError::new(
                    ErrorKind::FailedPrecondition,
                    format!("job {id} is running: stop it first, or remove it with force"),
                ));
            }
            self.stop(scope, id, caller).await?;
        }
        // Its supervisor's last writes (the final record) come before the removal.
        let mut cleaned = job.cleaned.subscribe();
        let _ = cleaned.wait_for(|done| *done).await;
        let status = job.status(&self.cgroups);
        if lock(&self.table).remove(id).is_none() {
            // Evicted meanwhile: it is gone either way.
            return Err(not_found(id));
        }
        let engine = self.clone();
        let id = *id;
        let removed = tokio::task::spawn_blocking(move || engine.store.remove(&id)).await;
        match removed {
            Ok(Ok(())) => {
                tracing::info!(job = %id, "job removed");
                Ok(status)
            }
            Ok(Err(e)) => {
                tracing::error!(job = %id, "removing the job's files: {e}");
                Err(WireError::internal("removing the job's files failed"))
            }
            Err(e) => {
                tracing::error!(job = %id, "removing the job's files: {e}");
                Err(WireError::internal("removing the job's files failed"))
            }
        }
    }

    /// Quota use and quotas (the server validated the scope).
    pub fn quotas(&self, scope: &Scope) -> Vec<QuotaReport> {
        lock(&self.quotas).report(scope)
    }

    /// Status of a job by id, ignoring scope (the caller already had access).
    pub fn status_of(&self, id: &JobId) -> Option<JobStatus> {
        let job = lock(&self.table).get(id)?;
        Some(job.status(&self.cgroups))
    }

    /// Stops every running job (the shutdown token is already cancelled) and waits for
    /// their supervisors to record them.
    pub async fn wait_jobs(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
