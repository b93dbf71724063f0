//! The supervisor: one task per running job that runs it to its end.
//!
//! It drains the job's output pipe into the output file, watches the init's report pipe
//! and its pidfd, carries out stop requests and the job's deadline (SIGTERM to the whole
//! namespace through the init, SIGKILL to the init and the cgroup after the grace
//! period) and, when everything has ended, publishes the final status, gives back the
//! job's running slot and quota share, removes the cgroup, gives back the job's id and
//! records the job.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use jobworker_protocol::Stream;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::JoinHandle;

use super::final_status::{Ending, final_status, start_result};
use super::job::Job;
use super::quota::Share;
use super::{Engine, lock, now_ms, table};
use crate::cgroup::JobGroup;
use crate::ipc::report::{self, MAX_REPORT_BYTES, Report};
use crate::output::OutputWriter;
use crate::spawn::Spawned;
use crate::sys::{self, Exit};

/// Bytes moved from the output pipe at a time.
const PIPE_READ: usize = 256 * 1024;
/// Moves from the output pipe per wake-up, so one chatty job cannot hold a worker.
const MOVES_PER_WAKE: usize = 16;

/// The answer a waiting `start` gets: the command runs, or why it does not.
pub(super) type StartedTx = oneshot::Sender<Result<(), String>>;

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
    pub recorded: JoinHandle<()>,
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
        } = launched;
        let mut started_tx = Some(started_tx);
        let mut end = match self
            .run_job(
                &job,
                spawned,
                &group,
                &mut writer,
                &mut started_tx,
                deadline,
            )
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
        recorded: JoinHandle<()>,
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
        let _ = recorded.await;
        let _ = self.record(status.clone()).await;
        tracing::info!(job = %id, state = status.state.as_str(), exit_code = ?status.exit_code, signal = ?status.signal, oom = status.oom_killed, "job ended");

        let evicted = lock(&self.table).finish_one(self.cfg.max_finished_jobs);
        if !evicted.is_empty() {
            // Deleting directories is blocking file-system work, like the records.
            let engine = self.clone();
            let _ =
                tokio::task::spawn_blocking(move || table::remove_evicted(&engine.store, evicted))
                    .await;
        }
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
        group: &JobGroup,
        writer: &mut OutputWriter,
        started_tx: &mut Option<StartedTx>,
        deadline: tokio::time::Instant,
    ) -> io::Result<Ending> {
        let pidfd = sys::async_pidfd(spawned.pidfd)?;
        let mut pipes = JobPipes::new(spawned.stdout, spawned.stderr, spawned.report)?;
        let mut init_exit: Option<Exit> = None;
        let mut timed_out = false;
        let mut term_sent = false;
        let grace = tokio::time::sleep(std::time::Duration::MAX);
        tokio::pin!(grace);
        let mut kill_armed = false;

        while pipes.any_open() || init_exit.is_none() {
            tokio::select! {
                r = pipes.outputs[0].rx.readable(), if pipes.outputs[0].open => {
                    r?;
                    pipes.drain_output(0, job, writer)?;
                }
                r = pipes.outputs[1].rx.readable(), if pipes.outputs[1].open => {
                    r?;
                    pipes.drain_output(1, job, writer)?;
                }
                r = pipes.report.readable(), if pipes.report_open => {
                    r?;
                    pipes.read_report(started_tx)?;
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
            reports: report::decode(&pipes.report_bytes),
            init_exit,
            stop_requested: false,
            timed_out,
        })
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

/// One output pipe of the job and the stream it is.
struct Output {
    stream: Stream,
    rx: pipe::Receiver,
    open: bool,
    /// Moves bytes by `splice`, until a file system refuses it.
    splice: bool,
}

/// The pipes a job's supervisor reads: the job's stdout and stderr, and the init's
/// reports.
struct JobPipes {
    outputs: [Output; 2],
    report: pipe::Receiver,
    report_open: bool,
    /// What the init reported so far, at most [`MAX_REPORT_BYTES`].
    report_bytes: Vec<u8>,
    /// Output past the cap (or from a file system that cannot splice) is read into this
    /// buffer, allocated on first use.
    discard: Option<Vec<u8>>,
}

impl JobPipes {
    fn new(stdout: OwnedFd, stderr: OwnedFd, report: OwnedFd) -> io::Result<Self> {
        let output = |stream, fd| -> io::Result<Output> {
            Ok(Output {
                stream,
                rx: pipe::Receiver::from_owned_fd(fd)?,
                open: true,
                splice: true,
            })
        };
        Ok(JobPipes {
            outputs: [
                output(Stream::Stdout, stdout)?,
                output(Stream::Stderr, stderr)?,
            ],
            report: pipe::Receiver::from_owned_fd(report)?,
            report_open: true,
            report_bytes: Vec::new(),
            discard: None,
        })
    }

    fn any_open(&self) -> bool {
        self.report_open || self.outputs.iter().any(|o| o.open)
    }

    /// Drains what is in output pipe `i`, a bounded number of moves per wake-up: into its
    /// stream's file by `splice` while the cap leaves room, then read and dropped so the
    /// job never blocks on a full pipe.
    fn drain_output(&mut self, i: usize, job: &Job, writer: &mut OutputWriter) -> io::Result<()> {
        let out = &mut self.outputs[i];
        for _ in 0..MOVES_PER_WAKE {
            let moved = if out.splice && writer.room(out.stream) > 0 {
                out.rx
                    .try_io(|| writer.splice_from(out.stream, out.rx.as_fd(), PIPE_READ))
            } else {
                let buf = self.discard.get_or_insert_with(|| vec![0u8; PIPE_READ]);
                out.rx
                    .try_read(buf)
                    .and_then(|n| writer.append(out.stream, &buf[..n]).map(|()| n))
            };
            match moved {
                Ok(0) => {
                    out.open = false;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A file system that cannot splice: copy instead.
                Err(e) if out.splice && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(job = %job.id, "splice refused, copying the output: {e}");
                    out.splice = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the init reported; the first report answers a waiting `start`.
    fn read_report(&mut self, started_tx: &mut Option<StartedTx>) -> io::Result<()> {
        let mut chunk = [0u8; 1024];
        match self.report.try_read(&mut chunk) {
            Ok(0) => self.report_open = false,
            Ok(n) => {
                let room = MAX_REPORT_BYTES.saturating_sub(self.report_bytes.len());
                self.report_bytes.extend_from_slice(&chunk[..n.min(room)]);
                if let Some(tx) = started_tx.take() {
                    match report::decode(&self.report_bytes).first() {
                        Some(Report::Started) => {
                            let _ = tx.send(Ok(()));
                        }
                        Some(Report::Failed(why)) => {
                            let _ = tx.send(Err(why.clone()));
                        }
                        _ => *started_tx = Some(tx),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}
