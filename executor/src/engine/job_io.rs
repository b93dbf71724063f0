//! What a job's supervisor reads and writes while the job runs: the job's stdout and
//! stderr pipes (or its terminal), moved into the output store; the init's report
//! socket, whose reports say how the command started and ended, bring the terminal, and
//! answer exec requests; and the exec requests it sends the init.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use jobworker_protocol::Stream;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::exec::ExecOrder;
use super::job::Job;
use super::lock;
use crate::ipc::exec::ExecRequest;
use crate::ipc::report::{Failure, MAX_REPORT_LEN, Report};
use crate::output::OutputWriter;
use crate::sys::{self, Exit};

/// Bytes moved from an output pipe at a time.
const PIPE_READ: usize = 256 * 1024;
/// Moves from an output (or reports read) per wake-up, so one chatty job cannot hold a
/// worker.
const MOVES_PER_WAKE: usize = 16;
/// Reports about the command itself that are kept (started or failed, then exited): an
/// init that sends more is not believed past these.
const MAX_COMMAND_REPORTS: usize = 4;

/// The answer a waiting `start` gets: the command runs, or why it does not.
pub(super) type StartedTx = oneshot::Sender<Result<(), Failure>>;

/// One output pipe of the job and the stream it is.
pub(super) struct Output {
    stream: Stream,
    pub rx: pipe::Receiver,
    pub open: bool,
    /// Moves bytes by `splice`, until a file system refuses it.
    splice: bool,
}

/// An exec the init was asked for and has not finished.
struct Pending {
    /// Its terminal's master, once the init sent it.
    master: Option<OwnedFd>,
    started: Option<oneshot::Sender<Result<Option<OwnedFd>, Failure>>>,
    ended: oneshot::Sender<Exit>,
}

pub(super) struct JobIo {
    pub outputs: [Output; 2],
    /// The job's terminal master, once the init has sent it (its output is stdout).
    pub terminal: Option<AsyncFd<OwnedFd>>,
    pub report: AsyncFd<OwnedFd>,
    pub report_open: bool,
    /// What the init reported about the command, in order.
    pub reports: Vec<Report>,
    pending: HashMap<u32, Pending>,
    /// Output past the cap (or from a file system that cannot splice, or a terminal) is
    /// read into this buffer, allocated on first use.
    buf: Option<Vec<u8>>,
}

impl JobIo {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd, report: OwnedFd) -> io::Result<Self> {
        let output = |stream, fd| -> io::Result<Output> {
            Ok(Output {
                stream,
                rx: pipe::Receiver::from_owned_fd(fd)?,
                open: true,
                splice: true,
            })
        };
        Ok(JobIo {
            outputs: [
                output(Stream::Stdout, stdout)?,
                output(Stream::Stderr, stderr)?,
            ],
            terminal: None,
            report: sys::async_fd(report)?,
            report_open: true,
            reports: Vec::new(),
            pending: HashMap::new(),
            buf: None,
        })
    }

    /// Something of the job may still come: an output or the report socket is open.
    pub fn any_open(&self) -> bool {
        self.report_open || self.terminal.is_some() || self.outputs.iter().any(|o| o.open)
    }

    /// Drains what is in output pipe `i`, a bounded number of moves per wake-up: into its
    /// stream's file by `splice` while the cap leaves room, then read and dropped so the
    /// job never blocks on a full pipe.
    pub fn drain_output(
        &mut self,
        i: usize,
        job: &Job,
        writer: &mut OutputWriter,
    ) -> io::Result<()> {
        let out = &mut self.outputs[i];
        for _ in 0..MOVES_PER_WAKE {
            let moved = if out.splice && writer.room(out.stream) > 0 {
                out.rx
                    .try_io(|| writer.splice_from(out.stream, out.rx.as_fd(), PIPE_READ))
            } else {
                let buf = self.buf.get_or_insert_with(|| vec![0u8; PIPE_READ]);
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

    /// Drains the terminal into stdout. `EIO` is its end: every process that had it open
    /// has closed it.
    pub fn drain_terminal(&mut self, writer: &mut OutputWriter) -> io::Result<()> {
        let Some(t) = &self.terminal else {
            return Ok(());
        };
        let buf = self.buf.get_or_insert_with(|| vec![0u8; PIPE_READ]);
        for _ in 0..MOVES_PER_WAKE {
            match t.try_io(Interest::READABLE, |fd| sys::read(fd.as_fd(), buf)) {
                Ok(0) => {}
                Ok(n) => {
                    writer.append(Stream::Stdout, &buf[..n])?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
                Err(e) => return Err(e),
            }
            // The end of the terminal.
            self.terminal = None;
            return Ok(());
        }
        Ok(())
    }

    /// Reads the reports that are there, a bounded number per wake-up, and acts on each.
    /// A report of the wrong shape is logged and dropped.
    pub fn read_reports(&mut self, job: &Job, started: &mut Option<StartedTx>) -> io::Result<()> {
        let mut buf = [0u8; MAX_REPORT_LEN + 1];
        for _ in 0..MOVES_PER_WAKE {
            let got = self.report.try_io(Interest::READABLE, |fd| {
                sys::recv_with_fds(fd.as_fd(), &mut buf)
            });
            let (n, mut fds) = match got {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(job = %job.id, "a report too long from the job's init: dropped");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.report_open = false;
                return Ok(());
            }
            match Report::decode(&buf[..n], fds.len()) {
                Ok(r) => self.on_report(job, r, fds.pop(), started)?,
                Err(e) => tracing::warn!(job = %job.id, "from the job's init: {e}; dropped"),
            }
        }
        Ok(())
    }

    fn on_report(
        &mut self,
        job: &Job,
        r: Report,
        fd: Option<OwnedFd>,
        started: &mut Option<StartedTx>,
    ) -> io::Result<()> {
        match r {
            Report::Started | Report::Failed(_) | Report::Exited(_) => {
                if let Some(tx) = started.take() {
                    match &r {
                        Report::Started => {
                            let _ = tx.send(Ok(()));
                        }
                        Report::Failed(f) => {
                            let _ = tx.send(Err(f.clone()));
                        }
                        _ => *started = Some(tx),
                    }
                }
                if self.reports.len() < MAX_COMMAND_REPORTS {
                    self.reports.push(r);
                }
            }
            Report::Terminal => {
                let master = fd.expect("checked by the decoder: one descriptor");
                if self.terminal.is_none() {
                    let theirs = Arc::new(master.try_clone()?);
                    self.terminal = Some(sys::async_fd(master)?);
                    lock(&job.attach).terminal = Some(theirs);
                }
            }
            Report::ExecTerminal { exec } => {
                if let Some(p) = self.pending.get_mut(&exec) {
                    p.master = fd;
                }
            }
            Report::ExecStarted { exec } => {
                if let Some(p) = self.pending.get_mut(&exec)
                    && let Some(tx) = p.started.take()
                {
                    let _ = tx.send(Ok(p.master.take()));
                }
            }
            Report::ExecFailed { exec, failure } => {
                if let Some(mut p) = self.pending.remove(&exec)
                    && let Some(tx) = p.started.take()
                {
                    let _ = tx.send(Err(failure));
                }
            }
            Report::ExecExited { exec, exit } => {
                if let Some(p) = self.pending.remove(&exec) {
                    let _ = p.ended.send(exit);
                }
            }
        }
        Ok(())
    }

    /// Sends an exec request to the init, then its spec on a blocking thread (it may be
    /// larger than a pipe holds; the init reads it as soon as it has the request). An
    /// init that does not take the request fails the exec.
    pub fn send_exec(&mut self, order: ExecOrder) {
        let ExecOrder {
            exec,
            spec,
            spec_r,
            spec_w,
            tty,
            stdio,
            started,
            ended,
        } = order;
        let req = ExecRequest { exec, tty }.encode();
        let mut fds: Vec<BorrowedFd<'_>> = vec![spec_r.as_fd()];
        if let Some(stdio) = &stdio {
            fds.extend(stdio.iter().map(|f| f.as_fd()));
        }
        if let Err(e) = sys::send_with_fds(self.report.get_ref().as_fd(), &req, &fds) {
            let _ = started.send(Err(Failure {
                kind: jobworker_protocol::StartFailure::Other,
                message: format!("asking the job's init: {e}"),
            }));
            return;
        }
        drop(stdio);
        drop(spec_r);
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::File::from(spec_w).write_all(&spec);
        });
        self.pending.insert(
            exec,
            Pending {
                master: None,
                started: Some(started),
                ended,
            },
        );
    }
}
