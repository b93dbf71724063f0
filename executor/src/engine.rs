//! The job engine: the job table and the life of every job.
//!
//! Each running job has one supervisor task, owned by the engine's task tracker. The
//! supervisor drains the job's output pipe into the output file, watches the init's
//! report pipe and its pidfd, carries out stop requests (SIGTERM to the whole
//! namespace through the init, SIGKILL to the init and the cgroup after the grace
//! period) and, when everything has ended, records the final status, removes the cgroup
//! and tells followers the output is complete.
//!
//! Locks: the table lock and each job's `live` lock are plain mutexes held only for
//! memory operations, never across an await, and never the table lock while holding a
//! job lock.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use jobworker_protocol::{
    ErrorKind, IoLimits, JobId, JobSpec, JobState, JobStatus, LIST_PAGE_BYTES, Limits,
    MAX_CHUNK_LEN, Scope, WireError, codec, validate,
};
use std::os::fd::AsFd;
use tokio::net::unix::pipe;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cgroup::{Cgroups, JobGroup, ResolvedIo, ResolvedLimits};
use crate::config::{Ceilings, Config};
use crate::init::InitSpec;
use crate::output::{self, OutputReader, OutputWriter, Progress};
use crate::report::{self, MAX_REPORT_BYTES, Report};
use crate::spawn::{CgroupJoin, Spawned, Spawner};
use crate::store::Store;
use crate::sys::{self, Exit};

/// Fixed part of every job's environment; user variables may override all but the id.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bytes moved from the output pipe at a time.
const PIPE_READ: usize = 256 * 1024;

/// What the supervisor of a job that was just cloned takes over.
struct Launched {
    spawned: Spawned,
    group: Arc<JobGroup>,
    writer: OutputWriter,
    started_tx: oneshot::Sender<Result<(), String>>,
    permit: OwnedSemaphorePermit,
    /// The job's first record, being written.
    recorded: JoinHandle<()>,
}

pub struct Engine {
    cfg: Config,
    store: Store,
    spawner: Spawner,
    cgroups: Cgroups,
    table: Mutex<Table>,
    running: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Start order, for listing and for evicting the oldest finished jobs.
    order: BTreeMap<u64, JobId>,
    next_seq: u64,
    finished: usize,
}

struct Job {
    id: JobId,
    owner: String,
    argv: Vec<String>,
    limits: Limits,
    seq: u64,
    started_at_ms: u64,
    progress: watch::Receiver<Progress>,
    live: Mutex<Live>,
    stop: Notify,
    stop_requested: AtomicBool,
}

struct Live {
    /// Set once the job has ended (or was loaded as ended).
    final_status: Option<JobStatus>,
    /// The job's cgroup while it runs, for live usage figures.
    group: Option<Arc<JobGroup>>,
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

fn not_found(id: &JobId) -> WireError {
    WireError::not_found(format!("no job {id}"))
}

impl Engine {
    /// Opens the state directory, loads the jobs recorded there (marking those that were
    /// running as lost), and kills and removes job groups left by a previous run.
    pub fn new(
        cfg: Config,
        cgroups: Cgroups,
        shutdown: CancellationToken,
    ) -> io::Result<Arc<Self>> {
        let store = Store::open(&cfg.state_dir)?;
        let spawner = Spawner::new()?;
        let engine = Arc::new(Engine {
            running: Arc::new(Semaphore::new(cfg.max_running_jobs)),
            cfg,
            store,
            spawner,
            cgroups,
            table: Mutex::new(Table::default()),
            tasks: TaskTracker::new(),
            shutdown,
        });
        engine.recover()?;
        Ok(engine)
    }

    fn recover(&self) -> io::Result<()> {
        match self.cgroups.reap_stale() {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(job = %id, "killed and removed the group of a job left by a previous run");
                }
            }
            Err(e) => tracing::error!("removing job groups of a previous run: {e}"),
        }
        let (mut loaded, skipped) = self.store.load_all()?;
        for s in skipped {
            tracing::warn!("state directory: skipped {s}");
        }
        loaded.sort_by_key(|l| (l.status.started_at_ms, l.status.id));
        let mut table = lock(&self.table);
        for l in loaded {
            let mut status = l.status;
            status.output_bytes = l.output_len;
            if status.state == JobState::Running {
                status.state = JobState::Lost;
                status.error = Some(
                    "the executor restarted while the job was running; the job was killed".into(),
                );
                status.ended_at_ms = Some(now_ms());
                status.output_truncated |= l.output_len >= self.cfg.max_output_bytes;
                if let Err(e) = self.store.save(&status) {
                    tracing::error!(job = %status.id, "recording the job as lost: {e}");
                }
                tracing::warn!(job = %status.id, "job was running when the executor stopped: recorded as lost");
            }
            let seq = table.next_seq;
            table.next_seq += 1;
            let tx = output::finished_channel(status.output_bytes, status.output_truncated);
            let job = Arc::new(Job {
                id: status.id,
                owner: status.owner.clone(),
                argv: status.argv.clone(),
                limits: status.limits.clone(),
                seq,
                started_at_ms: status.started_at_ms,
                progress: tx.subscribe(),
                live: Mutex::new(Live {
                    final_status: Some(status),
                    group: None,
                }),
                stop: Notify::new(),
                stop_requested: AtomicBool::new(false),
            });
            table.order.insert(seq, job.id);
            table.jobs.insert(job.id, job);
            table.finished += 1;
        }
        let evicted = self.evict_locked(&mut table);
        drop(table);
        self.remove_evicted(evicted);
        Ok(())
    }

    /// The backend in use, for logs.
    pub fn cgroup_backend(&self) -> &'static str {
        self.cgroups.name()
    }

    fn find(&self, scope: &Scope, id: &JobId) -> Result<Arc<Job>, WireError> {
        validate::scope(scope)?;
        let table = lock(&self.table);
        match table.jobs.get(id) {
            Some(job) if scope.allows(&job.owner) => Ok(job.clone()),
            // Someone else's job answers exactly like a missing one.
            _ => Err(not_found(id)),
        }
    }

    /// Starts a job and returns once its command is running (or failed to start).
    pub async fn start(self: &Arc<Self>, owner: String, spec: JobSpec) -> Result<JobId, WireError> {
        let (resolved, effective) = check_start(&owner, &spec, &self.cfg.ceilings)?;
        if self.shutdown.is_cancelled() {
            return Err(WireError::new(
                ErrorKind::Unavailable,
                "the executor is shutting down",
            ));
        }
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            WireError::exhausted(format!(
                "{} jobs are running, the most this executor allows",
                self.cfg.max_running_jobs
            ))
        })?;
        let id = self.new_id()?;
        let (spawned, group, writer) = self.launch(&id, &spec, &resolved).inspect_err(|_| {
            let _ = self.store.remove(&id);
        })?;

        let started_at_ms = now_ms();
        let group = Arc::new(group);
        let (job, seq_status) = {
            let mut table = lock(&self.table);
            let seq = table.next_seq;
            table.next_seq += 1;
            let job = Arc::new(Job {
                id,
                owner,
                argv: spec.argv,
                limits: effective,
                seq,
                started_at_ms,
                progress: writer.sender().subscribe(),
                live: Mutex::new(Live {
                    final_status: None,
                    group: Some(group.clone()),
                }),
                stop: Notify::new(),
                stop_requested: AtomicBool::new(false),
            });
            table.order.insert(seq, id);
            table.jobs.insert(id, job.clone());
            let s = job.running_status(None);
            (job, s)
        };
        // The record ends with an fsync: it is written on a blocking thread while the init
        // sets the job up, and the supervisor waits for it before writing the final one.
        let recorded = self.record(seq_status);
        tracing::info!(job = %id, owner = %job.owner, argv0 = %job.argv[0], pid = spawned.pid, "job started");

        let (started_tx, started_rx) = oneshot::channel();
        let engine = self.clone();
        self.tasks.spawn(async move {
            let launched = Launched {
                spawned,
                group,
                writer,
                started_tx,
                permit,
                recorded,
            };
            engine.supervise(job, launched).await;
        });
        match started_rx.await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(why)) => Err(WireError::new(
                ErrorKind::FailedToStart,
                format!("job {id}: {why}"),
            )),
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
            if !lock(&self.table).jobs.contains_key(&id) {
                return Ok(id);
            }
        }
    }

    /// Creates the job's directory, output file and cgroup, then clones its init.
    fn launch(
        &self,
        id: &JobId,
        spec: &JobSpec,
        limits: &ResolvedLimits,
    ) -> Result<(Spawned, JobGroup, OutputWriter), WireError> {
        let internal = |what: &str, e: io::Error| {
            tracing::error!(job = %id, "{what}: {e}");
            WireError::internal(format!("{what} failed"))
        };
        self.store
            .create_job(id)
            .map_err(|e| internal("creating the job directory", e))?;
        let writer = OutputWriter::create(&self.store.output_path(id), self.cfg.max_output_bytes)
            .map_err(|e| internal("creating the output file", e))?;
        let group = self.cgroups.create(id, limits).map_err(|e| {
            tracing::warn!(job = %id, "creating the job's cgroup: {e}");
            WireError::new(ErrorKind::FailedToStart, format!("job {id}: {e}"))
        })?;

        let mut env = vec![
            format!("PATH={BASE_PATH}"),
            "HOME=/tmp".to_string(),
            format!("USER={}", self.cfg.job_user_name),
            format!("LOGNAME={}", self.cfg.job_user_name),
        ];
        for var in &spec.env {
            let prefix = format!("{}=", var.name);
            env.retain(|e| !e.starts_with(&prefix));
            env.push(format!("{}={}", var.name, var.value));
        }
        env.push(format!("JOBWORKER_JOB_ID={id}"));
        let v1 = !group.join_files().is_empty();
        let init = InitSpec {
            argv: spec.argv.clone(),
            env,
            uid: self.cfg.job_uid,
            gid: self.cfg.job_gid,
            hostname: format!("job-{}", id.short()),
            tmp_size_bytes: self.cfg.tmp_size_bytes,
            cgroup_join: group.join_files().to_vec(),
            unshare_cgroupns: v1,
            mount_cgroup2: group.clone_into_fd().is_some(),
            cwd: "/tmp".into(),
            nofile: sys::job_nofile_limit(),
        };
        let join = match group.clone_into_fd() {
            Some(fd) => CgroupJoin::CloneInto(fd),
            None => CgroupJoin::InitJoins,
        };
        // The spawner blocks for the init template's answer (about a millisecond; up to
        // its timeout if the template hangs): this worker's other tasks move on meanwhile.
        let spawned = tokio::task::block_in_place(|| self.spawner.spawn(&init, join));
        match spawned {
            Ok(s) => Ok((s, group, writer)),
            Err(e) => {
                if let Err(e) = self.cgroups.remove(&group) {
                    tracing::error!(job = %id, "removing the cgroup of a job that did not start: {e}");
                }
                Err(internal("cloning the job init", e))
            }
        }
    }

    /// Runs one job to its end; see the module documentation.
    async fn supervise(self: Arc<Self>, job: Arc<Job>, launched: Launched) {
        let Launched {
            spawned,
            group,
            mut writer,
            started_tx,
            permit,
            recorded,
        } = launched;
        let mut started_tx = Some(started_tx);
        let (init_exit, reports) = match self
            .run_job(&job, spawned, &group, &mut writer, &mut started_tx)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(job = %job.id, "supervising the job: {e}");
                (None, Vec::new())
            }
        };
        let failed = reports.iter().find_map(|r| match r {
            Report::Failed(why) => Some(why.clone()),
            _ => None,
        });
        let started = reports.contains(&Report::Started);
        let cmd_exit = reports
            .iter()
            .find_map(|r| match r {
                Report::Exited(e) => Some(*e),
                _ => None,
            })
            .or(init_exit);
        if let Some(tx) = started_tx.take() {
            let why = failed.clone().unwrap_or_else(|| match init_exit {
                Some(Exit::Code(c)) => {
                    format!("the job init exited with status {c} before starting the command")
                }
                Some(Exit::Signal(s)) => {
                    format!("the job init was killed by signal {s} before starting the command")
                }
                None => "the job init could not be supervised".into(),
            });
            let _ = tx.send(if started { Ok(()) } else { Err(why) });
        }

        let usage = self.cgroups.usage(&group);
        let mut status = job.running_status(Some(&writer.progress()));
        status.ended_at_ms = Some(now_ms());
        status.cpu_usec = usage.cpu_usec;
        status.peak_memory_bytes = usage.peak_memory_bytes;
        status.oom_killed = usage.oom_killed;
        match (&failed, started) {
            (Some(why), _) => {
                status.state = JobState::FailedToStart;
                status.error = Some(why.clone());
            }
            (None, false) => {
                status.state = JobState::FailedToStart;
                status.error = Some("the job init ended before starting the command".into());
            }
            (None, true) => {
                status.state = if job.stop_requested.load(Ordering::SeqCst) {
                    JobState::Stopped
                } else {
                    match cmd_exit {
                        Some(Exit::Code(_)) => JobState::Exited,
                        _ => JobState::Signaled,
                    }
                };
                match cmd_exit {
                    Some(Exit::Code(c)) => status.exit_code = Some(c),
                    Some(Exit::Signal(s)) => status.signal = Some(s),
                    None => {}
                }
            }
        }
        {
            let mut live = lock(&job.live);
            live.group = None;
            live.final_status = Some(status.clone());
        }
        // The running slot is freed and followers and stoppers learn that the job ended
        // before its group is removed: whoever saw the end may start another job at once,
        // and the removal is not part of the time to a final status.
        drop(permit);
        writer.finish();
        // Removal runs on a blocking thread: the group empties asynchronously right after
        // the init is reaped, and the backend may retry briefly.
        let cgroups_engine = self.clone();
        let id = job.id;
        let removed =
            tokio::task::spawn_blocking(move || cgroups_engine.cgroups.remove(&group)).await;
        match removed {
            Ok(Ok(())) => tracing::debug!(job = %id, "job cgroup removed"),
            Ok(Err(e)) => tracing::error!(job = %id, "removing the job's cgroup: {e}"),
            Err(e) => tracing::error!(job = %id, "removing the job's cgroup: {e}"),
        }
        // The final record is written after followers learn of the end, so its fsync is
        // not part of the time to a final status; it always follows the first record.
        let _ = recorded.await;
        let _ = self.record(status.clone()).await;
        tracing::info!(job = %id, state = status.state.as_str(), exit_code = ?status.exit_code, signal = ?status.signal, oom = status.oom_killed, "job ended");

        let evicted = {
            let mut table = lock(&self.table);
            table.finished += 1;
            self.evict_locked(&mut table)
        };
        if !evicted.is_empty() {
            // Deleting directories is blocking file-system work, like the records.
            let engine = self.clone();
            let _ = tokio::task::spawn_blocking(move || engine.remove_evicted(evicted)).await;
        }
    }

    /// Writes a job's record on a blocking thread, since it ends with an fsync.
    fn record(self: &Arc<Self>, status: JobStatus) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = engine.store.save(&status) {
                let state = status.state.as_str();
                tracing::error!(job = %status.id, state, "recording the job: {e}");
            }
        })
    }

    /// The event loop of one job: returns the init's exit and everything it reported.
    async fn run_job(
        &self,
        job: &Job,
        spawned: Spawned,
        group: &JobGroup,
        writer: &mut OutputWriter,
        started_tx: &mut Option<oneshot::Sender<Result<(), String>>>,
    ) -> io::Result<(Option<Exit>, Vec<Report>)> {
        let pidfd = sys::async_pidfd(spawned.pidfd)?;
        let output = pipe::Receiver::from_owned_fd(spawned.output)?;
        let report = pipe::Receiver::from_owned_fd(spawned.report)?;
        let (mut output_open, mut report_open) = (true, true);
        let mut report_bytes = Vec::new();
        let mut init_exit = None;
        let mut discard: Option<Vec<u8>> = None;
        let mut splice = true;
        let mut term_sent = false;
        let grace = tokio::time::sleep(std::time::Duration::MAX);
        tokio::pin!(grace);
        let mut kill_armed = false;

        while output_open || report_open || init_exit.is_none() {
            tokio::select! {
                r = output.readable(), if output_open => {
                    r?;
                    // Drain what is there, a bounded number of moves per wake-up: into
                    // the file by `splice` while the cap leaves room, then read and
                    // dropped so the job never blocks on a full pipe.
                    for _ in 0..16 {
                        let moved = if splice && writer.has_room() {
                            output.try_io(|| writer.splice_from(output.as_fd(), PIPE_READ))
                        } else {
                            let buf = discard.get_or_insert_with(|| vec![0u8; PIPE_READ]);
                            output.try_read(buf).and_then(|n| writer.append(&buf[..n]).map(|()| n))
                        };
                        match moved {
                            Ok(0) => { output_open = false; break; }
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            // A file system that cannot splice: copy instead.
                            Err(e) if splice && e.raw_os_error() == Some(libc::EINVAL) => {
                                tracing::warn!(job = %job.id, "splice refused, copying the output: {e}");
                                splice = false;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                r = report.readable(), if report_open => {
                    r?;
                    let mut chunk = [0u8; 1024];
                    match report.try_read(&mut chunk) {
                        Ok(0) => report_open = false,
                        Ok(n) => {
                            let room = MAX_REPORT_BYTES.saturating_sub(report_bytes.len());
                            report_bytes.extend_from_slice(&chunk[..n.min(room)]);
                            if let Some(tx) = started_tx.take() {
                                match report::parse(&report_bytes).first() {
                                    Some(Report::Started) => { let _ = tx.send(Ok(())); }
                                    Some(Report::Failed(why)) => { let _ = tx.send(Err(why.clone())); }
                                    _ => *started_tx = Some(tx),
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                r = pidfd.readable(), if init_exit.is_none() => {
                    let mut guard = r?;
                    match sys::try_reap_pidfd(pidfd.get_ref().as_fd())? {
                        Some(exit) => init_exit = Some(exit),
                        None => guard.clear_ready(),
                    }
                }
                _ = job.stop.notified(), if !term_sent && init_exit.is_none() => {
                    term_sent = true;
                    self.terminate(job, pidfd.get_ref(), libc::SIGTERM);
                    grace.as_mut().reset(tokio::time::Instant::now() + self.cfg.stop_grace);
                    kill_armed = true;
                }
                _ = self.shutdown.cancelled(), if !term_sent && init_exit.is_none() => {
                    job.stop_requested.store(true, Ordering::SeqCst);
                    job.stop.notify_one();
                }
                _ = &mut grace, if kill_armed && init_exit.is_none() => {
                    kill_armed = false;
                    tracing::info!(job = %job.id, "grace period over: killing the job");
                    self.terminate(job, pidfd.get_ref(), libc::SIGKILL);
                    if let Err(e) = self.cgroups.kill(group) {
                        tracing::error!(job = %job.id, "killing the job's cgroup: {e}");
                    }
                }
            }
        }
        Ok((init_exit, report::parse(&report_bytes)))
    }

    fn terminate(&self, job: &Job, pidfd: &std::os::fd::OwnedFd, signal: libc::c_int) {
        // SIGTERM goes to the init, which forwards it to every process of the job.
        // SIGKILL to the init takes the whole PID namespace down with it.
        if let Err(e) = sys::pidfd_send_signal(pidfd.as_fd(), signal)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            tracing::error!(job = %job.id, "signal {signal} to the job init: {e}");
        }
    }

    /// Stops a job and returns its final status; stopping an ended job just returns it.
    pub async fn stop(&self, scope: &Scope, id: &JobId) -> Result<JobStatus, WireError> {
        let job = self.find(scope, id)?;
        if lock(&job.live).final_status.is_none() {
            job.stop_requested.store(true, Ordering::SeqCst);
            job.stop.notify_one();
            let mut rx = job.progress.clone();
            // The supervisor publishes `finished` only after setting the final status.
            let _ = rx.wait_for(|p| p.finished).await;
        }
        Ok(job.status(&self.cgroups))
    }

    pub fn status(&self, scope: &Scope, id: &JobId) -> Result<JobStatus, WireError> {
        Ok(self.find(scope, id)?.status(&self.cgroups))
    }

    /// One page of jobs in start order after `after`, within `LIST_PAGE_BYTES`.
    pub fn list(
        &self,
        scope: &Scope,
        after: Option<&JobId>,
        limit: u32,
    ) -> Result<(Vec<JobStatus>, Option<JobId>), WireError> {
        validate::scope(scope)?;
        validate::list_limit(limit)?;
        let candidates: Vec<Arc<Job>> = {
            let table = lock(&self.table);
            let from = match after {
                Some(a) => match table.jobs.get(a) {
                    Some(j) if scope.allows(&j.owner) => j.seq + 1,
                    _ => return Err(WireError::invalid("page token: no such job")),
                },
                None => 0,
            };
            table
                .order
                .range(from..)
                .filter_map(|(_, id)| table.jobs.get(id))
                .filter(|j| scope.allows(&j.owner))
                .take(limit as usize + 1)
                .cloned()
                .collect()
        };
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

    /// A reader of the job's output from `offset`.
    pub fn open_output(
        &self,
        scope: &Scope,
        id: &JobId,
        offset: u64,
        follow: bool,
    ) -> Result<(OutputReader, JobId), WireError> {
        let job = self.find(scope, id)?;
        let reader = OutputReader::open(
            &self.store.output_path(id),
            job.progress.clone(),
            offset,
            follow,
            MAX_CHUNK_LEN,
        )
        .map_err(|e| {
            tracing::error!(job = %id, "opening the output: {e}");
            WireError::internal("the job's output cannot be read")
        })?;
        Ok((reader, job.id))
    }

    /// Status of a job by id, ignoring scope (the caller already had access).
    pub fn status_of(&self, id: &JobId) -> Option<JobStatus> {
        let job = lock(&self.table).jobs.get(id).cloned()?;
        Some(job.status(&self.cgroups))
    }

    /// Stops every running job (the shutdown token is already cancelled) and waits for
    /// their supervisors to record them.
    pub async fn wait_jobs(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Drops the oldest finished jobs beyond the retention cap; returns their ids so the
    /// caller can delete their files outside the lock.
    fn evict_locked(&self, table: &mut Table) -> Vec<JobId> {
        if table.finished <= self.cfg.max_finished_jobs {
            return Vec::new();
        }
        let mut evicted = Vec::new();
        // Oldest first; the walk stops at the last one needed, so it passes at most the
        // running jobs older than them, not the whole table.
        let excess = table.finished - self.cfg.max_finished_jobs;
        for (&seq, id) in &table.order {
            if evicted.len() == excess {
                break;
            }
            let ended = table
                .jobs
                .get(id)
                .is_some_and(|j| lock(&j.live).final_status.is_some());
            if ended {
                evicted.push((seq, *id));
            }
        }
        for (seq, id) in &evicted {
            table.order.remove(seq);
            table.jobs.remove(id);
            table.finished -= 1;
        }
        evicted.into_iter().map(|(_, id)| id).collect()
    }

    fn remove_evicted(&self, ids: Vec<JobId>) {
        for id in ids {
            match self.store.remove(&id) {
                Ok(()) => {
                    tracing::debug!(job = %id, "deleted a finished job beyond the retention cap")
                }
                Err(e) => tracing::error!(job = %id, "deleting an evicted job: {e}"),
            }
        }
    }
}

impl Job {
    fn status(&self, cgroups: &Cgroups) -> JobStatus {
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

    fn running_status(&self, progress: Option<&Progress>) -> JobStatus {
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
        }
    }
}

/// The checks a start request passes before anything is created: the owner, the shape
/// of the spec, and its limits against the ceilings. Pure, so it is fuzzed as is.
pub fn check_start(
    owner: &str,
    spec: &JobSpec,
    ceilings: &Ceilings,
) -> Result<(ResolvedLimits, Limits), WireError> {
    validate::owner(owner)?;
    validate::spec(spec)?;
    resolve_limits(&spec.limits, ceilings)
}

/// Merges the request's limits with the ceilings: a missing limit gets the ceiling, a
/// limit above it is refused, naming it.
pub fn resolve_limits(req: &Limits, c: &Ceilings) -> Result<(ResolvedLimits, Limits), WireError> {
    fn pick<T: PartialOrd + Copy + std::fmt::Display>(
        name: &str,
        unit: &str,
        asked: Option<T>,
        ceiling: T,
    ) -> Result<T, WireError> {
        match asked {
            Some(v) if v > ceiling => Err(WireError::invalid(format!(
                "{name}: {v}{unit} is above this executor's ceiling of {ceiling}{unit}"
            ))),
            Some(v) => Ok(v),
            None => Ok(ceiling),
        }
    }
    let cpu_millis = pick("cpu", " millicores", req.cpu_millis, c.cpu_millis)?;
    let memory_bytes = pick("memory", " bytes", req.memory_bytes, c.memory_bytes)?;
    let pids = pick("pids", "", req.pids, c.pids)?;
    let io = match &req.io {
        None => None,
        Some(io) => {
            let rate = |name: &str, v: Option<u64>, ceiling: Option<u64>| match ceiling {
                Some(cap) => v.map(|v| pick(name, "", Some(v), cap)).transpose(),
                None => Ok(v),
            };
            Some(ResolvedIo {
                device: io.device.clone(),
                read_bps: rate("io read bps", io.read_bps, c.io_bps)?,
                write_bps: rate("io write bps", io.write_bps, c.io_bps)?,
                read_iops: rate("io read iops", io.read_iops, c.io_iops)?,
                write_iops: rate("io write iops", io.write_iops, c.io_iops)?,
            })
        }
    };
    let effective = Limits {
        cpu_millis: Some(cpu_millis),
        memory_bytes: Some(memory_bytes),
        pids: Some(pids),
        io: io.as_ref().map(|io| IoLimits {
            device: io.device.clone(),
            read_bps: io.read_bps,
            write_bps: io.write_bps,
            read_iops: io.read_iops,
            write_iops: io.write_iops,
        }),
    };
    Ok((
        ResolvedLimits {
            cpu_millis,
            memory_bytes,
            pids,
            io,
        },
        effective,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pids: 100,
            io_bps: Some(100 << 20),
            io_iops: None,
        }
    }

    #[test]
    fn missing_limits_get_the_ceiling() {
        let (r, eff) = resolve_limits(&Limits::default(), &ceilings()).unwrap();
        assert_eq!((r.cpu_millis, r.memory_bytes, r.pids), (2000, 1 << 30, 100));
        assert!(r.io.is_none());
        assert_eq!(eff.cpu_millis, Some(2000));
        assert_eq!(eff.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn limits_above_a_ceiling_are_refused_naming_the_limit() {
        let cases = [
            (
                Limits {
                    cpu_millis: Some(2001),
                    ..Default::default()
                },
                "cpu: 2001 millicores is above this executor's ceiling of 2000 millicores",
            ),
            (
                Limits {
                    memory_bytes: Some((1 << 30) + 1),
                    ..Default::default()
                },
                "memory: 1073741825 bytes is above this executor's ceiling of 1073741824 bytes",
            ),
            (
                Limits {
                    pids: Some(101),
                    ..Default::default()
                },
                "pids: 101 is above this executor's ceiling of 100",
            ),
            (
                Limits {
                    io: Some(IoLimits {
                        device: "/dev/vda".into(),
                        write_bps: Some((100 << 20) + 1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "io write bps: 104857601 is above this executor's ceiling of 104857600",
            ),
        ];
        for (limits, msg) in cases {
            let e = resolve_limits(&limits, &ceilings()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert_eq!(e.message, msg);
        }
    }

    #[test]
    fn io_rates_without_a_ceiling_pass_through() {
        let limits = Limits {
            io: Some(IoLimits {
                device: "/dev/vda".into(),
                read_iops: Some(1_000_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, _) = resolve_limits(&limits, &ceilings()).unwrap();
        assert_eq!(r.io.unwrap().read_iops, Some(1_000_000));
    }
}
