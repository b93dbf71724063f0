//! The supervisor: one task per running job that runs it to its end.
//!
//! It drains the job's output pipes (or its terminal) into the output store, reads the
//! init's reports and hands it exec requests (see [`super::job_io`]), watches its pidfd, carries out stop requests and the job's deadline (SIGTERM to the whole
//! namespace through the init, SIGKILL to the init and the cgroup after the grace
//! period) and, when everything has ended, publishes the final status, gives back the
//! job's running slot and quota share, removes the cgroup, gives back the job's id and
//! records the job.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::io::unix::AsyncFd;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use super::exec::ExecOrder;
use super::final_status::{Ending, final_status, start_result};
use super::job::Job;
use super::job_io::{JobIo, StartedTx};
use super::quota::Share;
use super::{Engine, lock, now_ms, table};
use crate::cgroup::JobGroup;
use crate::output::OutputWriter;
use crate::spawn::Spawned;
use crate::sys::{self, Exit};

/// A record being written, which more than one task may wait for.
pub(super) type Recorded = Shared<BoxFuture<'static, ()>>;

/// What the supervisor of a job that was just cloned takes over.
pub(super) struct Launched {
    pub spawned: Spawned,
    pub group: Arc<JobGroup>,
    pub writer: OutputWriter,
    pub started_tx: StartedTx,
    /// The job's running slot, freed as soon as the job has ended.
    pub permit: OwnedSemaphorePermit,
    /// The job's share of its owner's quotas, likewise.
    pub share: Share,
    /// When the job is stopped for running out of time.
    pub deadline: tokio::time::Instant,
    /// The job's first record, being written.
    pub recorded: Recorded,
    /// Exec requests for the job's init.
    pub exec_rx: mpsc::Receiver<Box<ExecOrder>>,
}

impl Engine {
    /// Runs one job to its end; see the module documentation.
    pub(super) async fn supervise(self: Arc<Self>, job: Arc<Job>, launched: Launched) {
        let Launched {
            spawned,
            group,
            mut writer,
            started_tx,
            permit,
            share,
            deadline,
            recorded,
            exec_rx,
        } = launched;
        let mut started_tx = Some(started_tx);
        let run = Run {
            group: &group,
            deadline,
            exec_rx,
        };
        let mut end = match self
            .run_job(&job, spawned, run, &mut writer, &mut started_tx)
            .await
        {
            Ok(end) => end,
            Err(e) => {
                tracing::error!(job = %job.id, "supervising the job: {e}");
                Ending::default()
            }
        };
        end.stop_requested = job.stop_requested.load(Ordering::SeqCst);
        if let Some(tx) = started_tx.take() {
            let _ = tx.send(start_result(&end));
        }
        let usage = self.cgroups.usage(&group);
        let running = job.running_status(Some(&writer.progress()));
        let status = final_status(running, &end, &usage, now_ms());
        {
            let mut live = lock(&job.live);
            live.group = None;
            live.final_status = Some(status.clone());
        }
        *lock(&job.attach) = Default::default();
        // The running slot is freed and followers and stoppers learn that the job ended
        // before its group is removed: whoever saw the end may start another job at once,
        // and the removal is not part of the time to a final status.
        drop(permit);
        drop(share);
        writer.finish();
        self.clean_up(&job, group, recorded, status).await;
    }

    /// After the end is published: removes the group, writes the final record and evicts
    /// the oldest finished jobs beyond the retention cap.
    async fn clean_up(
        self: &Arc<Self>,
        job: &Job,
        group: Arc<JobGroup>,
        recorded: Recorded,
        status: jobworker_protocol::JobStatus,
    ) {
        // Removal runs on a blocking thread: the group empties asynchronously right after
        // the init is reaped, and the backend may retry briefly.
        let engine = self.clone();
        let id = job.id;
        let removed = tokio::task::spawn_blocking(move || engine.cgroups.remove(&group)).await;
        let removed = match removed {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match (removed, job.uid) {
            (Ok(()), uid) => {
                tracing::debug!(job = %id, "job cgroup removed");
                // Nothing of the job is left: its id may serve another job.
                if let Some(uid) = uid {
                    lock(&self.ids).give_back(uid);
                }
            }
            (Err(e), uid) => tracing::error!(
                job = %id,
                ?uid,
                "removing the job's cgroup: {e}; the job's id stays out of use until the executor restarts"
            ),
        }
        // The final record is written after followers learn of the end, so its fsync is
        // not part of the time to a final status; it always follows the first record.
        recorded.await;
        let _ = self.record(status.clone()).await;
        self.record_end(&status);
        tracing::info!(job = %id, state = status.state.as_str(), exit_code = ?status.exit_code, signal = ?status.signal, oom = status.oom_killed, "job ended");

        let evicted = lock(&self.table).finish_one(self.cfg.max_finished_jobs);
        job.cleaned.send_replace(true);
        if !evicted.is_empty() {
            // Deleting directories is blocking file-system work, like the records.
            let engine = self.clone();
            let _ =
                tokio::task::spawn_blocking(move || table::remove_evicted(&engine.store, evicted))
                    .await;
        }
    }

    /// Writes a job's first record (see [`Engine::record`]), for the supervisor and for
    /// the start that waits for it.
    pub(super) fn record_start(
        self: &Arc<Self>,
        status: jobworker_protocol::JobStatus,
    ) -> Recorded {
        self.record(status).map(drop).boxed().shared()
    }

    /// Writes a job's record on a blocking thread, since it ends with an fsync.
    pub(super) fn record(
        self: &Arc<Self>,
        status: jobworker_protocol::JobStatus,
    ) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = engine.store.save(&status) {
                let state = status.state.as_str();
                tracing::error!(job = %status.id, state, "recording the job: {e}");
            }
        })
    }

    /// The event loop of one job: returns how it ended (the init's exit, everything it
    /// reported, whether its deadline ended it).
    async fn run_job(
        &self,
        job: &Job,
        spawned: Spawned,
        run: Run<'_>,
        writer: &mut OutputWriter,
        started_tx: &mut Option<StartedTx>,
    ) -> io::Result<Ending> {
        let Run {
            group,
            deadline,
            mut exec_rx,
        } = run;
        let pidfd = sys::async_pidfd(spawned.pidfd)?;
        let mut io = JobIo::new(spawned.stdout, spawned.stderr, spawned.report)?;
        let mut init_exit: Option<Exit> = None;
        let mut timed_out = false;
        let mut term_sent = false;
        let grace = tokio::time::sleep(std::time::Duration::MAX);
        tokio::pin!(grace);
        let mut kill_armed = false;

        while io.any_open() || init_exit.is_none() {
            tokio::select! {
                r = io.outputs[0].rx.readable(), if io.outputs[0].open => {
                    r?;
                    io.drain_output(0, job, writer)?;
                }
                r = io.outputs[1].rx.readable(), if io.outputs[1].open => {
                    r?;
                    io.drain_output(1, job, writer)?;
                }
                r = readable(io.terminal.as_ref()), if io.terminal.is_some() => {
                    r?;
                    io.drain_terminal(writer)?;
                }
                r = io.report.readable(), if io.report_open => {
                    drop(r?);
                    io.read_reports(job, started_tx)?;
                }
                Some(order) = exec_rx.recv(), if io.report_open && init_exit.is_none() => {
                    io.send_exec(*order);
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
                    terminate(job, &pidfd, libc::SIGTERM);
                    grace.as_mut().reset(tokio::time::Instant::now() + self.cfg.stop_grace);
                    kill_armed = true;
                }
                _ = self.shutdown.cancelled(), if !term_sent && init_exit.is_none() => {
                    job.stop_requested.store(true, Ordering::SeqCst);
                    job.stop.notify_one();
                }
                _ = tokio::time::sleep_until(deadline), if !term_sent && init_exit.is_none() => {
                    tracing::info!(job = %job.id, "deadline reached: stopping the job");
                    timed_out = true;
                    job.stop.notify_one();
                }
                _ = &mut grace, if kill_armed && init_exit.is_none() => {
                    kill_armed = false;
                    tracing::info!(job = %job.id, "grace period over: killing the job");
                    terminate(job, &pidfd, libc::SIGKILL);
                    if let Err(e) = self.cgroups.kill(group) {
                        tracing::error!(job = %job.id, "killing the job's cgroup: {e}");
                    }
                }
            }
        }
        Ok(Ending {
            reports: io.reports,
            init_exit,
            stop_requested: false,
            timed_out,
        })
    }
}

/// What the event loop of a job watches besides the job's own descriptors.
struct Run<'a> {
    group: &'a JobGroup,
    deadline: tokio::time::Instant,
    exec_rx: mpsc::Receiver<Box<ExecOrder>>,
}

/// Waits for the terminal to be readable (never, without one; the branch is disabled
/// then).
async fn readable(t: Option<&AsyncFd<OwnedFd>>) -> io::Result<()> {
    match t {
        Some(t) => t.readable().await.map(drop),
        None => std::future::pending().await,
    }
}

/// SIGTERM goes to the init, which forwards it to every process of the job. SIGKILL to
/// the init takes the whole PID namespace down with it.
fn terminate(job: &Job, pidfd: &AsyncFd<OwnedFd>, signal: libc::c_int) {
    if let Err(e) = sys::pidfd_send_signal(pidfd.get_ref().as_fd(), signal)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        tracing::error!(job = %job.id, "signal {signal} to the job init: {e}");
    }
}
