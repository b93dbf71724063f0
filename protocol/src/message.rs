//! Requests and responses: one request variant per operation, like a dispatch table.
//!
//! A connection starts with [`Request::Hello`]; after the executor answers with
//! [`Response::Hello`] the client sends requests one at a time. Every request gets exactly
//! one response, except [`Request::Output`], which is answered by any number of
//! [`Response::Chunk`] frames and then one [`Response::End`] (or one
//! [`Response::Error`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::job::{
    ExecEnd, ExecSpec, JobId, JobSpec, JobStatus, ListFilter, QuotaReport, Scope, Stream, Streams,
    TtySize,
};
use crate::observe::{ApiRecord, AuditLine, AuditQuery, ExecutorMetrics, JobEvent, JobUsage};

/// Largest output chunk in one frame.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// Most jobs in one [`Response::Jobs`] page.
pub const MAX_LIST_PAGE: u32 = 500;

/// Byte budget of one [`Response::Jobs`] page: the executor stops adding statuses to a
/// page once their encoded size reaches it. A single status is always smaller (its
/// largest parts, argv and error, are bounded by [`crate::validate`]), so a page always
/// holds at least one job and always fits in a frame.
pub const LIST_PAGE_BYTES: usize = 768 * 1024;

/// Most owners in one [`Response::Quotas`]: the executor reports the first this many, by
/// owner, so the answer always fits in a frame.
pub const MAX_QUOTA_REPORTS: usize = 4096;

/// Where a reader of a job's output starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputFrom {
    /// At this many bytes into the output, of both streams in the order they arrived
    /// (whatever streams the reader asks for).
    Offset(u64),
    /// At the first of the last this many lines of the streams asked for, as the output
    /// is when the reader starts.
    TailLines(u32),
}

/// A request from the API server to the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First frame of every connection.
    Hello { version: u32 },
    /// Start a job owned by `owner` (the caller's verified identity).
    Start { owner: String, spec: JobSpec },
    /// Stop a job: SIGTERM to its whole process tree, SIGKILL after the grace period.
    /// Answered with the job's status once it has ended. `caller` is who asks (for the
    /// audit trail): the owner, or an administrator.
    Stop {
        scope: Scope,
        id: JobId,
        caller: String,
    },
    /// Status of one job.
    Status { scope: Scope, id: JobId },
    /// One page of the jobs in `scope` that `filter` matches, oldest first, starting
    /// after `after`.
    List {
        scope: Scope,
        after: Option<JobId>,
        limit: u32,
        filter: ListFilter,
    },
    /// The job's output of `streams`, from `from`. With `follow`, keep sending new
    /// output until the job ends; without it, send only what exists now.
    Output {
        scope: Scope,
        id: JobId,
        from: OutputFrom,
        streams: Streams,
        follow: bool,
    },
    /// Liveness check, answered with [`Response::Pong`].
    Ping,
    /// Quota use and limits: of the owner of `Scope::Owner`, or of every owner with
    /// running jobs or quotas of their own (`Scope::Any`).
    Quota { scope: Scope },
    /// Start a job and stay attached to it: answered with `Started`, then its output
    /// (`Chunk`s of both streams, from its first byte) and `End`; meanwhile the client
    /// may send `Input`, `InputEnd` and `Resize`. Leaving does not stop the job.
    Run { owner: String, spec: JobSpec },
    /// Run another process inside a running job (`scope` must see it), attached:
    /// answered with `ExecStarted`, its output (`Chunk`s) and `ExecEnded`; meanwhile
    /// `Input`, `InputEnd` and `Resize`. `caller` is who asks (for the record).
    Exec {
        scope: Scope,
        id: JobId,
        caller: String,
        spec: ExecSpec,
    },
    /// Answered with `Status` once the job has ended.
    Wait { scope: Scope, id: JobId },
    /// Bytes for the stdin (or terminal) of the attached job or exec, at most
    /// [`MAX_CHUNK_LEN`].
    Input(Bytes),
    /// The end of the attached process's stdin.
    InputEnd,
    /// The attached terminal's new size.
    Resize(TtySize),
    /// The id of the job `reference` names in `scope`: a name, or a unique prefix of at
    /// least 6 hexadecimal digits. Answered with `Resolved`.
    Resolve { scope: Scope, reference: String },
    /// Delete an ended job's record and output; a running one only with `force`, which
    /// stops it first. Answered with its last status. `caller` is who asks (for the
    /// audit trail's record of that stop), as in `Stop`.
    Remove {
        scope: Scope,
        id: JobId,
        force: bool,
        caller: String,
    },
    /// Records of the API server's own decisions, at most
    /// [`crate::observe::MAX_API_RECORDS`], for the audit trail (marked as reported by
    /// the API server). Answered with `Reported`.
    Report(Vec<ApiRecord>),
    /// The audit trail (administrators only; the API server checks the role): `AuditLine`s
    /// oldest first, then `StreamEnd`; with `follow`, new records as they become durable
    /// until the peer leaves.
    Audit(AuditQuery),
    /// Lifecycle events of the jobs in `scope`: the recent ones kept in memory, then,
    /// with `follow`, each new one as its record becomes durable. `Event`s, `Lost` when
    /// some were skipped, `StreamEnd` without `follow`.
    Events { scope: Scope, follow: bool },
    /// A running job's live usage, sampled over `interval_ms`: one `Usage` (or, with
    /// `follow`, one per interval), then `End` with the job's status once it has ended.
    Usage {
        scope: Scope,
        id: JobId,
        interval_ms: u32,
        follow: bool,
    },
    /// The executor's figures, answered with `Metrics`.
    Metrics,
}

impl Request {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Status { .. } => "status",
            Request::List { .. } => "list",
            Request::Output { .. } => "output",
            Request::Ping => "ping",
            Request::Quota { .. } => "quota",
            Request::Run { .. } => "run",
            Request::Exec { .. } => "exec",
            Request::Wait { .. } => "wait",
            Request::Input(_) => "input",
            Request::InputEnd => "input end",
            Request::Resize(_) => "resize",
            Request::Resolve { .. } => "resolve",
            Request::Remove { .. } => "remove",
            Request::Report(_) => "report",
            Request::Audit(_) => "audit",
            Request::Events { .. } => "events",
            Request::Usage { .. } => "usage",
            Request::Metrics => "metrics",
        }
    }
}

/// A response from the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Handshake accepted; the executor's protocol version.
    Hello { version: u32 },
    /// The job started; its command is running.
    Started { id: JobId },
    /// Answer to `Status` and `Stop`.
    Status(Box<JobStatus>),
    /// Answer to `List`: one page, and the id to pass as `after` for the next page.
    Jobs {
        jobs: Vec<JobStatus>,
        next_after: Option<JobId>,
    },
    /// Output bytes of one stream, at most [`MAX_CHUNK_LEN`], continuing where the
    /// previous chunk ended.
    Chunk(Stream, Bytes),
    /// End of an output stream: the job's status at that moment (final when it has
    /// ended).
    End(Box<JobStatus>),
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Quota`, sorted by owner, at most [`MAX_QUOTA_REPORTS`].
    Quotas(Vec<QuotaReport>),
    /// The exec's process is running.
    ExecStarted,
    /// The exec's process has ended; the last frame of an exec.
    ExecEnded(ExecEnd),
    /// Answer to `Resolve`.
    Resolved { id: JobId },
    /// The request failed.
    Error(WireError),
    /// Answer to `Report`: how many records were queued for the trail (the rest were
    /// dropped, and counted, because the executor's queue for them was full).
    Reported { accepted: u32 },
    /// One record of the audit trail.
    AuditLine(AuditLine),
    /// One job lifecycle event.
    Event(JobEvent),
    /// This many events were skipped: the reader fell behind the events kept in memory.
    Lost(u64),
    /// The end of an `Audit` or `Events` answer without `follow`.
    StreamEnd,
    /// A running job's usage.
    Usage(JobUsage),
    /// Answer to `Metrics`.
    Metrics(Box<ExecutorMetrics>),
}
