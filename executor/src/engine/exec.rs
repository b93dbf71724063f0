//! Exec: another process inside a running job, started by the job's own init (already in
//! the job's namespaces and cgroup, already the job's user with no capabilities and the
//! job's seccomp filter) on the executor's request. The executor never enters a job.
//!
//! A session asks [`Engine::exec`]; the engine prepares the process's stdio (pipes, or
//! the terminal the init opens) and hands an [`ExecOrder`] to the job's supervisor, which
//! sends the request on the init's report socket and routes the init's answers back: the
//! process runs (with its terminal's master), could not start (why), or ended (how).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jobworker_protocol::{ErrorKind, ExecSpec, JobId, Scope, WireError};
use tokio::sync::oneshot;

use super::job::Job;
use super::launch;
use super::{Engine, Refusal};
use crate::audit::record::{Body, Id};
use crate::ipc::exec;
use crate::ipc::report::Failure;
use crate::sys::Exit;

/// Most execs alive in one job at once.
pub const MAX_EXECS_PER_JOB: usize = 16;
/// How long an exec may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the supervisor sends to the init, and where the answers go.
pub(super) struct ExecOrder {
    pub exec: u32,
    /// The encoded [`exec::ExecSpec`], written into the spec pipe once the request is
    /// sent.
    pub spec: Vec<u8>,
    pub spec_r: OwnedFd,
    pub spec_w: OwnedFd,
    pub tty: bool,
    /// stdin, stdout, stderr of the process (the init's ends), without a terminal.
    pub stdio: Option<[OwnedFd; 3]>,
    /// The process runs (with its terminal's master, if it has one), or why not.
    pub started: oneshot::Sender<Result<Option<OwnedFd>, Failure>>,
    /// How it ended; dropped unsent when the job ends first.
    pub ended: oneshot::Sender<Exit>,
}

/// A running exec, for its session.
pub struct ExecHandle {
    /// The write end of its stdin, when it reads from the client.
    pub stdin: Option<OwnedFd>,
    /// Its stdout and stderr, or its terminal's master (one stream, as stdout).
    pub output: ExecOutput,
    /// How it ended; an error when the job ended first (which killed it).
    pub ended: oneshot::Receiver<Exit>,
    _slot: ExecSlot,
}

pub enum ExecOutput {
    Pipes { stdout: OwnedFd, stderr: OwnedFd },
    Terminal(OwnedFd),
}

/// One of the job's exec slots, given back when the session drops its handle.
struct ExecSlot(Arc<Job>);

impl Drop for ExecSlot {
    fn drop(&mut self) {
        self.0.execs.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The executor's ends of an exec's stdio.
struct OurEnds {
    stdin: Option<OwnedFd>,
    output: Option<(OwnedFd, OwnedFd)>,
}

impl Engine {
    /// Starts `spec` in running job `id` (which `scope` must see) for `caller`; returns
    /// once it runs, or why it could not start. The caller validated the scope and the
    /// spec. The exec is recorded in the audit trail before it is asked of the init; if
    /// the record cannot be written, nothing runs.
    pub async fn exec(
        &self,
        scope: &Scope,
        id: &JobId,
        caller: &str,
        spec: ExecSpec,
    ) -> Result<Result<ExecHandle, Failure>, WireError> {
        let refuse = |reason, e| self.refused("exec", caller, Some(*id), reason, e);
        let job = self
            .find(scope, id)
            .map_err(|e| refuse(Refusal::NotFound, e))?;
        let not_running = || {
            WireError::new(
                ErrorKind::FailedPrecondition,
                format!("job {id} is not running"),
            )
        };
        let orders = match (&job.exec_tx, job.ended()) {
            (Some(tx), false) => tx.clone(),
            _ => return Err(refuse(Refusal::NotRunning, not_running())),
        };
        if job.execs.fetch_add(1, Ordering::SeqCst) >= MAX_EXECS_PER_JOB {
            job.execs.fetch_sub(1, Ordering::SeqCst);
            return Err(refuse(
                Refusal::Capacity,
                WireError::exhausted(format!(
                    "job {id} already has {MAX_EXECS_PER_JOB} execs running"
                )),
            ));
        }
        let record = Body::Exec {
            job: Id(job.id),
            owner: job.owner.clone(),
            caller: caller.to_owned(),
            argv: spec.argv.clone(),
            env: spec.env.iter().map(|v| v.name.clone()).collect(),
            tty: spec.tty.is_some(),
            stdin: spec.stdin,
        };
        if let Err(e) = self.audit.append(record).await {
            job.execs.fetch_sub(1, Ordering::SeqCst);
            return Err(refuse(Refusal::Audit, e.into()));
        }
        let slot = ExecSlot(job.clone());
        let exec = self.next_exec.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        let (order, ours) = self
            .order(&job, exec, &spec, started_tx, ended_tx)
            .map_err(|e| {
                tracing::error!(job = %id, "preparing an exec: {e}");
                WireError::internal("preparing the exec failed")
            })?;
        if orders.send(Box::new(order)).await.is_err() {
            return Err(not_running());
        }
        let answer = tokio::time::timeout(START_TIMEOUT, started_rx)
            .await
            .map_err(|_| {
                WireError::new(
                    ErrorKind::Unavailable,
                    format!("the init of job {id} did not start the exec"),
                )
            })?
            .map_err(|_| not_running())?;
        let master = match answer {
            Ok(master) => master,
            Err(failure) => return Ok(Err(failure)),
        };
        let output = match (ours.output, master) {
            (Some((stdout, stderr)), None) => ExecOutput::Pipes { stdout, stderr },
            (None, Some(m)) => ExecOutput::Terminal(m),
            _ => {
                return Err(WireError::internal(
                    "the job's init answered the exec wrongly",
                ));
            }
        };
        Ok(Ok(ExecHandle {
            stdin: ours.stdin,
            output,
            ended: ended_rx,
            _slot: slot,
        }))
    }

    /// The order for exec `exec` of `job`, and the executor's ends of its stdio.
    fn order(
        &self,
        job: &Job,
        exec: u32,
        spec: &ExecSpec,
        started: oneshot::Sender<Result<Option<OwnedFd>, Failure>>,
        ended: oneshot::Sender<Exit>,
    ) -> io::Result<(ExecOrder, OurEnds)> {
        let name = format!("job-{}", job.id.short());
        let encoded = exec::ExecSpec {
            argv: spec.argv.clone(),
            env: launch::environment(&job.id, &name, &spec.env),
            cwd: spec.workdir.clone().unwrap_or_else(|| "/tmp".into()),
            tty: spec.tty.map(|t| (t.rows, t.cols)),
        }
        .encode();
        let (spec_r, spec_w) = io::pipe()?;
        let (stdio, ours) = if spec.tty.is_some() {
            (
                None,
                OurEnds {
                    stdin: None,
                    output: None,
                },
            )
        } else {
            let (stdin_theirs, stdin_ours) = if spec.stdin {
                let (r, w) = io::pipe()?;
                (OwnedFd::from(r), Some(OwnedFd::from(w)))
            } else {
                (self.spawner.devnull().try_clone_to_owned()?, None)
            };
            let (out_r, out_w) = io::pipe()?;
            let (err_r, err_w) = io::pipe()?;
            (
                Some([stdin_theirs, out_w.into(), err_w.into()]),
                OurEnds {
                    stdin: stdin_ours,
                    output: Some((out_r.into(), err_r.into())),
                },
            )
        };
        let order = ExecOrder {
            exec,
            spec: encoded,
            spec_r: spec_r.into(),
            spec_w: spec_w.into(),
            tty: spec.tty.is_some(),
            stdio,
            started,
            ended,
        };
        Ok((order, ours))
    }
}
