//! The wire protocol between `jobworker-api` (unprivileged, network-facing) and
//! `jobworker-executor` (root, no network).
//!
//! Everything that crosses the executor's Unix socket is defined here, and nothing else:
//!
//! - [`job`]: job identifiers, specifications, resource limits and status records;
//! - [`message`]: the request and response enums, one variant per request kind;
//! - [`observe`]: the API server's audit records, reading the trail, job events, live
//!   usage and the executor's figures for metrics;
//! - [`error`]: serializable error kinds with messages;
//! - [`validate`]: the bounds every request must respect, shared by both sides so the
//!   API server can reject bad input early and the executor can re-check it without
//!   trusting the server;
//! - [`codec`]: framing (length-delimited frames with an explicit maximum) and bincode
//!   encoding with a byte limit, plus the version handshake.
//!
//! The crate does no I/O beyond the codec; the workspace lints forbid unchecked code in it.

pub mod codec;
pub mod error;
pub mod job;
pub mod message;
pub mod observe;
pub mod validate;

pub use codec::{
    ClientTransport, MAX_FRAME_LEN, PROTOCOL_VERSION, ServerTransport, chunk_frame_header,
    client_transport, decode_response, server_transport,
};
pub use error::{ErrorKind, WireError};
pub use job::{
    EnvVar, ExecEnd, ExecSpec, IoLimits, JobId, JobSpec, JobState, JobStatus, Label, Limits,
    ListFilter, QuotaAmounts, QuotaLimits, QuotaReport, Scope, StartFailure, Stream, Streams,
    TtySize,
};
pub use message::{
    LIST_PAGE_BYTES, MAX_CHUNK_LEN, MAX_LIST_PAGE, MAX_QUOTA_REPORTS, OutputFrom, Request, Response,
};
pub use observe::{
    ApiCall, ApiEvent, ApiRecord, AuditLine, AuditQuery, ExecutorMetrics, JobEvent, JobEventKind,
    JobUsage,
};
