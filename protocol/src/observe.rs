//! Accountability on the wire: the API server's records for the executor's audit trail,
//! reading the trail, job lifecycle events, a running job's live usage, and the
//! executor's figures for metrics.
//!
//! Every type here is bounded: strings by [`MAX_API_FIELD_LEN`] (checked by
//! [`check_api_record`] on the executor's side), batches by [`MAX_API_RECORDS`], and an
//! audit line by [`MAX_AUDIT_LINE`], so that every frame stays under the codec's
//! maximum.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::job::{JobId, JobStatus};

/// Most records in one [`crate::Request::Report`].
pub const MAX_API_RECORDS: usize = 256;

/// Longest string field of an [`ApiRecord`] (identity, serial, peer, method, reason...).
pub const MAX_API_FIELD_LEN: usize = 256;

/// Longest audit line sent in one [`AuditLine`]; a longer record (a job with a huge
/// argv) is cut there and marked truncated. The trail itself keeps it whole.
pub const MAX_AUDIT_LINE: usize = 960 * 1024;

/// Longest sampling interval of a [`crate::Request::Usage`].
pub const MAX_USAGE_INTERVAL_MS: u32 = 60_000;

/// Shortest sampling interval of a [`crate::Request::Usage`].
pub const MIN_USAGE_INTERVAL_MS: u32 = 100;

/// What the API server reports about one of its decisions. The executor appends it to
/// its audit trail marked as reported by the API server: a claim, not the executor's
/// own observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRecord {
    /// When it happened, milliseconds since the Unix epoch, by the API server's clock.
    pub time_ms: u64,
    pub event: ApiEvent,
}

/// The kinds of API server records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiEvent {
    /// One gRPC call, once it has ended.
    Call(ApiCall),
    /// TLS handshakes that failed from one peer for one reason: the first at once,
    /// later ones of the same peer and reason counted and reported together.
    TlsFailure {
        peer: String,
        reason: String,
        count: u64,
    },
    /// Records the API server dropped because its queue towards the executor was full.
    Dropped { count: u64 },
}

/// One call as the API server saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCall {
    /// The caller's identity (certificate common name).
    pub identity: String,
    /// The client certificate's serial number, hexadecimal.
    pub cert_serial: String,
    /// SHA-256 of the client certificate (DER), hexadecimal.
    pub cert_sha256: String,
    /// The peer's address and port.
    pub peer: String,
    /// The gRPC method, e.g. `StartJob`.
    pub method: String,
    /// The job the call named or created, if any.
    pub job: Option<JobId>,
    /// The gRPC status code's name, e.g. `OK`, `NOT_FOUND`.
    pub code: String,
    /// From the request's arrival to the end of its response, in microseconds.
    pub duration_us: u64,
}

/// Checks an API record's strings against [`MAX_API_FIELD_LEN`] and for control
/// characters.
pub fn check_api_record(r: &ApiRecord) -> Result<(), WireError> {
    let field = |name: &str, v: &str| -> Result<(), WireError> {
        if v.len() > MAX_API_FIELD_LEN {
            return Err(WireError::invalid(format!(
                "api record: {name} is longer than {MAX_API_FIELD_LEN} bytes"
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(WireError::invalid(format!(
                "api record: {name} holds a control character"
            )));
        }
        Ok(())
    };
    match &r.event {
        ApiEvent::Call(c) => {
            field("identity", &c.identity)?;
            field("cert_serial", &c.cert_serial)?;
            field("cert_sha256", &c.cert_sha256)?;
            field("peer", &c.peer)?;
            field("method", &c.method)?;
            field("code", &c.code)
        }
        ApiEvent::TlsFailure { peer, reason, .. } => {
            field("peer", peer)?;
            field("reason", reason)
        }
        ApiEvent::Dropped { .. } => Ok(()),
    }
}

/// Which part of the audit trail to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only records at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only records about this owner's jobs, or made by or for this identity.
    pub owner: Option<String>,
    /// Keep sending records as they are appended.
    pub follow: bool,
}

/// One record of the audit trail, exactly as it is in the trail (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    pub seq: u64,
    pub line: String,
    /// The line was longer than [`MAX_AUDIT_LINE`] and is cut.
    pub truncated: bool,
}

/// A job's lifecycle event, for its owner (and administrators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The audit trail's sequence number of the record behind the event.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub id: JobId,
    pub owner: String,
    pub kind: JobEventKind,
}

/// What happened to the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEventKind {
    /// Its command is about to run (the record is durable).
    Started { argv: Vec<String> },
    /// Another process runs in it.
    Exec { caller: String, argv: Vec<String> },
    /// A stop was asked for, by `by`.
    StopRequested { by: String },
    /// It ended: its final status.
    Ended(Box<JobStatus>),
}

/// A running job's use of its resources, sampled now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// Memory in use (including its tmpfs pages), in bytes.
    pub memory_bytes: Option<u64>,
    /// Processes and threads alive.
    pub pids: Option<u64>,
    /// CPU time used so far by all its processes, in microseconds.
    pub cpu_usec: Option<u64>,
    /// CPU used over the last `window_ms`, in thousandths of a core.
    pub cpu_millis: Option<u64>,
    /// The window `cpu_millis` was measured over.
    pub window_ms: u64,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Final states counted in [`ExecutorMetrics::jobs_ended`], in this order.
pub const ENDED_STATES: [&str; 6] = [
    "exited",
    "signaled",
    "stopped",
    "failed_to_start",
    "lost",
    "timed_out",
];

/// Reasons counted in [`ExecutorMetrics::starts_refused`], in this order.
pub const REFUSAL_REASONS: [&str; 8] = [
    "invalid",
    "name_taken",
    "ceiling",
    "quota",
    "capacity",
    "audit",
    "shutting_down",
    "internal",
];

/// The executor's figures, for the API server's metrics page. Counters count since the
/// executor started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorMetrics {
    pub running_jobs: u64,
    /// Jobs in the table, running or kept.
    pub known_jobs: u64,
    /// `cgroup v1` or `cgroup v2`.
    pub cgroup_backend: String,
    /// Output bytes kept on disk, of every job in the table.
    pub output_bytes_on_disk: u64,
    /// Output bytes written by jobs since the executor started.
    pub output_bytes_total: u64,
    pub jobs_started: u64,
    /// Per [`ENDED_STATES`] entry.
    pub jobs_ended: Vec<u64>,
    /// Per [`REFUSAL_REASONS`] entry.
    pub starts_refused: Vec<u64>,
    /// The sequence number of the trail's last durable record.
    pub audit_seq: u64,
    /// Appends that failed (each refused what waited for it).
    pub audit_failures: u64,
    /// API server records the executor dropped (its queue for them was full).
    pub audit_api_dropped: u64,
    /// Commits (fsyncs) of the trail, and the records they wrote.
    pub audit_commits: u64,
    pub audit_records: u64,
}
